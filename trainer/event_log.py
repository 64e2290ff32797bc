"""The run's record in its workspace: what a training reported (run started, progress, samples, checkpoints, log
lines, how it ended), one JSON line per event in WORKSPACE/events.jsonl, so that a window opened later shows the
last run as it was. Torch-free. No UI here."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Callable

from trainer import events as ev

EVENT_LOG = "events.jsonl"
RECORDED = {cls.__name__: cls for cls in (ev.RunStarted, ev.Progress, ev.ValidationLoss, ev.SampleReady,
                                           ev.CheckpointWritten, ev.Log, ev.RunFinished)}


class EventRecorder:
    """An emit that passes every event on and records the training's events (RECORDED) in the workspace its
    RunStarted names, appending (a resumed run continues its record). What comes before RunStarted (the input
    checks' log lines) is held and written then; a run that never starts (refused, or a process other than the
    main one under `accelerate launch`) writes nothing. A record that cannot be written (a full disk) is given
    up with one warning; the run goes on."""

    def __init__(self, emit: Callable):
        self.emit, self.file, self.held, self.failed = emit, None, [], False

    def __call__(self, event) -> None:
        self.emit(event)
        if self.failed or type(event).__name__ not in RECORDED:
            return
        if isinstance(event, ev.RunStarted):
            self._open(Path(event.workspace) / EVENT_LOG)
        if self.file is None:
            self.held.append(event)
            return
        self._write(event)
        if isinstance(event, ev.RunFinished):
            self.file.close()
            self.file = None

    def _open(self, path: Path) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.file = open(path, "a", encoding="utf-8")
        except OSError as error:
            self._give_up(error)
            return
        for event in self.held:
            self._write(event)
        self.held = []

    def _write(self, event) -> None:
        try:
            self.file.write(json.dumps({"event": type(event).__name__, **dataclasses.asdict(event)}) + "\n")
            self.file.flush()
        except (OSError, ValueError) as error:
            self._give_up(error)

    def _give_up(self, error: Exception) -> None:
        self.failed, self.held = True, []
        if self.file is not None:
            try:
                self.file.close()
            except OSError:
                pass
            self.file = None
        self.emit(ev.Log("warning", f"The run's record (events.jsonl) cannot be written ({error}); the training "
                                    "goes on, but a window opened later will not show this run"))


def read_event_log(workspace: str | Path) -> list:
    """The events recorded in WORKSPACE/events.jsonl, oldest first ([] without a record). Lines that cannot be
    read (a run killed mid-line, another program's line) are skipped. A resumed run's steps after its backup
    appear twice, as they were trained twice: a view keeps the later."""
    path = Path(workspace).expanduser() / EVENT_LOG
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []
    events = []
    for line in lines:
        try:
            data = json.loads(line)
            events.append(RECORDED[data.pop("event")](**data))
        except (ValueError, KeyError, TypeError, AttributeError):
            continue
    return events
