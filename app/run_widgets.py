"""Run-view widgets: the loss chart (a plain tk Canvas) and the run log (the sample gallery is in
app/sample_gallery.py); each shows the training events it is about (subscribed to the window's Runner)."""
from __future__ import annotations

import bisect
import math
import time
import tkinter as tk

import customtkinter as ctk

from app.widgets import ERROR, MUTED, WARNING
from trainer import events as ev
from trainer.errors import plain_text

CHART_BG, GRID, AXIS_TEXT = "#1e1f22", "#34363b", "#a8a8a8"
RAW, SMOOTH, LR, VALIDATION = "#4d6a8c", "#58a6ff", "#e3a64a", "#5fd38d"
DRAWS = (ev.RunStarted, ev.Progress, ev.ValidationLoss, ev.SampleReady)  # a new run's view replaces the last one's
CHECKPOINTS = {"backup": "Backup", "save": "Save", "final": "Final model"}  # CheckpointWritten.kind in words


def run_outcome(event: ev.RunFinished) -> tuple[str, str]:
    """How a training ended, for the bottom bar and the log: (text, level "success" | "info" | "warning" |
    "error"). A run refused before training (bad input, or a refusal the window resolves by asking: see
    Window.run_finished) says "not started"; the text holds no terminal escape codes."""
    message = plain_text(event.message or "")
    if event.outcome in ("completed", "stopped"):
        text = f"Training {event.outcome} at step {event.step}."
        text += f" Model: {event.output_path}" if event.output_path else ""
        return text, "success" if event.outcome == "completed" else "info"
    if event.refusal or (event.bad_input and not event.step):
        return f"Training not started: {message or 'no reason given'}", "warning" if event.refusal else "error"
    return f"Training failed: {message or 'no reason given'}", "error"


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values covering [lo, hi]."""
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / max(count, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def format_tick(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) < 1e-3 or abs(value) >= 1e5:
        return f"{value:.0e}"
    return f"{value:.4g}"


class LossChart(tk.Canvas):
    """Raw loss (thin, as a min/max band when dense) and smoothed loss over steps, the validation loss (its own
    points, joined, when the run measures one: trainer.train.validation) on the same axis; LR on the right axis."""

    MARGIN = (58, 30, 58, 30)  # left, top (the legend), right, bottom

    def __init__(self, master, height: int = 280, min_interval_ms: int = 250, **kw):
        super().__init__(master, bg=CHART_BG, highlightthickness=0, height=height, **kw)
        self.steps: list[float] = []
        self.loss: list[float] = []
        self.smooth: list[float] = []
        self.lr: list[float] = []
        self.val_steps: list[float] = []  # the validation loss's points (events.ValidationLoss)
        self.val_loss: list[float] = []
        self.total_steps = 0
        self.min_interval_ms = min_interval_ms
        self._pending: str | None = None
        self._last_draw = 0.0
        self.stale = True  # set by a RunFinished: the curve stays until the next run draws (a refused one never does)
        self.bind("<Configure>", lambda _e: self.request_redraw(now=True))

    def handle(self, event) -> None:
        """A training event: RunStarted sets the step axis, each Progress adds a point, each ValidationLoss a
        point of the validation series."""
        if self.stale and isinstance(event, DRAWS):
            self.stale = False
            self.clear()
        if isinstance(event, ev.Progress):
            self.add(event.step, event.loss, event.smooth_loss, event.lr, event.total_steps)
        elif isinstance(event, ev.ValidationLoss):
            self.add_validation(event.step, event.loss)
        elif isinstance(event, ev.RunStarted):
            self.total_steps = event.total_steps
        elif isinstance(event, ev.RunFinished):
            self.stale = True

    def add(self, step: int, loss: float, smooth: float, lr: float, total_steps: int = 0) -> None:
        """A point at `step`; one at or before the last point's step first drops the points from there on (a run
        resumed from a backup trains those steps again: its later points are kept)."""
        if self.steps and step <= self.steps[-1]:
            cut = bisect.bisect_left(self.steps, step)
            del self.steps[cut:], self.loss[cut:], self.smooth[cut:], self.lr[cut:]
            cut = bisect.bisect_left(self.val_steps, step)
            del self.val_steps[cut:], self.val_loss[cut:]
        self.steps.append(step)
        self.loss.append(loss)
        self.smooth.append(smooth)
        self.lr.append(lr)
        self.total_steps = max(self.total_steps, total_steps)
        self.request_redraw()

    def add_validation(self, step: int, loss: float) -> None:
        """A validation point at `step`; one at or before the last one first drops the points from there on (a
        resumed run sends the points its backup kept again)."""
        if self.val_steps and step <= self.val_steps[-1]:
            cut = bisect.bisect_left(self.val_steps, step)
            del self.val_steps[cut:], self.val_loss[cut:]
        self.val_steps.append(step)
        self.val_loss.append(loss)
        self.request_redraw()

    def clear(self) -> None:
        self.steps.clear(), self.loss.clear(), self.smooth.clear(), self.lr.clear()
        self.val_steps.clear(), self.val_loss.clear()
        self.total_steps = 0
        self.request_redraw(now=True)

    def request_redraw(self, now: bool = False) -> None:
        """Redraw soon, at most once per `min_interval_ms` (so a fast run never floods the Tk loop)."""
        if self._pending is not None:
            if not now:
                return
            self.after_cancel(self._pending)
        wait = 0 if now else max(0, int(self.min_interval_ms - (time.monotonic() - self._last_draw) * 1000))
        self._pending = self.after(wait, self.redraw)

    def redraw(self) -> None:
        self._pending = None
        self._last_draw = time.monotonic()
        self.delete("all")
        w, h = self.winfo_width(), self.winfo_height()
        left, top, right, bottom = self.MARGIN
        x0, y0, x1, y1 = left, top, w - right, h - bottom
        if x1 - x0 < 40 or y1 - y0 < 40:
            return
        if not self.steps and not self.val_steps:
            self.create_text((x0 + x1) / 2, (y0 + y1) / 2, fill=MUTED,
                             text="The loss curve appears here once training starts.")
            return
        first, last = min(self.steps[:1] + self.val_steps[:1]), max(self.steps[-1:] + self.val_steps[-1:])
        s_hi = max(self.total_steps, last, first + 1)
        s_lo = min(0, first)
        finite = [v for v in self.loss + self.val_loss if math.isfinite(v)] or [0.0]
        l_lo, l_hi = min(finite), max(finite)
        pad = (l_hi - l_lo) * 0.05 or abs(l_hi) * 0.05 or 0.05
        l_lo, l_hi = max(0.0, l_lo - pad) if l_lo >= 0 else l_lo - pad, l_hi + pad
        lr_hi = max(self.lr, default=0.0) or 1.0

        def sx(s): return x0 + (s - s_lo) / (s_hi - s_lo) * (x1 - x0)
        def sy(v): return y1 - (v - l_lo) / (l_hi - l_lo) * (y1 - y0)
        def sy_lr(v): return y1 - v / (lr_hi * 1.05) * (y1 - y0)

        for t in nice_ticks(l_lo, l_hi):
            y = sy(t)
            self.create_line(x0, y, x1, y, fill=GRID)
            self.create_text(x0 - 6, y, text=format_tick(t), anchor="e", fill=AXIS_TEXT, font=("TkDefaultFont", 9))
        for t in nice_ticks(0, lr_hi * 1.05, 4):
            self.create_text(x1 + 6, sy_lr(t), text=format_tick(t), anchor="w", fill=LR, font=("TkDefaultFont", 9))
        for t in nice_ticks(s_lo, s_hi, 6):
            if t <= s_hi:
                self.create_text(sx(t), y1 + 6, text=format_tick(t), anchor="n", fill=AXIS_TEXT,
                                 font=("TkDefaultFont", 9))
        self.create_rectangle(x0, y0, x1, y1, outline=GRID)
        self._polyline(self._band(self.loss, x1 - x0), sx, sy, RAW, 1)
        self._polyline(self._thin(self.smooth, x1 - x0), sx, sy, SMOOTH, 2)
        self._polyline(self._thin(self.lr, x1 - x0), sx, sy_lr, LR, 1, dash=(4, 3))
        self._validation(sx, sy)
        self._legend(x0, y0 - 15)

    def _validation(self, sx, sy) -> None:
        """The validation points, joined, each a dot (they are few: one per validation interval)."""
        points = [(sx(s), sy(v)) for s, v in zip(self.val_steps, self.val_loss) if math.isfinite(v)]
        if len(points) >= 2:
            self.create_line(*[c for p in points for c in p], fill=VALIDATION, width=2)
        for x, y in points:
            self.create_oval(x - 3, y - 3, x + 3, y + 3, fill=VALIDATION, outline="")

    def _thin(self, values: list[float], width: int) -> list[tuple[float, float]]:
        stride = max(1, len(values) // max(width, 1))
        points = [(self.steps[i], values[i]) for i in range(0, len(values), stride)]
        if (len(values) - 1) % stride:
            points.append((self.steps[-1], values[-1]))
        return points

    def _band(self, values: list[float], width: int) -> list[tuple[float, float]]:
        """Dense data: per pixel column its min and max, so spikes stay visible without drawing every point."""
        n = len(values)
        if n <= width * 2:
            return list(zip(self.steps, values))
        stride = n / width
        points = []
        for k in range(width):
            a, b = int(k * stride), max(int((k + 1) * stride), int(k * stride) + 1)
            chunk = values[a:b]
            points.append((self.steps[a], min(chunk)))
            points.append((self.steps[b - 1], max(chunk)))
        return points

    def _polyline(self, points, sx, sy, colour, width, dash=None) -> None:
        coords = []
        for s, v in points:
            if math.isfinite(v):
                coords += (sx(s), sy(v))
        if len(coords) >= 4:
            self.create_line(*coords, fill=colour, width=width, dash=dash)
        elif len(coords) == 2:
            self.create_oval(coords[0] - 2, coords[1] - 2, coords[0] + 2, coords[1] + 2, fill=colour, outline="")

    def _legend(self, x: float, y: float) -> None:
        entries = [("loss", RAW), ("smoothed", SMOOTH)] + ([("validation", VALIDATION)] if self.val_steps else [])
        for text, colour in entries + [("learning rate (right axis)", LR)]:
            self.create_line(x, y, x + 16, y, fill=colour, width=2)
            item = self.create_text(x + 20, y, text=text, anchor="w", fill=AXIS_TEXT, font=("TkDefaultFont", 9))
            x = self.bbox(item)[2] + 14


class LogView(ctk.CTkTextbox):
    """Read-only log lines; warnings and errors highlighted; keeps the last `max_lines`."""

    def __init__(self, master, max_lines: int = 4000, **kw):
        super().__init__(master, wrap="word", font=ctk.CTkFont(family="DejaVu Sans Mono", size=12), **kw)
        self.max_lines = max_lines
        self.tag_config("warning", foreground=WARNING)
        self.tag_config("error", foreground=ERROR)
        self.tag_config("info", foreground="#d0d0d0")
        self.configure(state="disabled")
        self.lines = 0

    def append(self, level: str, text: str) -> None:
        at_bottom = self.yview()[1] >= 0.999
        tag = level if level in ("warning", "error") else "info"
        text = text.rstrip("\n")
        self.configure(state="normal")
        self.insert("end", text + "\n", tag)
        self.lines += text.count("\n") + 1
        if self.lines > self.max_lines:
            drop = self.lines - self.max_lines
            self.delete("1.0", f"{drop + 1}.0")
            self.lines -= drop
        self.configure(state="disabled")
        if at_bottom:
            self.see("end")

    def clear(self) -> None:
        self.configure(state="normal")
        self.delete("1.0", "end")
        self.configure(state="disabled")
        self.lines = 0

    def text(self) -> str:
        return self.get("1.0", "end-1c")

    def handle(self, event) -> None:
        """A training event: the run's start, the engine's Log lines, each checkpoint written and the outcome."""
        if isinstance(event, ev.Log):
            self.append(event.level, plain_text(event.text))
        elif isinstance(event, ev.RunStarted):
            self.append("info", f"Run started on {event.device}: {event.total_steps} steps, "
                                f"{event.total_epochs} epochs; workspace {event.workspace}")
        elif isinstance(event, ev.CheckpointWritten):
            self.append("info", f"{CHECKPOINTS.get(event.kind, event.kind)} written at step {event.step}: "
                                f"{event.path}")
        elif isinstance(event, ev.RunFinished):
            text, level = run_outcome(event)
            self.append(level, text)
