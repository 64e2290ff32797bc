"""Composite widgets for the form: field widgets, labelled field, tooltip, path picker, group frame; the tab view
and image helpers."""
from __future__ import annotations

import tkinter as tk
from pathlib import Path
from typing import Any, Callable

import customtkinter as ctk

ERROR = "#f0605a"
WARNING = "#e3b341"
SUCCESS = "#56c271"
MUTED = "#9a9a9a"
GROUP_COLOUR = ("gray86", "gray20")

_graveyard: list[Any] = []


def bury(obj: Any) -> None:
    """Keep a dropped Tk object alive until the Tk thread collects it (never a worker thread's GC).

    Tk objects sit in reference cycles; if Python's cyclic GC frees them while the worker runs, their Tcl
    finalizers run in the worker thread. So the window parks them here and `flush_graveyard()` frees them
    from the Tk thread as a run starts (Runner.start).
    """
    _graveyard.append(obj)


def flush_graveyard() -> None:
    """Free buried Tk objects now, from the Tk thread; then freeze the objects left (gc.freeze: no collection
    looks at them until the next flush), so that the collections during the run pass over the objects made
    since, not over the whole window (a full pass takes 40-70 ms on a slow machine: a stall of the window)."""
    import gc
    _graveyard.clear()
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def format_value(value: Any) -> str:
    """A field value as the text an entry shows; floats keep full precision (repr round-trips)."""
    if isinstance(value, float):
        return repr(value)
    return "" if value is None else str(value)


def reconfigure(widget, **options) -> None:
    """`widget.configure(**options)` for the options whose value differs from the widget's (cget) only, and no
    call when none does: CTk redraws a widget at every configure of a colour or state, tens of ms for a window's
    worth of buttons on a slow machine."""
    changed = {name: value for name, value in options.items() if widget.cget(name) != value}
    if changed:
        widget.configure(**changed)


def fit_text(font, text: str, width: float, lines: int = 1) -> str:
    """`text` (line breaks become spaces) as Tk shows it wrapped at words to `width` pixels of `font`, cut with
    "…" so that it takes at most `lines` lines (the last line is cut anywhere, not only between words)."""
    words = text.split()
    text = " ".join(words)
    if font.measure(text) <= width:
        return text
    shown = []
    while len(shown) < lines - 1 and words and font.measure(words[0]) <= width:
        n = len(words)
        while font.measure(" ".join(words[:n])) > width:
            n -= 1
        shown.append(" ".join(words[:n]))
        words = words[n:]
    rest = " ".join(words)
    if font.measure(rest) > width:
        lo, hi = 0, len(rest)
        while lo < hi:  # the longest prefix that fits with the ellipsis
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if font.measure(rest[:mid] + "…") <= width else (lo, mid - 1)
        rest = rest[:lo].rstrip() + "…"
    return " ".join(shown + [rest] if rest else shown)


class Tooltip:
    """Help text shown after hovering a widget for a moment. `text` may be a callable (re-read each time)."""

    def __init__(self, widget, text: str | Callable[[], str], delay_ms: int = 450):
        self.widget, self.text, self.delay_ms = widget, text, delay_ms
        self._after: str | None = None
        self._tip: tk.Toplevel | None = None
        self._label: tk.Label | None = None
        widget.bind("<Enter>", self.schedule, add="+")
        widget.bind("<Leave>", self.hide, add="+")
        widget.bind("<ButtonPress>", self.hide, add="+")

    def current_text(self) -> str:
        return self.text() if callable(self.text) else self.text

    def schedule(self, _event=None) -> None:
        """Show the tip after the delay (the pointer came onto the widget, or onto another part of it)."""
        self._cancel()
        self._after = self.widget.after(self.delay_ms, self.show)

    def _cancel(self) -> None:
        if self._after is not None:
            try:
                self.widget.after_cancel(self._after)
            except tk.TclError:
                pass
            self._after = None

    def show(self) -> None:
        self._after = None
        text = self.current_text()
        if not text or not self.widget.winfo_exists():
            return
        if self._tip is None:  # built once and reused, so hovering never leaves Tk garbage behind
            self._tip = tk.Toplevel(self.widget)
            self._tip.withdraw()
            self._tip.overrideredirect(True)
            self._label = tk.Label(self._tip, justify="left", wraplength=380, bg="#1f2328", fg="#e6e6e6",
                                   relief="solid", borderwidth=1, padx=8, pady=5, font=("TkDefaultFont", 10))
            self._label.pack()
        self._label.configure(text=text)
        self._tip.update_idletasks()
        self._tip.geometry(self._position(self._tip.winfo_reqwidth(), self._tip.winfo_reqheight()))
        self._tip.deiconify()
        self._tip.lift()

    def _position(self, width: int, height: int) -> str:
        """Where a tip of width x height px goes: below and right of the pointer, moved left of it or above it
        where it would run off the screen's right or bottom edge."""
        px, py = self.widget.winfo_pointerx(), self.widget.winfo_pointery()
        screen_w, screen_h = self.widget.winfo_screenwidth(), self.widget.winfo_screenheight()
        x = min(px + 14, screen_w - width - 4)
        y = py + 18 if py + 18 + height <= screen_h - 4 else py - height - 8
        return f"+{max(0, x)}+{max(0, y)}"

    def hide(self, _event=None) -> None:
        self._cancel()
        if self._tip is not None:
            self._tip.withdraw()


