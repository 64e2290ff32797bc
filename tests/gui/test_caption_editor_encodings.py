"""The caption editor reads captions in any common encoding, saves them in their own encoding, and never
rewrites a caption file it cannot decode."""
from __future__ import annotations

import codecs

import pytest
from PIL import Image

from gui_helpers import open_caption_editor

LEGACY = "café, naïve, crème brûlée, a red hat"
BROKEN = b"red hat\x00\x00\x00\xff"


@pytest.fixture
def editor(window, tmp_path):
    """The caption editor over a.png (cp1252, CRLF), b.png (UTF-16 LE with BOM) and c.png (undecodable)."""
    folder = tmp_path / "concept"
    folder.mkdir()
    for name in "abc":
        Image.new("RGB", (40, 30), "red").save(folder / f"{name}.png")
    (folder / "a.txt").write_bytes(f"{LEGACY}\r\nsecond line\r\n".encode("cp1252"))
    (folder / "b.txt").write_bytes(codecs.BOM_UTF16_LE + "a red scarf, café".encode("utf-16-le"))
    (folder / "c.txt").write_bytes(BROKEN)
    with open_caption_editor(window, folder) as editor:
        yield editor


def raw(editor, name: str) -> bytes:
    return (editor.folder / name).read_bytes()


def test_captions_show_as_written_and_save_in_their_own_encoding(editor):
    assert editor.text() == f"{LEGACY}\nsecond line"
    editor.set_text(f"{LEGACY}, déjà vu\nsecond line")
    assert editor.save()
    assert raw(editor, "a.txt") == f"{LEGACY}, déjà vu\r\nsecond line\r\n".encode("cp1252")
    assert editor.state_label.cget("text") == "Saved a.txt"
    editor.next()
    assert editor.text() == "a red scarf, café"
    editor.set_text("a red scarf, café, 赤い")
    editor.next()  # switching saves: UTF-16 keeps its BOM
    assert raw(editor, "b.txt") == codecs.BOM_UTF16_LE + "a red scarf, café, 赤い\n".encode("utf-16-le")
    editor.select(0)
    editor.set_text("café → crème")  # cp1252 has no arrow: written as UTF-8, and the editor says so
    assert editor.save()
    assert editor.state_label.cget("text").startswith("Saved a.txt (written as UTF-8: its cp1252 encoding")
    assert raw(editor, "a.txt") == "café → crème\r\n".encode("utf-8")


def test_an_undecodable_caption_is_named_and_never_rewritten(editor):
    editor.select(2)
    state = editor.state_label.cget("text")
    assert state.startswith("c.txt: cannot tell its text encoding") and "UTF-8" in state
    assert editor.text() == "" and editor.caption.cget("state") == "disabled"
    editor.set_text("typed over it")  # the box takes no text
    assert not editor.edited
    assert not editor.save() and "Not saved" in editor.state_label.cget("text")
    editor.select(0)
    assert editor.caption.cget("state") == "normal" and editor.text().startswith("café")
    assert raw(editor, "c.txt") == BROKEN


def test_find_and_replace_reports_files_it_left_alone(editor):
    editor.find_entry.insert(0, "red")
    editor.replace_entry.insert(0, "green")
    assert editor.replace_all() == 2
    assert editor.replace_result.cget("text") == "Changed 2 of 3 caption files."
    details = editor.replace_details.cget("text")
    assert details.startswith("Left alone (cannot be read): c.txt (cannot tell its text encoding")
    editor.update()
    assert editor.replace_details.winfo_ismapped()
    assert raw(editor, "a.txt") == f"{LEGACY.replace('red', 'green')}\r\nsecond line\r\n".encode("cp1252")
    assert raw(editor, "b.txt") == codecs.BOM_UTF16_LE + "a green scarf, café\n".encode("utf-16-le")
    assert raw(editor, "c.txt") == BROKEN
    editor.find_entry.delete(0, "end")
    editor.find_entry.insert(0, "green")
    editor.replace_entry.delete(0, "end")
    editor.replace_entry.insert(0, "→")  # cp1252 has no arrow: a.txt becomes UTF-8, and the editor says so
    assert editor.replace_all() == 2
    assert editor.replace_details.cget("text").startswith("a.txt (written as UTF-8: its cp1252 encoding cannot hold")
    assert raw(editor, "a.txt").decode("utf-8").startswith("café")
    editor.find_entry.delete(0, "end")
    editor.find_entry.insert(0, "purple")
    assert editor.replace_all() == 0 and "c.txt" in editor.replace_details.cget("text")
    (editor.folder / "c.txt").unlink()
    editor.replace_all()
    editor.update()
    assert not editor.replace_details.winfo_ismapped()  # nothing to say: the line is gone
