"""The bottom bar: Start/Stop, the run commands, epoch and step progress, speed, time left, VRAM, status, messages."""
from __future__ import annotations

import datetime
import math
from typing import Callable

import customtkinter as ctk

from app.form import split_problem
from app.run_widgets import CHECKPOINTS, run_outcome
from app.widgets import ERROR, MUTED, SUCCESS, WARNING, Tooltip, fit_text, reconfigure
from trainer import events as ev

START_COLOUR, STOP_COLOUR, DISABLED = ("#2f8f4e", "#276f3e"), ("#b83a36", "#8f2c29"), "#4a4d50"
LEVEL_COLOURS = {"error": ERROR, "warning": WARNING, "success": SUCCESS, "info": "#d0d0d0"}
LINE_HEIGHT = 22  # the problem and message rows: one line each, always there (empty when there is nothing to say)
BAR_MIN = 100  # the epoch and step bars' least width (px)
INFO_WIDTH = 330  # speed, time left and VRAM over the status: the width they ask for (px); more when there is room
NO_SPEED, NO_ETA = "– it/s", "time left –"
UNCUT = 100_000  # the width of a line whose widget is not laid out yet: its text stays whole until it is


def format_duration(seconds: float | None) -> str:
    """seconds as "m:ss" or "h:mm:ss"; "–" for None, NaN, infinity or a negative number."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "–"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def format_eta(seconds: float | None, now: datetime.datetime | None = None) -> str:
    """The time left and the clock time the run ends: "12:34 left · done ≈ 14:05" (the weekday is added when it
    ends on another day); NO_ETA when `seconds` is unknown. `now` defaults to the local time."""
    left = format_duration(seconds)
    if left == "–" or seconds > 30 * 86400:
        return NO_ETA
    now = now or datetime.datetime.now()
    done = now + datetime.timedelta(seconds=seconds + 30)  # to the nearest minute
    day = "" if done.date() == now.date() else done.strftime("%a ")
    return f"{left} left · done ≈ {day}{done:%H:%M}"


def format_speed(it_per_s: float) -> str:
    if not it_per_s or it_per_s <= 0:
        return NO_SPEED
    return f"{it_per_s:.2f} it/s" if it_per_s >= 1 else f"{1 / it_per_s:.2f} s/it"


def set_enabled(button: ctk.CTkButton, enabled: bool, colour) -> None:
    """Enable a button in its `colour`, or disable it and fill it grey (not only its text), so that it looks off;
    a button that already looks so is left alone (not redrawn)."""
    reconfigure(button, state="normal" if enabled else "disabled", fg_color=colour if enabled else DISABLED)


class Line:
    """A label that shows one line and keeps its height (present, and empty when there is nothing to say): longer
    text is cut with "…" to the width `fit()` gives (whole in its tooltip unless `tip` is False); line breaks
    become spaces. `label` is the CTkLabel to place."""

    def __init__(self, master, tip: bool = True, **kw):
        self.font = ctk.CTkFont()
        self.label = ctk.CTkLabel(master, text="", height=LINE_HEIGHT, anchor="w", font=self.font, **kw)
        self.text, self.tail, self.width = "", "", UNCUT
        self._fitted: tuple | None = None  # (text, tail, width) the label shows now
        if tip:
            Tooltip(self.label, lambda: self.text + self.tail if self.label.cget("text") != self.text + self.tail
                    else "")

    def set(self, text: str, tail: str = "") -> None:
        """Show `text`, cut if need be, then `tail` whole."""
        self.text, self.tail = text, tail
        self.fit()

    def fit(self, width: int | None = None) -> None:
        """Cut the text to `width` pixels (default: the last width given); no work when nothing changed."""
        self.width = width or self.width
        if self._fitted == (self.text, self.tail, self.width):
            return
        self._fitted = (self.text, self.tail, self.width)
        cut = fit_text(self.font, self.text, self.width - self.font.measure(self.tail)) if self.text else ""
        reconfigure(self.label, text=cut + self.tail)


class MessageLine(Line):
    """How the last action went (a run, a load, a save), coloured by its level. It lasts until the next edit
    (`edited`); one about a problem (a "Not saved: ...") lasts until that problem's field has none
    (`problems_now`)."""

    def __init__(self, master):
        super().__init__(master)
        self.field = ""

    def show(self, text: str, level: str = "info", about: str = "") -> None:
        """Show `text` (empty: clear it); `about` is the problem it reports, as Form.problems gives it."""
        self.field = split_problem(about)[0] if text and about else ""
        reconfigure(self.label, text_color=LEVEL_COLOURS.get(level, LEVEL_COLOURS["info"]))
        self.set(text)

    def edited(self) -> None:
        """The user edited a value: a message that is not about a problem is past."""
        if not self.field:
            self.show("")

    def problems_now(self, problems: list[str]) -> None:
        """The problems there are now: a message about a problem whose field has none any more goes."""
        if self.field and all(split_problem(p)[0] != self.field for p in problems):
            self.show("")


def problem_text(reasons: list[str], head: str, hover: str) -> tuple[str, str]:
    """The first reason after `head`, and what to say about the others ("(+2 more: hover Start for the list)")."""
    if not reasons:
        return "", ""
    more = f"   (+{len(reasons) - 1} more: hover {hover} for the list)" if len(reasons) > 1 else ""
    return f"{head}: {reasons[0]}", more


class BottomBar(ctk.CTkFrame):
    """Start/Stop and the run commands; shows the training's events (`handle`, `drained`) and the window's
    messages. Its rows keep their height whatever they show, so the form above never moves."""

    def __init__(self, master, on_start_stop: Callable[[], None], on_command: Callable[[str], None]):
        super().__init__(master, corner_radius=0)
        self._build_progress()
        self._build_buttons(on_start_stop, on_command)
        self.problem_reasons: list[str] = []
        self.start_tip = Tooltip(self.start_button, self._start_tip)
        self.problem_line, self.message_line = Line(self, tip=False, text_color=WARNING), MessageLine(self)
        self.problem, self.message = self.problem_line.label, self.message_line.label
        for row, label in ((2, self.problem), (3, self.message)):
            label.grid(row=row, column=0, columnspan=7, sticky="ew", padx=12, pady=(2, 0))
        Tooltip(self.problem, lambda: "\n".join(self.problem_reasons))
        self.running = self.stopping = False
        self.can_start = True
        self._progress: ev.Progress | None = None  # the newest Progress of the current drain
        self.reset_progress()
        ctk.CTkFrame(self, height=6, fg_color="transparent").grid(row=4, column=0)
        self.set_running(False)
        self.bind("<Configure>", lambda _e: self._fit_lines(), add="+")

    def _build_progress(self) -> None:
        """Epoch and step bars; beside them speed, time left and VRAM over the status. On a narrow window the
        bars keep BAR_MIN pixels and that area gives way (its text is cut), never the buttons."""
        self.grid_columnconfigure(1, weight=2, minsize=BAR_MIN)
        self.grid_columnconfigure(2, weight=1)
        self.epoch_label = ctk.CTkLabel(self, text="epoch –", width=120, anchor="w")
        self.epoch_label.grid(row=0, column=0, padx=(12, 6), pady=(8, 0), sticky="w")
        self.epoch_bar = ctk.CTkProgressBar(self, height=10, width=BAR_MIN)
        self.epoch_bar.grid(row=0, column=1, sticky="ew", pady=(8, 0))
        self.step_label = ctk.CTkLabel(self, text="step –", width=120, anchor="w")
        self.step_label.grid(row=1, column=0, padx=(12, 6), sticky="w")
        self.step_bar = ctk.CTkProgressBar(self, height=10, width=BAR_MIN)
        self.step_bar.grid(row=1, column=1, sticky="ew")
        info = ctk.CTkFrame(self, fg_color="transparent", width=INFO_WIDTH, height=56)
        info.grid_propagate(False)  # its size comes from the bar, never from its text (a long status)
        info.grid_rowconfigure((0, 1), minsize=28)
        info.grid_columnconfigure(2, weight=1)  # room the status takes goes there: speed and time left stay put
        info.grid(row=0, column=2, rowspan=2, sticky="nsew", padx=(12, 4), pady=(8, 0))
        self.speed_label = ctk.CTkLabel(info, text=NO_SPEED, width=70, anchor="w")
        self.speed_label.grid(row=0, column=0, padx=(0, 8), sticky="w")
        self.eta_label = ctk.CTkLabel(info, text=NO_ETA, anchor="w")
        self.eta_label.grid(row=0, column=1, padx=(0, 8), sticky="w")
        Tooltip(self.eta_label, "Time left at the mean step time since the run started (samples and backups "
                                "included), and the clock time it should end.")
        self.vram_label = ctk.CTkLabel(info, text="", anchor="w")
        self.vram_label.grid(row=0, column=2, sticky="w")
        self.status = Line(info, text_color=MUTED)
        self.status_label = self.status.label
        self.status_label.grid(row=1, column=0, columnspan=3, sticky="ew")
        self.status.set("Ready.")
        info.bind("<Configure>", lambda e: self.status.fit(e.width - 4), add="+")

    def _build_buttons(self, on_start_stop: Callable[[], None], on_command: Callable[[str], None]) -> None:
        self.command_buttons = {}
        for col, (name, text, tip) in enumerate((
                (ev.SAMPLE_NOW, "Sample now", "Render the sample prompts at the next step."),
                (ev.BACKUP_NOW, "Backup now", "Write a full backup (model, optimizer, progress) to resume from."),
                (ev.SAVE_NOW, "Save now", "Save the model as it is now, without stopping."))):
            button = ctk.CTkButton(self, text=text, width=94, command=lambda n=name: on_command(n))
            button.grid(row=0, column=3 + col, rowspan=2, padx=4, pady=(8, 0))
            Tooltip(button, tip)
            self.command_buttons[name] = button
        self.command_colour = button.cget("fg_color")
        self.start_button = ctk.CTkButton(self, text="Start", width=120, height=40,
                                          font=ctk.CTkFont(size=15, weight="bold"), command=on_start_stop,
                                          fg_color=START_COLOUR[0], hover_color=START_COLOUR[1])
        self.start_button.grid(row=0, column=6, rowspan=2, padx=(10, 12), pady=(8, 0))

    def _start_tip(self) -> str:
        if self.running:
            return "Stop training cleanly at the next step (the model so far is kept as configured)."
        if self.problem_reasons:
            return "Fix these first:\n" + "\n".join(f"• {r}" for r in self.problem_reasons)
        return "Train with the preset as shown (a copy: edits made now apply to the next run)."

    def set_running(self, running: bool, stopping: bool = False) -> None:
        self.running, self.stopping = running, running and stopping
        for button in self.command_buttons.values():
            set_enabled(button, running and not stopping, self.command_colour)
        if stopping:
            self.clear_speed()
        if running:
            reconfigure(self.start_button, text="Stopping…" if stopping else "Stop",
                        state="disabled" if stopping else "normal", fg_color=STOP_COLOUR[0], hover_color=STOP_COLOUR[1])
        else:
            reconfigure(self.start_button, text="Start", state="normal" if self.can_start else "disabled",
                        fg_color=START_COLOUR[0] if self.can_start else DISABLED, hover_color=START_COLOUR[1])
        self._fit_lines()

    def set_problems(self, reasons: list[str]) -> None:
        """What the next Start would refuse (empty: nothing; Start is enabled unless a run is on). The first
        reason shows; the tooltip lists them all."""
        self.problem_reasons = reasons
        changed = self.can_start != (not reasons)
        self.can_start = not reasons
        if changed and not self.running:
            self.set_running(False)
        self._fit_lines()

    def show_message(self, text: str, level: str = "info", about: str = "") -> None:
        """The outcome of a run or of a preset load/save; empty text clears it. It goes at the next edit or Start;
        one `about` a problem (as Form.problems gives it) once its field has none (see MessageLine)."""
        self.message_line.show(text, level, about)

    def _fit_lines(self) -> None:
        """Fill the problem line (for the next run while one is on) and cut it and the message to the width."""
        width = self.winfo_width() - 24 if self.winfo_width() > 1 else UNCUT  # not laid out yet: cut later
        self.problem_line.text, self.problem_line.tail = problem_text(
            self.problem_reasons, "Before the next run" if self.running else "Can't start", "Start")
        self.problem_line.fit(width)
        self.message_line.fit(width)

    def show_status(self, text: str) -> None:
        self.status.set(text)

    def clear_speed(self) -> None:
        """No speed and no time left (nothing is training)."""
        self.speed_label.configure(text=NO_SPEED), self.eta_label.configure(text=NO_ETA)

    def reset_progress(self) -> None:
        self.epoch_bar.set(0), self.step_bar.set(0)
        self.epoch_label.configure(text="epoch –"), self.step_label.configure(text="step –")
        self.clear_speed()
        self.vram_label.configure(text="")

    def show_totals(self, total_steps: int, total_epochs: int) -> None:
        self.step_label.configure(text=f"step 0/{total_steps}")
        self.epoch_label.configure(text=f"epoch 1/{total_epochs}")

    def show_progress(self, p) -> None:
        """Apply a Progress event (the newest of a drain; older ones only feed the chart). Once stopping, the
        last steps still move the bars but speed and time left stay cleared."""
        self.step_bar.set(p.step / p.total_steps if p.total_steps else 0)
        done_epochs = p.epoch + (p.epoch_step / p.epoch_steps if p.epoch_steps else 0)
        self.epoch_bar.set(min(1.0, done_epochs / p.total_epochs) if p.total_epochs else 0)
        self.step_label.configure(text=f"step {p.step}/{p.total_steps}")
        self.epoch_label.configure(text=f"epoch {min(p.epoch + 1, p.total_epochs)}/{p.total_epochs}")
        if not self.stopping:
            self.speed_label.configure(text=format_speed(p.it_per_s))
            self.eta_label.configure(text=format_eta(p.eta_s))
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
            self.clear_speed()

    def drained(self) -> None:
        """The end of a drain: show the newest step it brought."""
        if self._progress is not None:
            self.show_progress(self._progress)
            self._progress = None
