"""Runs a tool session (generate-data, compare) for a tab: a Runner that knows the tool's name and whether its job
holds the device."""
from __future__ import annotations

from typing import Any, Callable

from app.runner import Runner
from trainer import events as ev


class ToolRunner(Runner):
    """One tool's current session, started, stopped and drained like a training's (see Runner); the tab
    subscribes its own view.

    `name` says what runs, as "… is running" words it ("Data generation"); `uses_device(spec)` tells whether
    the job loads a model (then it cannot run beside a training or another model job: both would compete for the
    GPU's memory).
    """

    def __init__(self, name: str, session_factory: Callable[[Any], Any],
                 on_finished: Callable[[ev.RunFinished], None], uses_device: Callable[[Any], bool]):
        super().__init__(session_factory, on_finished, what=f"{name.lower()} job")
        self.name, self._uses_device = name, uses_device
        self.spec = None

    @property
    def using_device(self) -> bool:
        return self.session is not None and self._uses_device(self.spec)

    def start(self, spec) -> None:
        """Start a session on a copy of `spec`, so later edits apply to the next run."""
        self.spec = spec
        super().start(spec)
