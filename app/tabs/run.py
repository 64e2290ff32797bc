"""The run view: loss chart, sample gallery and the log of the current run, each showing the training's events; on
opening, and when a preset with another workspace is loaded, the last run recorded in the workspace."""
from __future__ import annotations

import time
from pathlib import Path

import customtkinter as ctk

from app.run_widgets import LogView, LossChart
from app.sample_gallery import SampleGallery
from app.tabs.common import Tab
from trainer import events as ev
from trainer.event_log import read_event_log

REPLAY_BUDGET_S = 0.010  # work per Tk tick while replaying a record, as Runner.BUDGET_S for a live run


class RunTab(Tab):
    title = "run"
    shown_workspace: str | None = None  # whose record the views were last set to show
    _replay_id: str | None = None  # the pending show_record or replay slice

    def steps(self):
        f = self.frame
        f.grid_columnconfigure(0, weight=1, uniform="run")
        f.grid_columnconfigure(1, weight=1, uniform="run")
        f.grid_rowconfigure(0, weight=3)
        f.grid_rowconfigure(1, weight=2)
        chart_box = ctk.CTkFrame(f)
        chart_box.grid(row=0, column=0, sticky="nsew", padx=(6, 4), pady=(6, 4))
        ctk.CTkLabel(chart_box, text="Loss", font=ctk.CTkFont(size=14, weight="bold")).pack(
            anchor="w", padx=10, pady=(8, 4))
        self.chart = LossChart(chart_box)
        self.chart.pack(fill="both", expand=True, padx=8, pady=(0, 8))
        self.gallery = SampleGallery(f)
        self.gallery.grid(row=0, column=1, rowspan=2, sticky="nsew", padx=(4, 6), pady=6)
        log_box = ctk.CTkFrame(f)
        log_box.grid(row=1, column=0, sticky="nsew", padx=(6, 4), pady=(4, 6))
        ctk.CTkLabel(log_box, text="Log", font=ctk.CTkFont(size=14, weight="bold")).pack(
            anchor="w", padx=10, pady=(8, 4))
        self.log = LogView(log_box)
        self.log.pack(fill="both", expand=True, padx=8, pady=(0, 8))
        self.window.runner.subscribe(lambda _event: self._stop_replay())  # first: a live run ends a replay
        for view in (self.chart, self.gallery, self.log):
            self.window.runner.subscribe(view.handle)
        self._replay_id = self.window.after(50, self.show_record)  # after the first paint
        yield

    def clear(self) -> None:
        self._stop_replay()
        self.chart.clear()
        self.gallery.clear()
        self.log.clear()

    def reload(self) -> None:
        """A preset was loaded: one with another workspace shows that workspace's last run (unless a run is
        going)."""
        if self.window.preset.general.workspace_dir != self.shown_workspace:
            self._stop_replay()
            self._replay_id = self.window.after(1, self.show_record)

    def closing(self) -> None:
        self._stop_replay()

    # ---- the last run, from its record ----------------------------------------------------------------

    def show_record(self) -> bool:
        """Show the last run recorded in the preset's workspace (trainer.event_log): its loss curve, samples (those
        whose file is gone left out) and log, replayed through the views' own handlers a slice per Tk tick, so a
        long record never stalls the window. A run resumed from a backup shows its later steps, once. Does
        nothing while a run is going (False); a workspace without a record leaves the views empty."""
        self._stop_replay()
        if self.window.runner.running:
            return False
        workspace = self.window.preset.general.workspace_dir
        self.shown_workspace = workspace
        self.clear()
        events = read_event_log(workspace) if workspace else []
        if events:
            self.log.append("info", f"The last run recorded in {Path(workspace).expanduser()}:")
            self._replay(events, 0)
        return True

    def continue_record(self) -> None:
        """A run that resumes the workspace's last run is starting: show that run's loss curve and samples as
        recorded (trainer.event_log), so the resumed steps continue the picture instead of starting a new one (the
        chart and the gallery replace what the resumed run trains again). The log stays the new run's."""
        self._stop_replay()
        workspace = self.window.preset.general.workspace_dir
        self.shown_workspace = workspace
        self.chart.clear(), self.gallery.clear()
        for event in read_event_log(workspace) if workspace else []:
            if isinstance(event, (ev.Progress, ev.ValidationLoss)):
                self.chart.handle(event)
            elif isinstance(event, ev.SampleReady) and Path(event.path).exists():
                self.gallery.handle(event)
        self.chart.stale = self.gallery.stale = False  # the resumed run's first events add to this

    def _replay(self, events: list, start: int) -> None:
        if self.window.runner.running:  # started before its first event came
            return self._stop_replay()
        self._replay_id = None
        deadline = time.perf_counter() + REPLAY_BUDGET_S
        done = start
        while done < len(events) and (done == start or time.perf_counter() < deadline):
            self._replay_event(events[done])
            done += 1
        if done < len(events):
            self._replay_id = self.window.after(1, self._replay, events, done)
        else:
            self.chart.stale = self.gallery.stale = True  # the recorded run is over, though it may not say so

    def _replay_event(self, event) -> None:
        self.log.handle(event)
        if isinstance(event, ev.RunFinished):  # a later RunStarted in the record resumes the same run
            return
        self.chart.handle(event)
        if not isinstance(event, ev.SampleReady) or Path(event.path).exists():
            self.gallery.handle(event)

    def _stop_replay(self) -> None:
        """End a pending replay: what it showed stays until the next run draws."""
        if self._replay_id is not None:
            self.window.after_cancel(self._replay_id)
            self._replay_id = None
            self.chart.stale = self.gallery.stale = True
