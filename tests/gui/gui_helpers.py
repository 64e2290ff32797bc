"""Helpers shared by the GUI tests: type into an entry, turn the Tk loop until a condition holds, open the caption
editor of a folder from the concepts tab, take a screenshot and look at what a widget shows on it."""
from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import numpy as np


def type_into(widget, text: str) -> None:
    """Replace the text of `widget` (an Entry, or a widget with an `.entry`) with `text`, as a user typing it."""
    entry = getattr(widget, "entry", widget)
    entry.delete(0, "end")
    entry.insert(0, text)


def wait_for(window, condition: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
    """Turn the Tk loop (after() callbacks, queue drains) until `condition()` holds.

    Raises AssertionError naming `what` when it does not hold within `timeout_s` seconds.
    """
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        window.update()
        if condition():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def settled(tab, folder) -> bool:
    """The concepts tab's panel shows finished statistics of `folder` (not a stale or pending result)."""
    shown = tab.stats_panel.shown
    return (tab._stats_after is None and not tab.stats_panel.pending() and shown is not None
            and shown["path"] == str(folder))


@contextmanager
def open_caption_editor(window, folder: Path) -> Iterator:
    """Point the first concept at `folder`, select it in the concepts tab and open its caption editor with the
    tab's Captions button; yields the editor and closes it afterwards if it is still open."""
    concepts = window.tabs["concepts"]
    window.preset.concepts[0].path = str(folder)
    window.form.refresh()
    concepts.select(0)
    window.tabview.set("concepts")
    window.update()
    assert concepts.captions_button.winfo_ismapped()
    concepts.captions_button.invoke()
    editor = concepts.caption_editor
    window.update()
    try:
        yield editor
    finally:
        if editor.winfo_exists():
            editor.close()


class Shot:
    """A screenshot of a window (`image`, a PIL image of the window's area) and what its widgets show on it."""

    def __init__(self, window, image):
        self.window, self.image = window, image

    def region(self, widget) -> np.ndarray:
        """The pixels `widget` covers (height x width x 3, uint8), cut to the window's area. Fails the test when
        the widget is not shown (not viewable) or lies outside the window."""
        assert widget.winfo_viewable(), f"{widget} is not shown"
        x, y = widget.winfo_rootx() - self.window.winfo_rootx(), widget.winfo_rooty() - self.window.winfo_rooty()
        box = (max(0, x), max(0, y), min(self.image.width, x + widget.winfo_width()),
               min(self.image.height, y + widget.winfo_height()))
        assert box[0] < box[2] and box[1] < box[3], f"{widget} lies outside the window"
        return np.asarray(self.image.crop(box).convert("RGB"))

    @staticmethod
    def inside(widget, area) -> bool:
        """Whether `widget` is shown (viewable) and lies wholly within `area` (not scrolled out of its view)."""
        x, y, ax, ay = widget.winfo_rootx(), widget.winfo_rooty(), area.winfo_rootx(), area.winfo_rooty()
        return (bool(widget.winfo_viewable()) and ax <= x and ay <= y and x + widget.winfo_width() <= ax +
                area.winfo_width() and y + widget.winfo_height() <= ay + area.winfo_height())

    @staticmethod
    def where(widget) -> str:
        """Where `widget` lies on the screen and whether it is shown, for a failure message."""
        return (f"{widget.winfo_rootx()},{widget.winfo_rooty()} {widget.winfo_width()}x{widget.winfo_height()} "
                f"{'shown' if widget.winfo_viewable() else 'not shown'}")

    def colours(self, widget) -> int:
        """How many different colours `widget` shows (1: a flat area, nothing drawn on it)."""
        return len(np.unique(self.region(widget).reshape(-1, 3), axis=0))

    def count(self, widget, colour: str, tolerance: int = 40) -> int:
        """How many of `widget`'s pixels are `colour` ("#rrggbb" or a name as PIL reads it, the way the test
        images were drawn), give or take `tolerance` in each channel."""
        from PIL import ImageColor
        rgb = np.array(ImageColor.getrgb(colour)[:3])
        return int((np.abs(self.region(widget).astype(int) - rgb).max(axis=-1) <= tolerance).sum())


def _layout(widget) -> list:
    """Where `widget` and everything in it lie on the screen now (root x, y, width, height, shown)."""
    out, todo = [], [widget]
    while todo:
        w = todo.pop()
        out.append((str(w), w.winfo_rootx(), w.winfo_rooty(), w.winfo_width(), w.winfo_height(), w.winfo_ismapped()))
        todo.extend(w.winfo_children())
    return out


def settle(window, pump: Callable, timeout_s: float = 5.0) -> None:
    """Turn the Tk loop until the window's layout stops moving (the same in two looks 0.1 s apart), at most
    `timeout_s`: on a loaded machine a relayout after a preset load can outlast a fixed wait."""
    end, before = time.monotonic() + timeout_s, _layout(window)
    while time.monotonic() < end:
        pump(window, 0.1)
        now = _layout(window)
        if now == before:
            return
        before = now


def screenshot(window, pump: Callable, folder: Path, name: str) -> Shot:
    """What `window` (a toplevel) shows on the screen once its Tk loop ran a while (drains, redraws), with the
    pointer moved to its corner first so that no tooltip covers it; saved as folder/NAME.png."""
    from PIL import ImageGrab
    window.event_generate("<Motion>", warp=True, x=4, y=4)
    pump(window, 0.4)
    settle(window, pump)
    x, y = window.winfo_rootx(), window.winfo_rooty()
    image = ImageGrab.grab(bbox=(x, y, x + window.winfo_width(), y + window.winfo_height()))
    folder.mkdir(parents=True, exist_ok=True)
    image.save(folder / f"{name}.png")
    return Shot(window, image)
