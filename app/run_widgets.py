"""Run-view widgets: the loss chart (a plain tk Canvas), the sample gallery (thumbnails, step slider) and the run
log; each shows the training events it is about (subscribed to the window's Runner)."""
from __future__ import annotations

import math
import time
import tkinter as tk
from collections import OrderedDict
from dataclasses import dataclass

import customtkinter as ctk

from app.widgets import ERROR, MUTED, WARNING, Tooltip, bury, show_image_window
from trainer import events as ev
from trainer.errors import plain_text

CHART_BG, GRID, AXIS_TEXT = "#1e1f22", "#34363b", "#a8a8a8"
RAW, SMOOTH, LR = "#4d6a8c", "#58a6ff", "#e3a64a"
DRAWS = (ev.RunStarted, ev.Progress, ev.SampleReady)  # the events by which a new run replaces the last one's view
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
    """Raw loss (thin, as a min/max band when dense) and smoothed loss over steps; LR on the right axis."""

    MARGIN = (58, 30, 58, 30)  # left, top (the legend), right, bottom

    def __init__(self, master, height: int = 280, min_interval_ms: int = 250, **kw):
        super().__init__(master, bg=CHART_BG, highlightthickness=0, height=height, **kw)
        self.steps: list[float] = []
        self.loss: list[float] = []
        self.smooth: list[float] = []
        self.lr: list[float] = []
        self.total_steps = 0
        self.min_interval_ms = min_interval_ms
        self._pending: str | None = None
        self._last_draw = 0.0
        self.stale = True  # set by a RunFinished: the curve stays until the next run draws (a refused one never does)
        self.bind("<Configure>", lambda _e: self.request_redraw(now=True))

    def handle(self, event) -> None:
        """A training event: RunStarted sets the step axis, each Progress adds a point."""
        if self.stale and isinstance(event, DRAWS):
            self.stale = False
            self.clear()
        if isinstance(event, ev.Progress):
            self.add(event.step, event.loss, event.smooth_loss, event.lr, event.total_steps)
        elif isinstance(event, ev.RunStarted):
            self.total_steps = event.total_steps
        elif isinstance(event, ev.RunFinished):
            self.stale = True

    def add(self, step: int, loss: float, smooth: float, lr: float, total_steps: int = 0) -> None:
        self.steps.append(step)
        self.loss.append(loss)
        self.smooth.append(smooth)
        self.lr.append(lr)
        self.total_steps = max(self.total_steps, total_steps)
        self.request_redraw()

    def clear(self) -> None:
        self.steps.clear(), self.loss.clear(), self.smooth.clear(), self.lr.clear()
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
        if not self.steps:
            self.create_text((x0 + x1) / 2, (y0 + y1) / 2, fill=MUTED,
                             text="The loss curve appears here once training starts.")
            return
        s_hi = max(self.total_steps, self.steps[-1], self.steps[0] + 1)
        s_lo = min(0, self.steps[0])
        finite = [v for v in self.loss if math.isfinite(v)] or [0.0]
        l_lo, l_hi = min(finite), max(finite)
        pad = (l_hi - l_lo) * 0.05 or abs(l_hi) * 0.05 or 0.05
        l_lo, l_hi = max(0.0, l_lo - pad) if l_lo >= 0 else l_lo - pad, l_hi + pad
        lr_hi = max(self.lr) or 1.0

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
        self._legend(x0, y0 - 15)

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
        for text, colour in (("loss", RAW), ("smoothed", SMOOTH), ("learning rate (right axis)", LR)):
            self.create_line(x, y, x + 16, y, fill=colour, width=2)
            item = self.create_text(x + 20, y, text=text, anchor="w", fill=AXIS_TEXT, font=("TkDefaultFont", 9))
            x = self.bbox(item)[2] + 14


@dataclass(frozen=True)
class Sample:
    path: str
    prompt_index: int
    prompt: str
    step: int
    epoch: int


