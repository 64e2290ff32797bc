"""The bottom bar: Start/Stop, the run commands, epoch and step progress, speed, ETA, VRAM, status, messages."""
from __future__ import annotations

from typing import Callable

import customtkinter as ctk

from app.run_widgets import CHECKPOINTS, run_outcome
from app.widgets import ERROR, MUTED, SUCCESS, WARNING, Tooltip
from trainer import events as ev

START_COLOUR, STOP_COLOUR, DISABLED = ("#2f8f4e", "#276f3e"), ("#b83a36", "#8f2c29"), "#4a4d50"
LEVEL_COLOURS = {"error": ERROR, "warning": WARNING, "success": SUCCESS, "info": "#d0d0d0"}


def format_duration(seconds: float) -> str:
    if seconds is None or seconds != seconds or seconds < 0:
        return "–"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def format_speed(it_per_s: float) -> str:
    if not it_per_s or it_per_s <= 0:
        return "– it/s"
    return f"{it_per_s:.2f} it/s" if it_per_s >= 1 else f"{1 / it_per_s:.2f} s/it"


class BottomBar(ctk.CTkFrame):
    """Start/Stop and the run commands; shows the training's events (`handle`, `drained`) and the window's
    messages."""

    def __init__(self, master, on_start_stop: Callable[[], None], on_command: Callable[[str], None]):
        super().__init__(master, corner_radius=0)
        self.grid_columnconfigure(1, weight=1)
        self.epoch_label = ctk.CTkLabel(self, text="epoch –", width=120, anchor="w")
        self.epoch_label.grid(row=0, column=0, padx=(12, 6), pady=(8, 0), sticky="w")
        self.epoch_bar = ctk.CTkProgressBar(self, height=10)
        self.epoch_bar.grid(row=0, column=1, sticky="ew", pady=(8, 0))
        self.step_label = ctk.CTkLabel(self, text="step –", width=120, anchor="w")
        self.step_label.grid(row=1, column=0, padx=(12, 6), sticky="w")
        self.step_bar = ctk.CTkProgressBar(self, height=10)
        self.step_bar.grid(row=1, column=1, sticky="ew")
        self.speed_label = ctk.CTkLabel(self, text="– it/s", width=90)
        self.speed_label.grid(row=0, column=2, padx=(12, 4), pady=(8, 0))
        self.eta_label = ctk.CTkLabel(self, text="ETA –", width=90)
        self.eta_label.grid(row=0, column=3, padx=4, pady=(8, 0))
        self.vram_label = ctk.CTkLabel(self, text="", width=100)
        self.vram_label.grid(row=0, column=4, padx=4, pady=(8, 0))
        self.status_label = ctk.CTkLabel(self, text="Ready.", text_color=MUTED, anchor="w")
        self.status_label.grid(row=1, column=2, columnspan=3, padx=(12, 4), sticky="w")
        self.command_buttons = {}
        for col, (name, text, tip) in enumerate((
                (ev.SAMPLE_NOW, "Sample now", "Render the sample prompts at the next step."),
                (ev.BACKUP_NOW, "Backup now", "Write a full backup (model, optimizer, progress) to resume from."),
                (ev.SAVE_NOW, "Save now", "Save the model as it is now, without stopping."))):
            button = ctk.CTkButton(self, text=text, width=100, command=lambda n=name: on_command(n))
            button.grid(row=0, column=5 + col, rowspan=2, padx=4, pady=(8, 0))
            Tooltip(button, tip)
            self.command_buttons[name] = button
        self.start_button = ctk.CTkButton(self, text="Start", width=130, height=40,
                                          font=ctk.CTkFont(size=15, weight="bold"), command=on_start_stop,
                                          fg_color=START_COLOUR[0], hover_color=START_COLOUR[1])
        self.start_button.grid(row=0, column=8, rowspan=2, padx=(10, 12), pady=(8, 0))
        self.problem_reasons: list[str] = []
        self.start_tip = Tooltip(self.start_button, self._start_tip)
        self.problem = ctk.CTkLabel(self, text="", text_color=WARNING, anchor="w", justify="left")
        self.message = ctk.CTkLabel(self, text="", anchor="w", justify="left")
        Tooltip(self.problem, lambda: "\n".join(self.problem_reasons))
        self.running, self.can_start = False, True
        self._progress: ev.Progress | None = None  # the newest Progress of the current drain
        self.reset_progress()
        ctk.CTkFrame(self, height=6, fg_color="transparent").grid(row=4, column=0)
        self.set_running(False)

    def _start_tip(self) -> str:
        if self.running:
            return "Stop training cleanly at the next step (the model so far is kept as configured)."
        if self.problem_reasons:
            return "Fix these first:\n" + "\n".join(f"• {r}" for r in self.problem_reasons)
        return "Train with the preset as shown (a copy: edits made now apply to the next run)."

    def set_running(self, running: bool, stopping: bool = False) -> None:
        self.running = running
        for button in self.command_buttons.values():
            button.configure(state="normal" if running and not stopping else "disabled")
        if running:
            self.start_button.configure(text="Stopping…" if stopping else "Stop",
                                        state="disabled" if stopping else "normal",
                                        fg_color=STOP_COLOUR[0], hover_color=STOP_COLOUR[1])
        else:
            self.start_button.configure(text="Start", state="normal" if self.can_start else "disabled",
                                        fg_color=START_COLOUR[0] if self.can_start else DISABLED,
                                        hover_color=START_COLOUR[1])

    def set_problems(self, reasons: list[str]) -> None:
        """Why Start is disabled (empty: it is enabled). The first reason shows; the tooltip lists them all."""
        self.problem_reasons = reasons
        changed = self.can_start != (not reasons)
        self.can_start = not reasons
        if changed and not self.running:
            self.set_running(False)
        if reasons:
            more = f"   (+{len(reasons) - 1} more: hover for the list)" if len(reasons) > 1 else ""
            self.problem.configure(text=f"Can't start: {reasons[0]}{more}")
            self.problem.grid(row=2, column=0, columnspan=9, sticky="w", padx=12, pady=(4, 0))
        else:
            self.problem.configure(text="")
            self.problem.grid_remove()

    def show_message(self, text: str, level: str = "info") -> None:
        """The outcome of a run or of a preset load/save; empty text hides it."""
        self.message.configure(text=text, text_color=LEVEL_COLOURS.get(level, LEVEL_COLOURS["info"]),
                               wraplength=max(400, self.winfo_width() - 40))
        if text:
            self.message.grid(row=3, column=0, columnspan=9, sticky="w", padx=12, pady=(4, 0))
        else:
            self.message.grid_remove()

    def show_status(self, text: str) -> None:
        self.status_label.configure(text=text)

    def reset_progress(self) -> None:
        self.epoch_bar.set(0), self.step_bar.set(0)
        self.epoch_label.configure(text="epoch –"), self.step_label.configure(text="step –")
        self.speed_label.configure(text="– it/s"), self.eta_label.configure(text="ETA –")
        self.vram_label.configure(text="")

    def show_totals(self, total_steps: int, total_epochs: int) -> None:
        self.step_label.configure(text=f"step 0/{total_steps}")
        self.epoch_label.configure(text=f"epoch 1/{total_epochs}")

    def show_progress(self, p) -> None:
        """Apply a Progress event (the newest of a drain; older ones only feed the chart)."""
        self.step_bar.set(p.step / p.total_steps if p.total_steps else 0)
        done_epochs = p.epoch + (p.epoch_step / p.epoch_steps if p.epoch_steps else 0)
        self.epoch_bar.set(min(1.0, done_epochs / p.total_epochs) if p.total_epochs else 0)
        self.step_label.configure(text=f"step {p.step}/{p.total_steps}")
        self.epoch_label.configure(text=f"epoch {min(p.epoch + 1, p.total_epochs)}/{p.total_epochs}")
        self.speed_label.configure(text=format_speed(p.it_per_s))
        self.eta_label.configure(text=f"ETA {format_duration(p.eta_s)}")
        self.vram_label.configure(text=f"VRAM {p.vram_gib:.1f} GiB" if p.vram_gib is not None else "")

    def handle(self, event) -> None:
        """A training event: the totals at its start, its status, each checkpoint written, how it ended. Of the
        Progress events only the newest of a drain shows (at `drained`; the chart gets every one)."""
        if isinstance(event, ev.Progress):
            self._progress = event
        elif isinstance(event, ev.RunStarted):
            self.show_totals(event.total_steps, event.total_epochs)
        elif isinstance(event, ev.Status):
            self.show_status(event.text)
        elif isinstance(event, ev.CheckpointWritten):
            self.show_status(f"{CHECKPOINTS.get(event.kind, event.kind)} written: {event.path}")
        elif isinstance(event, ev.RunFinished):
            self._progress = None
            text, level = run_outcome(event)
            self.show_message(text, level)
            self.show_status({"completed": "Completed.", "stopped": "Stopped."}.get(
                event.outcome, "Not started." if text.startswith("Training not started") else "Failed."))
            self.set_running(False)

    def drained(self) -> None:
        """The end of a drain: show the newest step it brought."""
        if self._progress is not None:
            self.show_progress(self._progress)
            self._progress = None
