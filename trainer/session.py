"""TrainingSession: runs one training in a background thread; events out, commands in. No UI here.

Importing this module is cheap: torch and the engine are imported inside the worker thread, so the window can
paint before any of them load.
"""
from __future__ import annotations

import copy
import queue
import threading
import traceback

from trainer import events as ev
from trainer.config import Preset


class TrainingSession:
    """One run. Start deep-copies the preset; the worker treats its copy as read-only.

    The worker puts events on `self.events` (exactly one RunFinished, last, from a `finally`); commands sent
    with `send()` are checked at optimizer-step boundaries.
    """

    def __init__(self, preset: Preset, resume: str | None = None):
        self.preset = copy.deepcopy(preset)
        self.resume = resume
        self.events: queue.Queue = queue.Queue()
        self.commands: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("a session runs once; make a new TrainingSession for the next run")
        self._thread = threading.Thread(target=self._run, name="seachange-training", daemon=True)
        self._thread.start()

    def send(self, name: str, **extra) -> None:
        if name not in ev.COMMANDS:
            raise ValueError(f"unknown command {name!r}; expected one of {', '.join(ev.COMMANDS)}")
        self.commands.put(ev.Command(name, extra))

    def stop(self) -> None:
        self.send(ev.STOP)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the worker; True when it has ended."""
        if self._thread is not None:
            self._thread.join(timeout)
        return not self.running

    def _run(self) -> None:
        finished = ev.RunFinished("failed", "the run ended without a result")
        try:
            from trainer.loop import train  # lazy: torch loads in the worker, never before the window paints
            finished = train(self.preset, self.events.put, self.commands, resume=self.resume)
        except Exception as e:  # noqa: BLE001 - any failure becomes a "failed" event with its message
            from trainer.errors import describe_failure
            message = describe_failure(e)
            self.events.put(ev.Log("error", traceback.format_exc()))
            from trainer.errors import is_input_error
            finished = ev.RunFinished("failed", message, bad_input=is_input_error(e))
        finally:
            self.events.put(finished)


def concept_statistics(preset: Preset) -> list[dict]:
    """Per concept: images, usable and skipped files with reasons, missing captions, caption lengths and the
    bucket histogram (plain data; may take a while on big folders, so call it off the UI thread)."""
    from trainer.stats import concept_stats  # no torch: safe before the first run
    return concept_stats(copy.deepcopy(preset))