class SampleGallery(ctk.CTkFrame):
    """The newest sample of each prompt, a slider to look back at earlier steps, click for full size."""

    def __init__(self, master, thumb: int = 168, cache_size: int = 256, **kw):
        super().__init__(master, **kw)
        self.thumb, self.columns, self.cache_size = thumb, 2, cache_size
        self.samples: list[Sample] = []
        self.steps: list[int] = []
        self.index = -1  # index into self.steps; -1 follows the newest
        self._cache: OrderedDict[str, ctk.CTkImage] = OrderedDict()
        self.cards: dict[int, tuple[ctk.CTkLabel, ctk.CTkLabel]] = {}
        self.shown: dict[int, Sample] = {}
        head = ctk.CTkFrame(self, fg_color="transparent")
        head.pack(fill="x", padx=10, pady=(8, 4))
        ctk.CTkLabel(head, text="Samples", font=ctk.CTkFont(size=14, weight="bold")).pack(side="left")
        self.step_label = ctk.CTkLabel(head, text="none yet", text_color=MUTED)
        self.step_label.pack(side="right")
        self.slider = ctk.CTkSlider(head, from_=0, to=1, number_of_steps=1, command=self._slid, width=180)
        self.slider.pack(side="right", padx=8)
        self.slider.set(0)
        self.slider.configure(state="disabled")
        Tooltip(self.slider, "Look back at the samples of earlier steps; all the way right follows the newest.")
        self.body = ctk.CTkScrollableFrame(self, fg_color="transparent")
        self.body.pack(fill="both", expand=True, padx=4, pady=(0, 6))
        self.empty = ctk.CTkLabel(self.body, text="Samples appear here while training.", text_color=MUTED)
        self.empty.grid(row=0, column=0, padx=10, pady=20)
        self._slots: dict[int, int] = {}
        self.stale = True  # set by a RunFinished: that run's samples stay until the next run draws (see LossChart)
        self.body.bind("<Configure>", self._resized, add="+")

    def handle(self, event) -> None:
        """A training event: each SampleReady adds a sample."""
        if self.stale and isinstance(event, DRAWS):
            self.stale = False
            self.clear()
        if isinstance(event, ev.SampleReady):
            self.add(event)
        elif isinstance(event, ev.RunFinished):
            self.stale = True

    def _resized(self, event) -> None:
        """As many columns of cards as the width holds."""
        columns = max(1, int(event.width // (self.thumb + 20)))
        if columns != self.columns:
            self.columns = columns
            for prompt_index, slot in self._slots.items():
                self._place(prompt_index, slot)

    def add(self, sample) -> None:
        """Add a SampleReady (or Sample); the view follows it unless the slider is looking back."""
        sample = Sample(sample.path, sample.prompt_index, sample.prompt, sample.step, sample.epoch)
        self.samples.append(sample)
        if sample.step not in self.steps:
            self.steps.append(sample.step)
            self.steps.sort()
        n = len(self.steps)
        self.slider.configure(to=max(1, n - 1), number_of_steps=max(1, n - 1),
                              state="normal" if n > 1 else "disabled")
        if self.index == -1:
            self.slider.set(n - 1)
        self.render()

    def clear(self) -> None:
        self.samples.clear(), self.steps.clear(), self.shown.clear(), self._slots.clear()
        self.index = -1
        for image_label, caption in self.cards.values():
            image_label.grid_remove(), caption.grid_remove()
        self.slider.configure(to=1, number_of_steps=1, state="normal")
        self.slider.set(0)
        self.slider.configure(state="disabled")
        self.step_label.configure(text="none yet")
        self.empty.grid()

    def show_step(self, index: int) -> None:
        """Show samples up to steps[index]; the last index follows new samples again."""
        self.index = -1 if index >= len(self.steps) - 1 else max(0, index)
        self.slider.set(len(self.steps) - 1 if self.index == -1 else self.index)
        self.render()

    def _slid(self, value: float) -> None:
        index = int(round(value))
        if (index >= len(self.steps) - 1 and self.index != -1) or index != self.index:
            self.show_step(index)

    def selected_step(self) -> int | None:
        if not self.steps:
            return None
        return self.steps[-1] if self.index == -1 else self.steps[self.index]

    def render(self) -> None:
        step = self.selected_step()
        if step is None:
            return
        self.empty.grid_remove()
        newest: dict[int, Sample] = {}
        for s in self.samples:
            if s.step <= step and (s.prompt_index not in newest or s.step >= newest[s.prompt_index].step):
                newest[s.prompt_index] = s
        self.step_label.configure(text=f"step {step}" + (" · newest" if self.index == -1 else ""))
        for slot, (prompt_index, sample) in enumerate(sorted(newest.items())):
            if self.shown.get(prompt_index) == sample:
                continue
            image_label, caption = self._card(prompt_index, slot)
            image = self._thumbnail(sample.path)
            image_label.configure(image=image, text="" if image else "(image missing)")
            prompt = sample.prompt if len(sample.prompt) <= 70 else sample.prompt[:67] + "…"
            caption.configure(text=f"{prompt}\nstep {sample.step} · epoch {sample.epoch + 1}")
            self.shown[prompt_index] = sample

    def _card(self, prompt_index: int, slot: int):
        if prompt_index not in self.cards:
            image_label = ctk.CTkLabel(self.body, text="", width=self.thumb, height=self.thumb, cursor="hand2")
            caption = ctk.CTkLabel(self.body, text="", wraplength=self.thumb + 4, justify="center",
                                   font=ctk.CTkFont(size=11), text_color="#c8c8c8")
            image_label.bind("<Button-1>", lambda _e, p=prompt_index: self.open_full(p))
            self.cards[prompt_index] = (image_label, caption)
        self._place(prompt_index, slot)
        return self.cards[prompt_index]

    def _place(self, prompt_index: int, slot: int) -> None:
        self._slots[prompt_index] = slot
        image_label, caption = self.cards[prompt_index]
        row, col = divmod(slot, self.columns)
        image_label.grid(row=2 * row, column=col, padx=6, pady=(8, 2))
        caption.grid(row=2 * row + 1, column=col, padx=6, pady=(0, 6), sticky="n")

    def _thumbnail(self, path: str) -> ctk.CTkImage | None:
        if path in self._cache:
            self._cache.move_to_end(path)
            return self._cache[path]
        try:
            from PIL import Image
            with Image.open(path) as im:
                im.draft("RGB", (self.thumb, self.thumb))
                im = im.convert("RGB")
                im.thumbnail((self.thumb, self.thumb))
        except (OSError, ValueError):
            return None
        image = ctk.CTkImage(light_image=im, dark_image=im, size=im.size)
        self._cache[path] = image
        while len(self._cache) > self.cache_size:
            old_path, old = self._cache.popitem(last=False)
            if all(s.path != old_path for s in self.shown.values()):
                bury(old)
            else:
                self._cache[old_path] = old
                break
        return image

    def open_full(self, prompt_index: int):
        """Open the shown sample of a prompt at full size in its own window; returns that window."""
        sample = self.shown.get(prompt_index)
        if sample is None:
            return None
        return show_image_window(self, sample.path, f"{sample.prompt[:60]} — step {sample.step}, epoch "
                                 f"{sample.epoch + 1}", f"{sample.prompt}\n{sample.path}")


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