def close_on_escape(toplevel: tk.Misc, close: Callable[[], None]) -> None:
    """Escape anywhere in `toplevel`, and its close box, both call `close()` (a dialog's cancel, a viewer's
    close): the one way every window the app opens is closed from the keyboard."""
    def on_escape(_event) -> str:
        close()
        return "break"
    toplevel.bind("<Escape>", on_escape, add="+")
    toplevel.protocol("WM_DELETE_WINDOW", close)


def bind_edit_keys(root: tk.Misc) -> None:
    """The usual desktop keys in every entry and text box of `root`'s Tk: Ctrl+A selects all (Tk's own binding
    moves the cursor to the line start, so typing then lands beside the old text), and Ctrl+O in a text box
    inserts nothing (Tk's inserts a line break), leaving Ctrl+O to the window."""
    def select_all(event) -> str:
        event.widget.event_generate("<<SelectAll>>")
        return "break"
    for widget_class in ("Entry", "Text"):
        for key in ("<Control-a>", "<Control-A>"):
            root.bind_class(widget_class, key, select_all)
    root.bind_class("Text", "<Control-o>", lambda _event: None)


# ---- field widgets: each has .var (the form traces it), show(value), get_raw(), set_error(reason) -----

class TextField(ctk.CTkEntry):
    def __init__(self, master, width: int = 240, **kw):
        self.var = tk.StringVar(master=master)
        super().__init__(master, width=width, textvariable=self.var, **kw)
        self._border = self.cget("border_color")

    def show(self, value: Any) -> None:
        self.var.set(format_value(value))

    def get_raw(self) -> str:
        return self.var.get()

    def set_error(self, reason: str | None) -> None:
        self.configure(border_color=ERROR if reason else self._border)


class NumberField(TextField):
    def __init__(self, master, width: int = 110, **kw):
        super().__init__(master, width=width, justify="right", **kw)


class SwitchField(ctk.CTkSwitch):
    def __init__(self, master, **kw):
        self.var = tk.BooleanVar(master=master)
        super().__init__(master, text="", variable=self.var, onvalue=True, offvalue=False, width=48, **kw)
        self._progress = self.cget("progress_color")

    def show(self, value: Any) -> None:
        self.var.set(bool(value))

    def get_raw(self) -> bool:
        return bool(self.var.get())

    def set_error(self, reason: str | None) -> None:
        self.configure(progress_color=ERROR if reason else self._progress,
                       button_color=ERROR if reason else ctk.ThemeManager.theme["CTkSwitch"]["button_color"])


class ChoiceField(ctk.CTkOptionMenu):
    def __init__(self, master, choices, width: int = 170, **kw):
        self.var = tk.StringVar(master=master, value=choices[0])
        super().__init__(master, values=list(choices), variable=self.var, width=width, dynamic_resizing=False,
                         **kw)
        self._fg, self._button = self.cget("fg_color"), self.cget("button_color")

    def show(self, value: Any) -> None:
        self.var.set(str(value))

    def get_raw(self) -> str:
        return self.var.get()

    def set_error(self, reason: str | None) -> None:
        self.configure(fg_color=ERROR if reason else self._fg, button_color=ERROR if reason else self._button)


