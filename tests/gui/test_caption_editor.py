"""The caption editor, opened from the concepts tab: browse, edit and save captions; find and replace in all."""
from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from gui_helpers import open_caption_editor

CAPTIONS = {"a.png": "a red circle, reddish glow", "b.png": "a red square", "c.png": "a blue square",
            "d.png": None}


@pytest.fixture
def editor(window, tmp_path):
    """The caption editor of a concept of four images (d.png without a caption), opened from the concepts tab."""
    folder = tmp_path / "concept"
    folder.mkdir()
    for name, caption in CAPTIONS.items():
        Image.new("RGB", (40, 30), "red" if "red" in (caption or "") else "blue").save(folder / name)
        if caption is not None:
            (folder / name).with_suffix(".txt").write_text(caption + "\n")
    with open_caption_editor(window, folder) as editor:
        yield editor


def caption(editor, name: str) -> str:
    return (editor.folder / name).with_suffix(".txt").read_text()


def test_browse_edit_and_save_a_caption(editor, window):
    assert [p.name for p in editor.images] == list(CAPTIONS)
    assert editor.listbox.size() == 4 and editor.index == 0
    assert editor.text() == "a red circle, reddish glow"
    assert editor.prev_button.cget("state") == "disabled"
    editor.set_text("a red circle on white")
    assert "not saved" in editor.state_label.cget("text")
    editor.save_button.invoke()
    assert caption(editor, "a.png") == "a red circle on white\n"
    assert editor.state_label.cget("text") == "Saved a.txt"

    editor.next()
    assert editor.index == 1 and editor.text() == "a red square"
    editor.set_text("a crimson square")
    editor.next()  # switching image saves the edited caption
    assert caption(editor, "b.png") == "a crimson square\n"
    editor.select(3)
    assert editor.text() == "" and "no caption file yet" in editor.state_label.cget("text")
    assert editor.next_button.cget("state") == "disabled"
    editor.set_text("a blue circle")
    editor.save()
    assert caption(editor, "d.png") == "a blue circle\n"
    editor.listbox.selection_clear(0, "end")
    editor.listbox.selection_set(2)
    editor.listbox.event_generate("<<ListboxSelect>>")
    window.update()
    assert editor.index == 2 and editor.text() == "a blue square"


def test_find_and_replace_changes_the_right_files_and_counts_them(editor, window):
    editor.find_entry.insert(0, "red")
    editor.replace_entry.insert(0, "green")
    assert editor.replace_all() == 2
    assert editor.replace_result.cget("text") == "Changed 2 of 4 caption files."
    assert caption(editor, "a.png") == "a green circle, reddish glow\n"  # whole words: reddish stays
    assert caption(editor, "b.png") == "a green square\n"
    assert caption(editor, "c.png") == "a blue square\n"
    assert not (editor.folder / "d.txt").exists()
    assert editor.text() == "a green circle, reddish glow"  # the box shows the file as it is now
    assert window.dialogs.asked[-1][1] == "Replace in captions" and "2 caption files" in window.dialogs.asked[-1][2]

    editor.find_entry.delete(0, "end")
    editor.find_entry.insert(0, "purple")
    assert editor.replace_all() == 0
    assert "No caption contains" in editor.replace_result.cget("text")

    window.dialogs.confirm_answer = False
    editor.find_entry.delete(0, "end")
    editor.find_entry.insert(0, "square")
    assert editor.replace_all() == 0
    assert caption(editor, "c.png") == "a blue square\n"


def test_closing_saves_an_edit_and_refreshes_the_concepts_tab(editor, window, monkeypatch):
    concepts = window.tabs["concepts"]
    rescans = []
    monkeypatch.setattr(editor, "on_changed", lambda: rescans.append(True))
    editor.set_text("a new caption")
    editor.close()
    assert caption(editor, "a.png") == "a new caption\n"
    assert rescans == [True] and not editor.winfo_exists()
    assert Path(concepts.concepts[0].path) == editor.folder



def test_closing_the_window_saves_an_open_editors_caption(editor, window):
    """close_now() calls each tab's closing(): the concepts tab closes its caption editor, saving an edit."""
    editor.set_text("a red circle, saved on the way out")
    window.tabs["concepts"].closing()
    assert not editor.winfo_exists()
    assert caption(editor, "a.png") == "a red circle, saved on the way out\n"


def test_the_file_list_marks_captions_in_the_apps_font(editor, window):
    """✓ for an image with a caption, ○ (amber) for one without, ⚠ (red) for a caption file that cannot be
    read; the mark follows a save; the list's font is the one every label of the app uses."""
    import customtkinter as ctk
    from tkinter import font as tkfont

    from app.widgets import ERROR, WARNING
    (editor.folder / "c.txt").write_bytes(b"red hat\x00\x00\x00\xff")  # undecodable: read when selected
    lines = list(editor.listbox.get(0, "end"))
    assert lines == ["✓  a.png", "✓  b.png", "✓  c.png", "○  d.png"]
    assert editor.listbox.itemcget(3, "fg") == WARNING and editor.listbox.itemcget(0, "fg") != WARNING
    editor.select(2)
    assert editor.listbox.get(2) == "⚠  c.png" and editor.listbox.itemcget(2, "fg") == ERROR
    editor.select(3)
    editor.set_text("a blue circle")
    editor.save()
    assert editor.listbox.get(3) == "✓  d.png" and editor.listbox.curselection() == (3,)
    shown = tkfont.Font(root=editor, font=editor.listbox.cget("font")).actual()
    app = ctk.CTkFont().actual()
    assert (shown["family"], abs(shown["size"])) == (app["family"], abs(app["size"]))


def test_escape_closes_the_editor_after_saving_an_edit(editor, window):
    rescans = []
    editor.on_changed = lambda: rescans.append(True)
    editor.set_text("a red circle, kept on Escape")
    editor.caption.focus_force()
    window.update()
    editor.caption._textbox.event_generate("<Escape>")
    window.update()
    assert not editor.winfo_exists() and rescans == [True]
    assert caption(editor, "a.png") == "a red circle, kept on Escape\n"
