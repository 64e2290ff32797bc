"""Runs a tool session (generate-data, compare) for a tab: start, stop, and its events drained on the Tk thread."""
from __future__ import annotations

from typing import Any, Callable

from app.runner import Runner
from trainer import events as ev


class ToolRunner(Runner):
    """One tool's current session, started, stopped and drained like a training's (see Runner); each event goes
    to `on_event` (the tab), the RunFinished last, after `running` turned False.

    `name` says what runs ("Generate data"); `uses_device(spec)` tells whether the job loads a model (then it
    cannot run beside a training or another model job: both would compete for the GPU's memory).
    """

    def __init__(self, name: str, session_factory: Callable[[Any], Any], on_event: Callable[[Any], None],
                 uses_device: Callable[[Any], bool] = lambda spec: True):
        super().__init__(None, session_factory)
        self.name, self.on_event, self.what = name, on_event, f"{name.lower()} job"
        self._uses_device = uses_device
        self.spec = None

    @property
    def using_device(self) -> bool:
        return self.session is not None and self._uses_device(self.spec)

    def start(self, spec) -> None:
        """Start a session on a copy of `spec`, so later edits apply to the next run."""
        self.spec = spec
        super().start(spec)

    def handle(self, event) -> None:
        if isinstance(event, ev.RunFinished):
            self.session, self.stopping = None, False
        self.on_event(event)

    def drained(self, session) -> None:
        pass
