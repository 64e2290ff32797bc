"""The run view: loss chart, sample gallery and the log of the current run, each showing the training's events."""
from __future__ import annotations

import customtkinter as ctk

from app.run_widgets import LogView, LossChart, SampleGallery
from app.tabs.common import Tab


class RunTab(Tab):
    title = "run"

    def steps(self):
        f = self.frame
        f.grid_columnconfigure(0, weight=3, uniform="run")
        f.grid_columnconfigure(1, weight=2, uniform="run")
        f.grid_rowconfigure(0, weight=3)
        f.grid_rowconfigure(1, weight=2)
        chart_box = ctk.CTkFrame(f)
        chart_box.grid(row=0, column=0, sticky="nsew", padx=(6, 4), pady=(6, 4))
        ctk.CTkLabel(chart_box, text="Loss", font=ctk.CTkFont(size=14, weight="bold")).pack(
            anchor="w", padx=10, pady=(8, 4))
        self.chart = LossChart(chart_box)
        self.chart.pack(fill="both", expand=True, padx=8, pady=(0, 8))
        self.gallery = SampleGallery(f)
        self.gallery.grid(row=0, column=1, sticky="nsew", padx=(4, 6), pady=(6, 4))
        log_box = ctk.CTkFrame(f)
        log_box.grid(row=1, column=0, columnspan=2, sticky="nsew", padx=6, pady=(4, 6))
        ctk.CTkLabel(log_box, text="Log", font=ctk.CTkFont(size=14, weight="bold")).pack(
            anchor="w", padx=10, pady=(8, 4))
        self.log = LogView(log_box)
        self.log.pack(fill="both", expand=True, padx=8, pady=(0, 8))
        for view in (self.chart, self.gallery, self.log):
            self.window.runner.subscribe(view.handle)
        yield

    def clear(self) -> None:
        self.chart.clear()
        self.gallery.clear()
        self.log.clear()
