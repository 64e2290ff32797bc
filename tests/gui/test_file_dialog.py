"""The themed file and folder picker: it lists and filters, moves about (Up, into, a typed path), survives folders it
cannot read and folders with many files, answers with Enter/OK and cancels with Escape, shows a folder's images, and
is what the window's Load, Save as and Browse… buttons open."""
from __future__ import annotations

import os
from pathlib import Path

from gui_helpers import screenshot, wait_for
from PIL import Image

from app.dialogs import PRESET_TYPES, Dialogs
from app.file_dialog import MAX_ENTRIES, MAX_THUMBS, FileDialog, theme_colour


def make_tree(root: Path) -> Path:
    """root/{Beta/, alpha/, .hidden/, b.json, A.json, notes.txt, .secret.json}."""
    for folder in ("Beta", "alpha", ".hidden"):
        (root / folder).mkdir(parents=True)
    for name in ("b.json", "A.json", "notes.txt", ".secret.json"):
        (root / name).write_text("{}")
    return root


def images(folder: Path, count: int, colour: str = "red") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.new("RGB", (60, 40), colour).save(folder / f"img_{i:03d}.png")
    return folder


def listed(dialog: FileDialog) -> list[str]:
    return list(dialog.listbox.get(0, "end"))


def press(dialog, widget, key: str) -> None:
    widget.focus_force()
    dialog.update()
    widget.event_generate(key)
    dialog.update()


def test_lists_folders_first_filters_by_type_and_hides_dot_files(window, tmp_path, pump, screenshots):
    folder = make_tree(tmp_path / "tree")
    dialog = FileDialog(window, "Load preset", "open", folder, PRESET_TYPES)
    window.update()
    assert listed(dialog) == ["alpha/", "Beta/", "A.json", "b.json"]
    dialog.select("A.json")
    shot = screenshot(dialog, pump, screenshots, "file_dialog_open")
    assert shot.count(dialog.listbox, theme_colour("CTkButton", "fg_color"), 8) > 200, "no selected row drawn"
    assert shot.count(dialog.ok_button, theme_colour("CTkButton", "fg_color"), 8) > 500
    assert dialog.location.get() == str(folder)
    dialog.filter_menu.set(dialog.filter_menu.cget("values")[1])  # All files
    dialog.navigate(dialog.folder)
    assert listed(dialog) == ["alpha/", "Beta/", "A.json", "b.json", "notes.txt"]
    assert dialog.listbox.cget("bg") == theme_colour("CTkEntry", "fg_color")  # the theme, not Tk's grey
    dialog.answer(None)


def test_moves_into_up_and_to_a_typed_path(window, tmp_path):
    folder = make_tree(tmp_path / "tree")
    (folder / "alpha" / "deep").mkdir()
    dialog = FileDialog(window, "Load preset", "open", folder, PRESET_TYPES)
    window.update()
    dialog.select("alpha")
    dialog.open_selected()
    assert dialog.folder == folder / "alpha" and listed(dialog) == ["deep/"]
    dialog.up_button.invoke()
    assert dialog.folder == folder and dialog.selection() == ("alpha", True)  # the folder just left
    dialog.location.delete(0, "end")
    dialog.location.insert(0, str(folder / "alpha" / "deep"))
    press(dialog, dialog.location, "<Return>")
    assert dialog.folder == folder / "alpha" / "deep" and dialog.winfo_exists()
    dialog.location.delete(0, "end")
    dialog.location.insert(0, "../..")  # relative to the folder shown
    press(dialog, dialog.location, "<Return>")
    assert dialog.folder == folder
    dialog.location.delete(0, "end")
    dialog.location.insert(0, str(folder / "b.json"))
    press(dialog, dialog.location, "<Return>")
    assert dialog.result == str(folder / "b.json") and not dialog.winfo_exists()


def test_a_folder_it_cannot_read_is_said_and_the_list_stays(window, tmp_path, monkeypatch):
    folder = make_tree(tmp_path / "tree")
    locked = folder / "Beta"
    scandir = os.scandir

    def refusing(path="."):
        if Path(path) == locked:
            raise PermissionError(13, "Permission denied")
        return scandir(path)
    monkeypatch.setattr(os, "scandir", refusing)
    dialog = FileDialog(window, "Load preset", "open", folder, PRESET_TYPES)
    window.update()
    dialog.select("Beta")
    dialog.open_selected()
    assert dialog.folder == folder and "alpha/" in listed(dialog)
    assert "Cannot open" in dialog.status.cget("text") and "Permission denied" in dialog.status.cget("text")
    gone = FileDialog(window, "Load preset", "open", tmp_path / "no such folder", PRESET_TYPES)
    window.update()
    assert gone.folder == Path.home()  # a start folder that is gone: home instead
    gone.answer(None)
    dialog.answer(None)


def test_a_folder_with_many_files_lists_the_first_and_says_so(window, tmp_path):
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(MAX_ENTRIES + 20):
        (folder / f"f{i:05d}.json").touch()
    dialog = FileDialog(window, "Load preset", "open", folder, PRESET_TYPES)
    window.update()
    assert dialog.listbox.size() == MAX_ENTRIES
    assert f"first {MAX_ENTRIES} of {MAX_ENTRIES + 20}" in dialog.status.cget("text")
    dialog.name_entry.insert(0, f"f{MAX_ENTRIES + 10:05d}.json")  # one not listed, typed
    dialog.ok_button.invoke()
    assert dialog.result == str(folder / f"f{MAX_ENTRIES + 10:05d}.json")


