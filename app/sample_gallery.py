"""The run tab's sample gallery: per prompt, its sample at the chosen step beside a strip of its samples across
the run (as the results grid shows them); a click opens the viewer (app.sample_viewer)."""
from __future__ import annotations

import bisect
import tkinter as tk
from collections import OrderedDict
from dataclasses import dataclass

import customtkinter as ctk

from app.run_widgets import AXIS_TEXT, CHART_BG, DRAWS, GRID, SMOOTH
from app.sample_viewer import ImageViewer, ViewerItem, load_image, sample_details, shorten
from app.widgets import MUTED, Tooltip
from trainer import events as ev

CARD = 128   # px: a prompt's sample at the chosen step
STRIP = 64   # px: its samples across the run, beside it
GAP = 8
KEYS = "← → steps    ↑ ↓ prompts    Esc closes"


@dataclass(frozen=True)
class Sample:
    """A sample as the gallery holds it (a SampleReady's fields): `step` in optimizer steps, `epoch` the epoch that
    step belongs to, the same numbers as the sample's file name."""
    path: str
    prompt_index: int
    prompt: str
    step: int
    epoch: int

    def viewer_item(self) -> ViewerItem:
        """For the viewer: row = prompt index, column = step."""
        return ViewerItem(self.path, self.prompt_index, self.step, self.prompt,
                          sample_details(self.path, self.step, self.epoch))


class PromptRow(ctk.CTkFrame):
    """A prompt in the gallery: its text, its sample at the chosen step (`image`, a CARD px label, and `caption`)
    and `strip`, a canvas of its samples across the run (`chosen`, left to right)."""

    def __init__(self, master, blank: tk.PhotoImage):
        super().__init__(master, fg_color="transparent")
        self.heading = ctk.CTkLabel(self, text="", anchor="w", font=ctk.CTkFont(size=12, weight="bold"))
        self.heading.grid(row=0, column=0, columnspan=2, sticky="ew", padx=6, pady=(6, 2))
        self.image = tk.Label(self, image=blank, compound="center", bg=CHART_BG, fg=MUTED, bd=0,
                              highlightthickness=0, cursor="hand2")
        self.image.grid(row=1, column=0, padx=6)
        self.caption = ctk.CTkLabel(self, text="", font=ctk.CTkFont(size=11), text_color="#c8c8c8")
        self.caption.grid(row=2, column=0, padx=6, pady=(0, 4))
        self.strip = tk.Canvas(self, bg=CHART_BG, highlightthickness=0, height=STRIP + 26, width=STRIP + 2 * GAP,
                               cursor="hand2")
        self.strip.grid(row=1, column=1, rowspan=2, sticky="new", padx=(4, 6))
        self.grid_columnconfigure(1, weight=1)
        self.chosen: list[Sample] = []
        self.prompt = ""
        Tooltip(self.heading, lambda: self.prompt)