class MultilineField(ctk.CTkTextbox):
    """Multi-line text (metadata kind "text"); mirrors its content into .var so the form can trace it."""

    def __init__(self, master, width: int = 320, **kw):
        self.var = tk.StringVar(master=master)
        super().__init__(master, width=width, height=72, border_width=2, wrap="word", **kw)
        self._border = self.cget("border_color")
        self.bind("<KeyRelease>", lambda _e: self._mirror())

    def _mirror(self) -> None:
        text = self.get("1.0", "end-1c")
        if text != self.var.get():
            self.var.set(text)

    def insert(self, index, text: str, tags=None):
        """CTkTextbox's insert, mirrored into .var; an int index counts characters, as an Entry's does."""
        super().insert(f"1.0+{index}c" if isinstance(index, int) else index, text, tags)
        self._mirror()

    def delete(self, index1, index2=None):
        """CTkTextbox's delete, mirrored into .var; an int index counts characters, as an Entry's does."""
        super().delete(*(f"1.0+{i}c" if isinstance(i, int) else i for i in (index1, index2) if i is not None))
        self._mirror()

    def show(self, value: Any) -> None:
        self.delete("1.0", "end")
        self.insert("1.0", format_value(value))

    def get_raw(self) -> str:
        return self.var.get()

    def set_error(self, reason: str | None) -> None:
        self.configure(border_color=ERROR if reason else self._border)


class PathField(ctk.CTkFrame):
    """A path entry with a Browse… button. `browse()` returns the chosen path, or None when cancelled."""

    def __init__(self, master, browse: Callable[[str], str | None], width: int = 250, **kw):
        super().__init__(master, fg_color="transparent", **kw)
        self.entry = TextField(self, width=width)
        self.entry.grid(row=0, column=0, sticky="ew")
        self.button = ctk.CTkButton(self, text="Browse…", width=76, command=self._browse)
        self.button.grid(row=0, column=1, padx=(6, 0))
        self.grid_columnconfigure(0, weight=1)
        self.var, self._ask = self.entry.var, browse

    def _browse(self) -> None:
        chosen = self._ask(self.var.get())
        if chosen:
            self.var.set(chosen)

    def show(self, value: Any) -> None:
        self.entry.show(value)

    def get_raw(self) -> str:
        return self.var.get()

    def set_error(self, reason: str | None) -> None:
        self.entry.set_error(reason)

    def bind(self, sequence=None, command=None, add=True):
        return self.entry.bind(sequence, command, add=add)


class LabelledField:
    """Label and widget, gridded into two columns of `parent`, and in red the reason for a bad value, which never
    moves another widget: it is placed (it takes no room in the grid) beside the widget, in two lines at most
    within the widget's row; below a widget that fills its row (`stretch`), in one line, in the row under it that
    is kept free for it. A reason cut to fit ends in "…"; the widget's tooltip has all of it."""

    REASON_GAP = 8  # px between a widget and the reason beside it
    REASON_MIN = 40  # px: with less room beside the widget only "⚠" is shown there (none without room for it)

    def __init__(self, parent, row: int, label: str, help_text: str, widget, stretch: bool = False):
        self.widget, self.help_text, self.reason, self.stretch = widget, help_text, None, stretch
        self.label = ctk.CTkLabel(parent, text=label, anchor="w")
        self.label.grid(row=row, column=0, sticky="w", padx=(12, 8), pady=(4, 0))
        widget.grid(row=row, column=1, sticky="ew" if stretch else "w", padx=(0, 12), pady=(4, 0))
        self._parent, self._row, self._error_label = parent, row, None
        self._font = ctk.CTkFont(size=11)
        self._keep_reason_row(stretch)
        Tooltip(self.label, help_text)
        Tooltip(widget, self.tooltip_text)

    def tooltip_text(self) -> str:
        return self.help_text + (f"\n\n⚠ {self.reason}" if self.reason else "")

    def _keep_reason_row(self, keep: bool) -> None:
        line = self._font.metrics("linespace") * ctk.ScalingTracker.get_widget_scaling(self.widget)
        self._parent.grid_rowconfigure(self._row + 1, minsize=round(line) if keep else 0)

    def set_visible(self, visible: bool) -> None:
        """Show or hide the whole row (a field that does not apply to the current choice)."""
        for part in (self.label, self.widget):
            part.grid() if visible else part.grid_remove()
        self._keep_reason_row(visible and self.stretch)
        self._show_reason()

    def set_error(self, reason: str | None) -> None:
        if reason == self.reason:
            return
        self.reason = reason
        self.widget.set_error(reason)
        if reason and self._error_label is None:
            self._error_label = ctk.CTkLabel(self._parent, text="", text_color=ERROR, anchor="w", justify="left",
                                             height=1, font=self._font)
            for changes in (self._parent, self.widget):  # the room there is, where the widget is
                changes.bind("<Configure>", lambda _e: self._show_reason(), add="+")
        self._show_reason()

    def _show_reason(self) -> None:
        """Place the reason (cut to the room there is now) beside or below the widget; or take it away."""
        label = self._error_label
        if label is None:
            return
        scaling = ctk.ScalingTracker.get_widget_scaling(self.widget)
        gap = round(self.REASON_GAP * scaling)
        room = (self._parent.winfo_width() - self.widget.winfo_x() - self.widget.winfo_width() - gap) / scaling - 12
        if not self.reason or not self.widget.winfo_manager() or (
                not self.stretch and room < self._font.measure("⚠")):
            label.place_forget()
            return
        if self.stretch:
            width = self.widget.winfo_width() / scaling
            reconfigure(label, text=fit_text(self._font, self.reason, width), wraplength=0)
            label.place(in_=self.widget, x=0, rely=1.0, anchor="nw")
            return
        text = fit_text(self._font, self.reason, room, lines=2) if room >= self.REASON_MIN else "⚠"
        reconfigure(label, text=text, wraplength=max(room, 1))
        label.place(in_=self.widget, relx=1.0, x=gap, rely=0.5, anchor="w")


