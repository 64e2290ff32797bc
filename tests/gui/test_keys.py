"""The usual desktop keys: Ctrl+A selects a field's text (typing then replaces it), Ctrl+S saves the preset,
Ctrl+Shift+S saves it as, Ctrl+O loads one, and Escape closes the window's questions."""
from __future__ import annotations

from gui_helpers import screenshot

from app.dialogs import ChoiceDialog, Dialogs
from trainer.config import load_preset, save_preset


def focus(window, widget) -> None:
    widget.focus_force()
    window.update()


def type_keys(widget, text: str) -> None:
    """Type `text` key by key into the focused `widget` (as the keyboard would)."""
    names = {".": "period", "-": "minus", " ": "space"}
    for char in text:
        widget.event_generate(f"<KeyPress-{names.get(char, char)}>")


def test_ctrl_a_selects_the_whole_entry_and_typing_replaces_it(window):
    window.tabview.set("training")
    field = window.form.widget_for("training.learning_rate")
    field.delete(0, "end")
    field.insert(0, "0.001")
    window.update()
    focus(window, field._entry)
    field._entry.icursor(2)
    field._entry.event_generate("<Control-a>")
    assert field._entry.selection_present() and field.selection_get() == "0.001"
    type_keys(field._entry, "0.0005")
    window.update()
    assert field.get() == "0.0005" and window.preset.training.learning_rate == 0.0005


def test_ctrl_a_selects_the_whole_text_box_and_ctrl_o_is_the_windows(window):
    window.tabview.set("tools")
    window.update()
    box = window.tabs["tools"].spec_form.widget_for("prompts")  # a multi-line field
    box.show("a red circle\non white")
    focus(window, box._textbox)
    box._textbox.event_generate("<Control-a>")
    assert box._textbox.get("sel.first", "sel.last") == box._textbox.get("1.0", "end")
    box._textbox.event_generate("<Control-o>")  # Tk's own binding would insert a line break
    window.update()
    assert box.get("1.0", "end-1c") == "a red circle\non white"
    assert ("open",) in window.dialogs.asked  # the window's Load…


def test_ctrl_s_saves_ctrl_shift_s_saves_as_and_ctrl_o_loads(window, tmp_path):
    entry = window.form.widget_for("training.epochs")._entry
    window.dialogs.save_path = str(tmp_path / "first.json")
    window.preset_path = None
    entry.delete(0, "end")
    entry.insert(0, "7")
    focus(window, entry)
    entry.event_generate("<Control-s>")  # never saved: asks where
    window.update()
    assert ("save",) in window.dialogs.asked and load_preset(tmp_path / "first.json").training.epochs == 7
    assert window.preset_path == tmp_path / "first.json" and not window.dirty
    entry.delete(0, "end")
    entry.insert(0, "8")
    window.dialogs.asked.clear()
    entry.event_generate("<Control-s>")  # saved before: over the same file, without asking
    window.update()
    assert window.dialogs.asked == [] and load_preset(tmp_path / "first.json").training.epochs == 8
    window.dialogs.save_path = str(tmp_path / "second.json")
    entry.event_generate("<Control-Shift-S>")
    window.update()
    assert window.dialogs.asked == [("save",)] and (tmp_path / "second.json").exists()
    other = load_preset(tmp_path / "first.json")
    other.training.epochs = 41
    save_preset(other, tmp_path / "other.json")
    window.dialogs.open_path = str(tmp_path / "other.json")
    entry.event_generate("<Control-o>")
    window.update()
    assert window.dialogs.asked[-1] == ("open",) and window.preset.training.epochs == 41


def test_escape_closes_the_confirmation_and_answers_no(window, pump, screenshots):
    opened = []

    def press_escape():
        dialog = next(w for w in window.winfo_children() if isinstance(w, ChoiceDialog) and w.winfo_exists())
        opened.append(dialog)
        shot = screenshot(dialog, pump, screenshots, "confirm_dialog")
        assert shot.colours(dialog.buttons["Yes"]) > 4 and shot.colours(dialog.message) > 4
        dialog.focus_force()
        dialog.update()
        dialog.buttons["Yes"].event_generate("<Escape>")
    window.after(200, press_escape)
    assert Dialogs(window).confirm("Unsaved changes", "Discard them?") is False
    assert opened and not opened[0].winfo_exists()
    assert "Yes" in opened[0].buttons and opened[0].cancel_button.cget("text") == "No"
    window.after(200, lambda: next(w for w in window.winfo_children() if isinstance(w, ChoiceDialog)
                                   and w.winfo_exists()).buttons["Yes"].invoke())
    assert Dialogs(window).confirm("Unsaved changes", "Discard them?") is True
