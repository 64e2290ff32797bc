"""Helpers shared by the GUI tests: type into an entry, turn the Tk loop until a condition holds, open the caption
editor of a folder from the concepts tab."""
from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator


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