class SampleGallery(ctk.CTkFrame):
    """The run's samples, a row per prompt: its sample at the chosen step (the newest, unless the slider looks back
    at an earlier step) beside a strip of its samples across the run (spread evenly over the steps, the first, the
    newest and the chosen one included, the chosen one outlined). A click on a sample opens the viewer."""

    def __init__(self, master, cache_size: int = 256, **kw):
        super().__init__(master, **kw)
        self.cache_size = cache_size
        self.samples: list[Sample] = []  # in the order they came; one per prompt and step
        self.steps: list[int] = []
        self._last_step: dict[int, int] = {}  # per prompt index, the step of its last sample
        self.index = -1  # index into self.steps; -1 follows the newest
        self.rows: dict[int, PromptRow] = {}
        self.shown: dict[int, Sample] = {}
        self.viewer: ImageViewer | None = None
        self._photos: OrderedDict[tuple[str, int], object] = OrderedDict()  # (path, size) -> PhotoImage
        self._render_id: str | None = None
        self._blank = tk.PhotoImage(master=self, width=CARD, height=CARD)
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
        self.body.grid_columnconfigure(0, weight=1)
        self.empty = ctk.CTkLabel(self.body, text="Samples appear here while training.", text_color=MUTED)
        self.empty.grid(row=0, column=0, padx=10, pady=20)
        self.stale = True  # set by a RunFinished: that run's samples stay until the next run draws (see LossChart)

    @property
    def cards(self) -> dict:
        """Per prompt index: (the label of its sample at the chosen step, the caption under it)."""
        return {p: (row.image, row.caption) for p, row in self.rows.items()}

    def handle(self, event) -> None:
        """A training event: each SampleReady adds a sample."""
        if self.stale and isinstance(event, DRAWS):
            self.stale = False
            self.clear()
        if isinstance(event, ev.SampleReady):
            self.add(event)
        elif isinstance(event, ev.RunFinished):
            self.stale = True

    def add(self, sample) -> None:
        """Add a SampleReady (or Sample); the view follows it unless the slider is looking back. A sample at or
        before a step this prompt already has replaces the samples from there on (a resumed run samples again
        from its backup's step: the later samples are kept)."""
        sample = Sample(sample.path, sample.prompt_index, sample.prompt, sample.step, sample.epoch)
        last = self._last_step.get(sample.prompt_index)
        if last is not None and sample.step <= last:
            self.samples = [s for s in self.samples if s.prompt_index != sample.prompt_index or s.step < sample.step]
            self.steps = sorted({s.step for s in self.samples} | {sample.step})
        elif not self.steps or sample.step > self.steps[-1]:
            self.steps.append(sample.step)
        elif sample.step not in self.steps:
            bisect.insort(self.steps, sample.step)
        self._last_step[sample.prompt_index] = sample.step
        self.samples.append(sample)
        n = len(self.steps)
        self.index = min(self.index, n - 1)
        self.slider.configure(to=max(1, n - 1), number_of_steps=max(1, n - 1),
                              state="normal" if n > 1 else "disabled")
        if self.index == -1:
            self.slider.set(n - 1)
        if self._render_id is None:  # once per burst of samples
            self._render_id = self.after_idle(self.render)

    def clear(self) -> None:
        if self._render_id is not None:
            self.after_cancel(self._render_id)
            self._render_id = None
        self.samples.clear(), self.steps.clear(), self.shown.clear(), self._last_step.clear()
        self.index = -1
        for row in self.rows.values():
            row.grid_remove()
            row.strip.delete("all")
            row.chosen = []
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
        """Show each prompt's sample at the chosen step and its strip."""
        if self._render_id is not None:
            self.after_cancel(self._render_id)
            self._render_id = None
        step = self.selected_step()
        if step is None:
            return
        self.empty.grid_remove()
        newest: dict[int, Sample] = {}
        for s in self.samples:
            if s.step <= step and (s.prompt_index not in newest or s.step >= newest[s.prompt_index].step):
                newest[s.prompt_index] = s
        self.step_label.configure(text=f"step {step}" + (" · newest" if self.index == -1 else ""))
        for prompt_index, sample in sorted(newest.items()):
            row = self._row(prompt_index)
            if self.shown.get(prompt_index) != sample:
                photo = self._photo(sample.path, CARD)
                row.image.configure(image=photo or self._blank, text="" if photo else "(image missing)")
                row.prompt = sample.prompt
                row.heading.configure(text=shorten(sample.prompt, 90))
                row.caption.configure(text=f"step {sample.step} · epoch {sample.epoch}")
                self.shown[prompt_index] = sample
            self._draw_strip(prompt_index)

    def _row(self, prompt_index: int) -> PromptRow:
        row = self.rows.get(prompt_index)
        if row is None:
            row = self.rows[prompt_index] = PromptRow(self.body, self._blank)
            row.image.bind("<Button-1>", lambda _e: self.open_full(prompt_index))
            row.strip.bind("<Button-1>", lambda e: self._strip_clicked(prompt_index, e.x))
            row.strip.bind("<Configure>", lambda _e: self._draw_strip(prompt_index))
        row.grid(row=prompt_index + 1, column=0, sticky="ew", pady=(0, 4))
        return row

    def _draw_strip(self, prompt_index: int) -> None:
        from trainer.tools.compare import evenly
        row, shown = self.rows[prompt_index], self.shown.get(prompt_index)
        own = sorted((s for s in self.samples if s.prompt_index == prompt_index), key=lambda s: s.step)
        chosen = evenly(own, max(1, (row.strip.winfo_width() - GAP) // (STRIP + GAP)))
        if shown in own and shown not in chosen:  # looking back: the chosen sample takes its nearest place
            nearest = min(range(len(chosen)), key=lambda k: abs(chosen[k].step - shown.step))
            chosen[nearest] = shown
        canvas = row.strip
        canvas.delete("all")
        for k, sample in enumerate(chosen):
            x = GAP + k * (STRIP + GAP)
            photo = self._photo(sample.path, STRIP)
            if photo is None:
                canvas.create_rectangle(x, 4, x + STRIP, 4 + STRIP, outline=GRID)
            else:
                canvas.create_image(x + STRIP / 2, 4 + STRIP / 2, image=photo)
            if sample == shown:
                canvas.create_rectangle(x - 3, 1, x + STRIP + 3, STRIP + 7, outline=SMOOTH, width=2)
            canvas.create_text(x + STRIP / 2, STRIP + 10, text=f"step {sample.step}", anchor="n", fill=AXIS_TEXT,
                               font=("TkDefaultFont", 9))
        row.chosen = chosen

    def _strip_clicked(self, prompt_index: int, x: int) -> None:
        row = self.rows[prompt_index]
        k = (x - GAP // 2) // (STRIP + GAP)
        if 0 <= k < len(row.chosen):
            self.open_sample(row.chosen[k])

    def _photo(self, path: str, size: int):
        """The image fitted into size x size px as a PhotoImage of this window; None when it cannot be read.
        Kept for the samples shown; the least recently drawn are dropped past `cache_size` (PhotoImages are in
        no reference cycle: dropping one frees it on the Tk thread)."""
        key = (path, size)
        if key in self._photos:
            self._photos.move_to_end(key)
            return self._photos[key]
        im = load_image(path, size, size)
        if im is None:
            return None
        from PIL import ImageTk
        photo = self._photos[key] = ImageTk.PhotoImage(im, master=self)
        drawn = sum(len(row.chosen) + 1 for row in self.rows.values())
        while len(self._photos) > max(self.cache_size, 2 * drawn):
            self._photos.popitem(last=False)
        return photo

    def viewer_items(self) -> list[ViewerItem]:
        """Every sample, for the viewer's arrow keys."""
        return [s.viewer_item() for s in self.samples]

    def open_sample(self, sample: Sample) -> ImageViewer:
        """Show `sample` in the viewer (one for the gallery: opened, or brought forward); returns the viewer."""
        self.viewer = ImageViewer.reuse(self.viewer, self, self.viewer_items, sample.viewer_item(), KEYS)
        return self.viewer

    def open_full(self, prompt_index: int) -> ImageViewer | None:
        """Open the viewer on the sample a prompt's row shows; None when it shows none."""
        sample = self.shown.get(prompt_index)
        return None if sample is None else self.open_sample(sample)
