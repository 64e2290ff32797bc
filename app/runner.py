"""Runs a session for the window: starts it, drains its events on the Tk thread to the views that show them,
sends commands. The views render; the runner only pumps."""
from __future__ import annotations

import copy
import queue
import time
from typing import Any, Callable

from app.widgets import flush_graveyard
from trainer import events as ev


class Runner:
    """Owns the current session (a training, or a tool's job: see ToolRunner). Only the Tk thread calls it;
    `drain()` runs every DRAIN_MS via after().

    Each event goes to every subscribed view in the order they subscribed (`subscribe`), then a RunFinished to
    `on_finished` (the window: Start buttons re-check, a pending close goes ahead). The RunFinished ends the run
    before any view sees it: `running` is False and `last_finished` is that event.
    """

    DRAIN_MS = 50
    BUDGET_S = 0.010  # work per drain, so the Tk loop never stalls behind a burst of events
    MAX_EVENTS = 400

    def __init__(self, session_factory: Callable, on_finished: Callable[[ev.RunFinished], None] = lambda e: None,
                 what: str = "training"):
        self.session_factory, self.on_finished = session_factory, on_finished
        self.what = what  # in the message when a worker ends without its RunFinished
        self.session = None
        self.stopping = False
        self.last_finished: ev.RunFinished | None = None
        self.options: dict = {}  # how the current (or last) run was started: resume, fresh, allow_changed_data
        self._views: list[tuple[Callable[[Any], None], Callable[[], None] | None]] = []

    @property
    def running(self) -> bool:
        return self.session is not None

    def subscribe(self, on_event: Callable[[Any], None], on_drained: Callable[[], None] | None = None) -> None:
        """Show every event from now on: `on_event(event)` for each, in order; `on_drained()` after each drain
        (a view that shows only the newest of a kind draws it there)."""
        self._views.append((on_event, on_drained))

    def start(self, spec, **options) -> None:
        """Start a run on a deep copy of the preset or tool spec (the worker never sees later edits). `options`
        go to the session factory as they are (a training's resume, fresh, allow_changed_data). Raises
        RuntimeError while a run is going, and whatever the session factory or the session's start raises (then
        no run is going)."""
        if self.session is not None:
            raise RuntimeError("a run is already going")
        flush_graveyard()  # free dropped Tk objects here, so the worker's GC never finalizes one
        self.stopping = False
        self.last_finished = None
        self.options = dict(options)
        session = self.session_factory(copy.deepcopy(spec), **options)
        session.start()
        self.session = session

    def stop(self) -> None:
        if self.session is not None and not self.stopping:
            self.stopping = True
            self.session.stop()

    def started(self, spec, show_message: Callable[[str, str], None], **options) -> bool:
        """start(spec, **options) and True; or False with "Could not start: ..." said through
        show_message(text, level) when the session cannot even start (a child process that does not come up):
        a window shows that, it does not raise it."""
        try:
            self.start(spec, **options)
        except Exception as e:  # noqa: BLE001 - a session that cannot even start is shown, not raised
            show_message(f"Could not start: {e}", "error")
            return False
        return True

    def command(self, name: str) -> None:
        if self.session is not None and not self.stopping:
            self.session.send(name)

    def drain(self) -> bool:
        """Hand queued events to the views within the time budget; True when more are waiting."""
        session = self.session
        if session is None:
            return False
        deadline = time.perf_counter() + self.BUDGET_S
        handled = 0
        while handled < self.MAX_EVENTS and time.perf_counter() < deadline and self.session is session:
            try:
                event = session.events.get_nowait()
            except queue.Empty:
                break
            handled += 1
            self.handle(event)
        for _, on_drained in self._views:
            if on_drained is not None:
                on_drained()
        if self.session is session and not session.running and session.events.empty():
            # the worker ended without its RunFinished (it always sends one; this guards the window anyway)
            self.handle(ev.RunFinished("failed", f"the {self.what} ended without reporting a result"))
        return self.session is session and not session.events.empty()

    def handle(self, event) -> None:
        """One event to every view; a RunFinished ends the run first and reaches `on_finished` last."""
        finished = isinstance(event, ev.RunFinished)
        if finished:
            self.session, self.stopping, self.last_finished = None, False, event
        for on_event, _ in self._views:
            on_event(event)
        if finished:
            self.on_finished(event)  # buried Tk objects are freed at the next start: a gc.collect is not free
