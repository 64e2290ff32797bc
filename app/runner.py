"""Runs a TrainingSession for the window: starts it, drains its events on the Tk thread, sends commands."""
from __future__ import annotations

import copy
import queue
import time
from typing import Callable

from app.widgets import flush_graveyard
from trainer import events as ev
from trainer.errors import plain_text


class Runner:
    """Owns the current session. Only the Tk thread calls it; `drain()` runs every DRAIN_MS via after()."""

    DRAIN_MS = 50
    BUDGET_S = 0.010  # work per drain, so the Tk loop never stalls behind a burst of events
    MAX_EVENTS = 400
    what = "training"  # in the message when a worker ends without its RunFinished

    def __init__(self, window, session_factory: Callable):
        self.window, self.session_factory = window, session_factory
        self.session = None
        self.stopping = False
        self.last_finished: ev.RunFinished | None = None
        self.options: dict = {}  # how the current (or last) run was started: resume, fresh, allow_changed_data
        self._last_progress: ev.Progress | None = None
        self._view_stale = False  # the run view still shows the previous run until this one draws something

    @property
    def running(self) -> bool:
        return self.session is not None

    def start(self, preset, **options) -> None:
        """Start a run on a deep copy of the preset (the worker never sees later edits). `options` go to the
        session factory as they are (a training's resume, fresh, allow_changed_data)."""
        if self.session is not None:
            raise RuntimeError("a run is already going")
        flush_graveyard()  # free dropped Tk objects here, so the worker's GC never finalizes one
        self.stopping = False
        self.last_finished = None
        self.options = dict(options)
        self._view_stale = True
        self.session = self.session_factory(copy.deepcopy(preset), **options)
        self.session.start()

    def stop(self) -> None:
        if self.session is not None and not self.stopping:
            self.stopping = True
            self.session.stop()

    def command(self, name: str) -> None:
        if self.session is not None and not self.stopping:
            self.session.send(name)

    def drain(self) -> bool:
        """Handle queued events within the time budget; True when more are waiting."""
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
        self.drained(session)
        if self.session is session and not session.running and session.events.empty():
            # the worker ended without its RunFinished (it always sends one; this guards the window anyway)
            self.handle(ev.RunFinished("failed", f"the {self.what} ended without reporting a result"))
        return self.session is session and not session.events.empty()

    def drained(self, session) -> None:
        """After a drain: the bottom bar shows the newest step only (the chart got every one)."""
        if self._last_progress is not None and self.session is session:
            self.window.bottom.show_progress(self._last_progress)
        self._last_progress = None

    def handle(self, event) -> None:
        w = self.window
        log = w.run_tab.log
        if self._view_stale and isinstance(event, (ev.RunStarted, ev.Progress, ev.SampleReady)):
            # the previous run's chart and samples stay until this run really trains (a refused run keeps them)
            self._view_stale = False
            w.run_tab.chart.clear()
            w.run_tab.gallery.clear()
        if isinstance(event, ev.Progress):
            w.run_tab.chart.add(event.step, event.loss, event.smooth_loss, event.lr, event.total_steps)
            self._last_progress = event
        elif isinstance(event, ev.RunStarted):
            w.bottom.show_totals(event.total_steps, event.total_epochs)
            w.run_tab.chart.total_steps = event.total_steps
            log.append("info", f"Run started on {event.device}: {event.total_steps} steps, "
                               f"{event.total_epochs} epochs; workspace {event.workspace}")
        elif isinstance(event, ev.Status):
            w.bottom.show_status(event.text)
        elif isinstance(event, ev.SampleReady):
            w.run_tab.gallery.add(event)
        elif isinstance(event, ev.CheckpointWritten):
            what = {"backup": "Backup", "save": "Save", "final": "Final model"}.get(event.kind, event.kind)
            log.append("info", f"{what} written at step {event.step}: {event.path}")
            w.bottom.show_status(f"{what} written: {event.path}")
        elif isinstance(event, ev.Log):
            log.append(event.level, plain_text(event.text))
        elif isinstance(event, ev.RunFinished):
            self.finish(event)

    def finish(self, event: ev.RunFinished) -> None:
        """Show how the run ended. A run refused before training (bad input, or a refusal the window resolves
        by asking: see Window.run_finished) says "not started"; no message shows terminal escape codes."""
        w = self.window
        self.session = None
        self.stopping = False
        self.last_finished = event
        message = plain_text(event.message or "")
        if event.outcome == "completed":
            text = f"Training completed at step {event.step}."
            text += f" Model: {event.output_path}" if event.output_path else ""
            level = "success"
        elif event.outcome == "stopped":
            text = f"Training stopped at step {event.step}."
            text += f" Model: {event.output_path}" if event.output_path else ""
            level = "info"
        elif event.refusal or (event.bad_input and not event.step):
            text = f"Training not started: {message or 'no reason given'}"
            level = "warning" if event.refusal else "error"
        else:
            text = f"Training failed: {message or 'no reason given'}"
            level = "error"
        w.run_tab.log.append(level if level in ("error", "warning") else "info", text)
        w.bottom.show_message(text, level)
        w.bottom.show_status({"completed": "Completed.", "stopped": "Stopped."}.get(
            event.outcome, "Not started." if text.startswith("Training not started") else "Failed."))
        w.bottom.set_running(False)
        w.run_finished(event)  # buried Tk objects are freed at the next start (gc.collect costs ~0.2 s with torch)
