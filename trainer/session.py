"""TrainingSession: runs one training in a background thread; events out, commands in. No UI here.

Importing this module is cheap: torch and the engine are imported inside the worker thread, so the window can
paint before any of them load.
"""
from __future__ import annotations

import copy
import queue
import threading
import traceback
from typing import Callable

from trainer import events as ev
from trainer.config import Preset


class Session:
    """One run of a job in a background thread: training, or a tool (generate-data, compare).

    `work(emit, commands)` does the job and returns its RunFinished; it runs in the worker thread and imports
    what it needs there. The worker puts events on `self.events` (exactly one RunFinished, last, from a
    `finally`); commands sent with `send()` are checked at the job's natural boundaries (optimizer steps,
    images).
    """

    def __init__(self, work: Callable, name: str = "seachange-job"):
        self._work = work
        self._name = name
        self.events: queue.Queue = queue.Queue()
        self.commands: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("a session runs once; make a new session for the next run")
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
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
            finished = self._work(self.events.put, self.commands)
        except Exception as e:  # noqa: BLE001 - any failure becomes a "failed" event with its message
            from trainer.errors import describe_failure, is_input_error
            self.events.put(ev.Log("error", traceback.format_exc()))
            finished = ev.RunFinished("failed", describe_failure(e), bad_input=is_input_error(e))
        finally:
            self.events.put(finished)


class TrainingSession(Session):
    """One training. Start deep-copies the preset; the worker treats its copy as read-only."""

    def __init__(self, preset: Preset, resume: str | None = None):
        self.preset = copy.deepcopy(preset)
        self.resume = resume
        super().__init__(self._train, "seachange-training")

    def _train(self, emit, commands):
        from trainer.loop import train  # lazy: torch loads in the worker, never before the window paints
        return train(self.preset, emit, commands, resume=self.resume)


def generate_data_session(spec) -> Session:
    """A session that runs generate-data on a copy of `spec` (a trainer.specs.GenerateDataSpec)."""
    spec = copy.deepcopy(spec)

    def work(emit, commands):
        from trainer.generate_data import generate_data
        return generate_data(spec, emit, commands)
    return Session(work, "seachange-generate-data")


def compare_session(spec) -> Session:
    """A session that builds a comparison grid from a copy of `spec` (a trainer.specs.CompareSpec)."""
    spec = copy.deepcopy(spec)

    def work(emit, commands):
        from trainer.compare import compare
        return compare(spec, emit, commands)
    return Session(work, "seachange-compare")


def concept_statistics(preset: Preset) -> list[dict]:
    """Per concept: images, usable and skipped files with reasons, missing captions, caption lengths and the
    bucket histogram (plain data; may take a while on big folders, so call it off the UI thread)."""
    from trainer.stats import concept_stats  # no torch: safe before the first run
    return concept_stats(copy.deepcopy(preset))