class Group(ctk.CTkFrame):
    """A titled frame of related fields, as OneTrainer groups them. Fields go in rows 1, 3, 5, …"""

    def __init__(self, master, title: str, **kw):
        kw.setdefault("fg_color", GROUP_COLOUR)
        super().__init__(master, **kw)
        ctk.CTkLabel(self, text=title, font=ctk.CTkFont(size=14, weight="bold"), anchor="w").grid(
            row=0, column=0, columnspan=2, sticky="w", padx=12, pady=(8, 2))
        self.grid_columnconfigure(1, weight=1)
        self.next_row = 1

    def take_row(self) -> int:
        row = self.next_row
        self.next_row += 2  # the odd row below: a reason line's, under a field that fills its row
        return row

    def pad_bottom(self) -> None:
        ctk.CTkFrame(self, height=8, fg_color="transparent").grid(row=999, column=0)


class Tabview(ctk.CTkTabview):
    """CTkTabview whose set() hides the other tabs at once. CTk hides them 100 ms later, so two set() calls
    within 100 ms leave the second tab hidden (tests and Start switch tabs that fast)."""

    def set(self, name: str) -> None:
        if name not in self._tab_dict:
            raise ValueError(f"no tab named {name!r}")
        if name != self._current_name:
            self._tab_dict[self._current_name].grid_forget()
        self._current_name = name
        self._segmented_button.set(name)
        self._set_grid_current_tab()


class RootImage(ctk.CTkImage):
    """A CTkImage (one PIL image for both appearance modes) whose Tk photo images belong to the Tk root of
    `master`. CTkImage makes them for tkinter's default root, the first window of the process: a second window
    (a test's, or one opened after the first closed) then fails with 'image "pyimageN" doesn't exist'."""

    def __init__(self, master, image, size: tuple[int, int]):
        super().__init__(light_image=image, dark_image=image, size=size)
        self.master = master
        self._photos: dict[tuple[int, int], Any] = {}  # scaled size (px) -> ImageTk.PhotoImage

    def create_scaled_photo_image(self, widget_scaling: float, appearance_mode: str):
        from PIL import ImageTk
        size = self._get_scaled_size(widget_scaling)
        if size not in self._photos:
            self._photos[size] = ImageTk.PhotoImage(self.cget("light_image").resize(size), master=self.master)
        return self._photos[size]


def load_thumbnail(path: str | Path, size: int, master) -> RootImage | None:
    """An image file scaled to fit `size` px, as an image for the widgets of `master`'s window; None when it
    cannot be read."""
    from trainer.data.images import open_image  # photos up to the trainer's limit, not Pillow's ~179 MP
    try:
        with open_image(path) as im:
            im.draft("RGB", (size, size))
            im = im.convert("RGB")
            im.thumbnail((size, size))
    except (OSError, ValueError):  # ImageTooLarge is a ValueError
        return None
    return RootImage(master, im, im.size)


def show_image_window(parent, path: str | Path, title: str, caption: str = ""):
    """An image in the image viewer (app.sample_viewer: scaled to the window, `title` above it, then `caption`,
    its path selectable below; Escape closes it); returns the viewer (its `close()` closes it), or None when the
    file is gone."""
    if not Path(path).exists():
        return None
    from app.sample_viewer import ImageViewer, ViewerItem  # it builds on these widgets
    item = ViewerItem(str(path), 0, 0, title, caption)
    return ImageViewer(parent, lambda: [item], item, keys="Esc closes")