def test_enter_accepts_escape_cancels_and_a_missing_file_is_said(window, tmp_path):
    folder = make_tree(tmp_path / "tree")
    dialog = FileDialog(window, "Load preset", "open", folder, PRESET_TYPES)
    window.update()
    dialog.name_entry.insert(0, "nope.json")
    press(dialog, dialog.name_entry, "<Return>")
    assert dialog.winfo_exists() and "No file nope.json" in dialog.status.cget("text")
    dialog.select("A.json")
    assert dialog.name_entry.get() == "A.json"
    press(dialog, dialog.listbox, "<Return>")
    assert dialog.result == str(folder / "A.json") and not dialog.winfo_exists()
    dialog = FileDialog(window, "Load preset", "open", folder, PRESET_TYPES)
    window.update()
    dialog.select("b.json")
    press(dialog, dialog.listbox, "<Escape>")
    assert dialog.result is None and not dialog.winfo_exists()


def test_save_adds_the_extension_and_asks_before_replacing(window, tmp_path):
    folder = make_tree(tmp_path / "tree")
    dialog = FileDialog(window, "Save preset as", "save", folder, PRESET_TYPES, ".json", name="mine")
    window.update()
    dialog.ok_button.invoke()
    assert dialog.result == str(folder / "mine.json")
    dialog = FileDialog(window, "Save preset as", "save", folder, PRESET_TYPES, ".json")
    window.update()
    dialog.select("b.json")
    dialog.ok_button.invoke()
    assert dialog.winfo_exists() and "b.json exists" in dialog.status.cget("text")
    dialog.ok_button.invoke()
    assert dialog.result == str(folder / "b.json")


def test_a_folder_picker_shows_the_images_of_the_folder_it_would_pick(window, tmp_path, pump, screenshots):
    root = images(tmp_path / "concepts", MAX_THUMBS + 6, "blue")
    images(root / "cats", 3, "orange")
    (root / "cats" / "broken.png").write_text("not an image")
    (root / "empty").mkdir()
    dialog = FileDialog(window, "Choose a folder", "dir", root)
    wait_for(window, lambda: len(dialog.thumbnails) == MAX_THUMBS, "the first thumbnails")
    assert f"{MAX_THUMBS + 6} images (the first {MAX_THUMBS} shown)" in dialog.preview_title.cget("text")
    assert listed(dialog) == ["cats/", "empty/"]  # a folder picker lists folders; their images show
    dialog.select("cats")
    wait_for(window, lambda: len(dialog.thumbnails) == 4, "the cats' thumbnails")
    assert "cats: 4 images" in dialog.preview_title.cget("text")  # broken.png shows as an empty square
    assert str(root / "cats") in dialog.chosen_label.cget("text")
    shot = screenshot(dialog, pump, screenshots, "file_dialog_folder")
    assert shot.count(dialog.thumbnails[1], "orange", 40) > 400, "the cats' thumbnails are not drawn"
    assert shot.count(dialog.listbox, theme_colour("CTkEntry", "fg_color"), 8) > 1000, "the list is not themed"
    dialog.select("empty")
    wait_for(window, lambda: "no images" in dialog.preview_title.cget("text"), "the empty folder's title")
    assert dialog.thumbnails == []
    dialog.select("cats")
    press(dialog, dialog.listbox, "<Return>")
    assert dialog.result == str(root / "cats")


def test_a_folder_picker_takes_a_new_folder_typed_in(window, tmp_path):
    dialog = FileDialog(window, "Choose a folder", "dir", tmp_path)
    window.update()
    dialog.location.delete(0, "end")
    dialog.location.insert(0, "workspace")
    press(dialog, dialog.location, "<Return>")
    assert dialog.result == str(tmp_path / "workspace")


def test_the_window_buttons_open_the_themed_dialog(window, tmp_path):
    """Dialogs (what Load…, Save as… and every Browse… ask) opens a FileDialog in the field's folder and returns
    what it answers; a diffusers folder's model_index.json answers the folder."""
    folder = make_tree(tmp_path / "tree")
    (folder / "alpha" / "model_index.json").write_text("{}")
    dialogs, seen = Dialogs(window), []

    def answer_with(pick):
        def answer():
            dialog = next(w for w in window.winfo_children() if isinstance(w, FileDialog) and w.winfo_exists())
            seen.append((dialog.mode, dialog.folder, dialog.title()))
            pick(dialog)
        window.after(200, answer)

    def choose(name):
        return lambda dialog: (dialog.select(name), dialog.ok_button.invoke())

    answer_with(choose("alpha"))
    assert dialogs.browse("dir", "path", str(folder)) == str(folder / "alpha")
    answer_with(choose("model_index.json"))
    assert dialogs.browse("path", "base_model", str(folder / "alpha" / "x.safetensors")) == str(folder / "alpha")
    answer_with(choose("model_index.json"))
    assert dialogs.ask_open_preset() == str(folder / "alpha" / "model_index.json")
    answer_with(lambda dialog: dialog.answer(None))
    assert dialogs.ask_save_preset() is None
    assert [s[0] for s in seen] == ["dir", "open", "open", "save"]
    assert seen[0][1] == folder and seen[1][1] == folder / "alpha"
    assert seen[2][1] == folder / "alpha"  # Load starts where the last dialog ended
