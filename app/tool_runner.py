"""Runs a tool session (generate-data, compare) for a tab: start, stop, and its events drained on the Tk thread."""
from __future__ import annotations

import queue
import time
from typing import Any, Callable

from app.runner import Runner
from app.widgets import flush_graveyard
from trainer import events as ev


class ToolRunner:
    """One tool's current session. The window's tick calls `drain()` on the Tk thread, which hands each event to
    `on_event` (the tab); the RunFinished comes last, after `running` turned False.

    `name` says what runs ("Generate data"); `uses_device(spec)` tells whether the job loads a model (then it
    cannot run beside a training or another model job: both would compete for the GPU's memory).
    """

    def __init__(self, name: str, session_factory: Callable[[Any], Any], on_event: Callable[[Any], None],
                 uses_device: Callable[[Any], bool] = lambda spec: True):
        self.name, self.session_factory, self.on_event = name, session_factory, on_event
        self._uses_device = uses_device
        self.session = None
        self.spec = None
        self.stopping = False

    @property
    def running(self) -> bool:
        return self.session is not None

    @property
    def using_device(self) -> bool:
        return self.session is not None and self._uses_device(self.spec)

    def start(self, spec) -> None:
        """Start a session on `spec` (the session deep-copies it, so later edits apply to the next run)."""
        if self.session is not None:
            raise RuntimeError(f"{self.name} is already running")
        flush_graveyard()  # free dropped Tk objects here, so the worker's GC never finalizes one
        self.stopping = False
        self.spec = spec
        session = self.session_factory(spec)
        session.start()
        self.session = session

    def stop(self) -> None:
        if self.session is not None and not self.stopping:
            self.stopping = True
            self.session.stop()

    def drain(self) -> bool:
        """Handle queued events within the window's time budget; True when more are waiting."""
        session = self.session
        if session is None:
            return False
        deadline = time.perf_counter() + Runner.BUDGET_S
        handled = 0
        while handled < Runner.MAX_EVENTS and time.perf_counter() < deadline and self.session is session:
            try:
                event = session.events.get_nowait()
            except queue.Empty:
                break
            handled += 1
            if isinstance(event, ev.RunFinished):
                self.session, self.stopping = None, False
            self.on_event(event)
        if self.session is session and not session.running and session.events.empty():
            # the worker ended without its RunFinished (it always sends one; this guards the window anyway)
            self.session, self.stopping = None, False
            self.on_event(ev.RunFinished("failed", f"the {self.name.lower()} thread ended without a result"))
        return self.session is session and not session.events.empty()
