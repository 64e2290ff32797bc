"""The image viewer: one image scaled to the window (nearest-neighbour for tiny samples), what it shows (prompt,
seed, step, epoch), the arrow keys to step through prompts and steps; the run tab's gallery, the results grid and
the tools tab open it. With the image helpers they share."""
from __future__ import annotations

import tkinter as tk
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import customtkinter as ctk

from app.run_widgets import CHART_BG
from app.widgets import MUTED, bury

KEYS = "← → columns    ↑ ↓ rows    Esc closes"  # the viewer's keys, as a grid's viewer says them


def shorten(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, an ellipsis last when it was longer."""
    return text if len(text) <= limit else text[:limit - 1] + "…"


# ---- images ---------------------------------------------------------------------------------------------------

def scaled(im, width: int, height: int):
    """The PIL image `im` fitted into width x height px, aspect kept: enlarged by a whole factor with nearest-neighbour
    when it fits at least twice (a 64 px sample stays sharp: each pixel a square), by a smooth resize when it fits
    1-2 times, shrunk smoothly when too big. At least 1 x 1 px."""
    from PIL import Image
    fit = min(width / im.width, height / im.height)
    if fit >= 2:
        return im.resize((im.width * int(fit), im.height * int(fit)), Image.NEAREST)
    size = (max(1, round(im.width * fit)), max(1, round(im.height * fit)))
    return im if size == im.size else im.resize(size, Image.LANCZOS)


def load_image(path: str | Path, width: int = 0, height: int = 0):
    """The image file as an RGB PIL image, fitted into width x height px by `scaled` when they are given; None
    when it cannot be read (gone, not an image, too large: see trainer.data.images.open_image)."""
    from trainer.data.images import open_image
    try:
        with open_image(path) as im:
            if width and height:
                im.draft("RGB", (width, height))
            im = im.convert("RGB")
    except (OSError, ValueError):  # ImageTooLarge is a ValueError
        return None
    return scaled(im, width, height) if width and height else im


def sample_details(path: str, step: int | None = None, epoch: int | None = None) -> str | None:
    """"seed S · step N · epoch E" for a sample image, from its file name (stepN-epochE-promptP-seedS.png) where
    `step` and `epoch` are not given (None when the name does not say them); a name without a seed leaves it out."""
    from trainer.tools.compare import SAMPLE_NAME
    match = SAMPLE_NAME.search(Path(path).name)
    if step is None and match is None:
        return None
    step, epoch = (int(match.group(1)), int(match.group(2))) if step is None else (step, epoch)
    return f"{f'seed {match.group(4)} · ' if match else ''}step {step} · epoch {epoch}"


# ---- the viewer -----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ViewerItem:
    """An image the viewer can show. `row` and `column` place it among the others (the gallery: prompt index and
    step; a grid: its row and column); `heading` says what it is (the prompt) and `details` how it was made
    (seed, step, epoch)."""
    path: str
    row: int
    column: int
    heading: str
    details: str


class ImageViewer(ctk.CTkToplevel):
    """One image at a time, scaled to the window (see `scaled`), under its heading and details, with its path
    (selectable) below. The arrow keys step through `items()`, re-read at each key so that new samples are
    reached: Left/Right to the previous or next column of the shown row (a prompt's samples across steps),
    Up/Down to the row above or below (the same column, else the nearest before it); at an edge the image stays.
    Escape or the window's close button closes it (`close()`)."""

    def __init__(self, master, items: Callable[[], list[ViewerItem]], current: ViewerItem, keys: str = KEYS):
        super().__init__(master)
        self.items = items
        self.item = current
        self.photo = None  # the shown image, a PhotoImage of this window's Tk
        self._image = None  # the shown file as read (PIL), fitted again when the window is resized
        self._fit_id: str | None = None
        self.geometry(f"{min(980, self.winfo_screenwidth() - 80)}x{min(860, self.winfo_screenheight() - 100)}")
        self.minsize(360, 320)
        self.heading = ctk.CTkLabel(self, text="", anchor="w", justify="left",
                                    font=ctk.CTkFont(size=15, weight="bold"))
        self.heading.pack(fill="x", padx=12, pady=(10, 0))
        self.details = ctk.CTkLabel(self, text="", anchor="w", justify="left", text_color=MUTED)
        self.details.pack(fill="x", padx=12)
        bottom = ctk.CTkFrame(self, fg_color="transparent")
        bottom.pack(side="bottom", fill="x", padx=12, pady=(0, 10))
        ctk.CTkLabel(bottom, text=keys, text_color=MUTED).pack(side="right")
        self.path = ctk.CTkEntry(bottom, border_width=0, fg_color="transparent", text_color=MUTED)
        self.path.pack(side="left", fill="x", expand=True, padx=(0, 16))
        self.canvas = tk.Canvas(self, bg=CHART_BG, highlightthickness=0)
        self.canvas.pack(fill="both", expand=True, padx=8, pady=6)
        self.canvas.bind("<Configure>", self._resized)
        for key, rows, columns in (("<Left>", 0, -1), ("<Right>", 0, 1), ("<Up>", -1, 0), ("<Down>", 1, 0)):
            self.bind(key, lambda _e, r=rows, c=columns: self.move(r, c))
        self.bind("<Escape>", lambda _e: self.close())
        self.protocol("WM_DELETE_WINDOW", self.close)
        self.show(current)
        self._focus_id: str | None = self.after(50, self._take_focus)

    def _take_focus(self) -> None:
        self._focus_id = None
        self.lift()
        self.focus_force()

    def show(self, item: ViewerItem) -> None:
        """Show `item` (its file read again)."""
        self.item = item
        first = item.details.splitlines()[0] if item.details else ""
        self.title(f"{shorten(item.heading, 60)} — {first}" if first else shorten(item.heading, 80))
        self.heading.configure(text=item.heading)
        self.details.configure(text=item.details)
        self.path.configure(state="normal")
        self.path.delete(0, "end")
        self.path.insert(0, item.path)
        self.path.configure(state="readonly")
        self._image = load_image(item.path)
        self._draw()

    def move(self, rows: int, columns: int) -> None:
        """Show the image `columns` columns right (negative: left) in the shown row, or the one `rows` rows down
        (negative: up) in the same column or the nearest column before it (else the row's first)."""
        items = self.items()
        if columns:
            line = sorted((i for i in items if i.row == self.item.row), key=lambda i: i.column)
            at = next((k for k, i in enumerate(line) if i.column == self.item.column), None)
            if at is not None and 0 <= at + columns < len(line):
                self.show(line[at + columns])
            return
        rows_shown = sorted({i.row for i in items})
        if self.item.row not in rows_shown:
            return
        k = rows_shown.index(self.item.row) + rows
        if 0 <= k < len(rows_shown):
            line = sorted((i for i in items if i.row == rows_shown[k]), key=lambda i: i.column)
            before = [i for i in line if i.column <= self.item.column]
            self.show(before[-1] if before else line[0])

    def _resized(self, event) -> None:
        self.heading.configure(wraplength=max(200, event.width - 16))
        if self._fit_id is not None:
            self.after_cancel(self._fit_id)
        self._fit_id = self.after(60, self._draw)

    def _draw(self) -> None:
        self._fit_id = None
        width, height = self.canvas.winfo_width(), self.canvas.winfo_height()
        if width <= 1:  # not laid out yet: its requested size, until its first <Configure>
            width, height = self.canvas.winfo_reqwidth(), self.canvas.winfo_reqheight()
        self.canvas.delete("all")
        if self._image is None:
            self.photo = None
            self.canvas.create_text(width / 2, height / 2, fill=MUTED, text="This image cannot be read.")
            return
        from PIL import ImageTk
        # The old PhotoImage is in no reference cycle: dropping it here frees it on the Tk thread.
        self.photo = ImageTk.PhotoImage(scaled(self._image, width - 8, height - 8), master=self.canvas)
        self.canvas.create_image(width / 2, height / 2, image=self.photo)

    @classmethod
    def reuse(cls, viewer: ImageViewer | None, master, items: Callable[[], list[ViewerItem]], item: ViewerItem,
              keys: str = KEYS) -> ImageViewer:
        """`viewer` showing `item`, brought forward; a new viewer when it is None or closed."""
        if viewer is None or not viewer.winfo_exists():
            return cls(master, items, item, keys)
        viewer.show(item)
        viewer.lift()
        return viewer

    def close(self) -> None:
        for after_id in (self._fit_id, self._focus_id):
            if after_id is not None:
                self.after_cancel(after_id)
        self._fit_id = self._focus_id = None
        self.destroy()
        bury(self)
