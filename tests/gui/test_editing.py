"""Editing widgets changes the preset; bad values are marked and block Start; Load and Save round-trip."""
from __future__ import annotations

import json
import time

from app.widgets import ERROR
from trainer.config import load_preset, preset_to_dict, preset_to_json, save_preset
from trainer.fields import ConfigError


def type_into(widget, text: str) -> None:
    entry = getattr(widget, "entry", widget)
    entry.delete(0, "end")
    entry.insert(0, text)


def test_editing_an_entry_switch_and_menu_changes_the_preset(window):
    form = window.form
    text_encoder = window.preset.training.train_text_encoder
    type_into(form.widget_for("training.learning_rate"), "2e-6")
    form.widget_for("training.train_text_encoder").toggle()
    form.widget_for("training.lr_scheduler").set("cosine")
    type_into(form.widget_for("general.workspace_dir"), "somewhere/else")
    window.update()
    assert window.preset.training.learning_rate == 2e-6
    assert window.preset.training.train_text_encoder is (not text_encoder)
    assert window.preset.training.lr_scheduler == "cosine"
    assert window.preset.general.workspace_dir == "somewhere/else"
    assert window.dirty and "unsaved" in window.dirty_label.cget("text")


def test_text_in_a_number_field_is_marked_and_disables_start(window):
    before = window.preset.training.learning_rate
    field = window.form.widget_for("training.learning_rate")
    type_into(field, "fast please")
    window.update()
    assert window.preset.training.learning_rate == before  # the preset keeps its last good value
    assert field.cget("border_color") == ERROR
    binding = window.form.bindings_for("training.learning_rate")[0]
    assert "expected a number" in binding.labelled._error_label.cget("text")
    assert binding.labelled._error_label.winfo_ismapped()
    assert window.bottom.start_button.cget("state") == "disabled"
    assert "Learning rate" in window.bottom.problem.cget("text")
    assert "expected a number" in window.bottom.problem.cget("text")
    assert window.start() is False
    type_into(field, "1e-4")
    window.update()
    assert window.preset.training.learning_rate == 1e-4
    assert field.cget("border_color") != ERROR
    assert not binding.labelled._error_label.winfo_ismapped()
    assert window.bottom.start_button.cget("state") == "normal"
    assert window.bottom.problem.cget("text") == ""


def test_out_of_range_and_bad_choice_values_are_marked(window):
    type_into(window.form.widget_for("training.ema_decay"), "1.5")
    window.update()
    binding = window.form.bindings_for("training.ema_decay")[0]
    assert "above the maximum" in binding.reason
    assert window.bottom.start_button.cget("state") == "disabled"
    type_into(window.form.widget_for("training.resolution"), "500")
    window.update()
    assert "multiple of 8" in window.form.bindings_for("training.resolution")[0].reason


def test_a_missing_path_is_marked(window, tmp_path):
    window.preset.general.demo_dir = ""
    window.form.refresh()
    type_into(window.form.widget_for("model.base_model"), str(tmp_path / "nope.safetensors"))
    window.update()
    binding = window.form.bindings_for("model.base_model")[0]
    assert "does not exist" in binding.reason
    assert binding.widget.entry.cget("border_color") == ERROR
    assert window.bottom.start_button.cget("state") == "disabled"
    type_into(window.form.widget_for("model.base_model"), str(tmp_path))
    window.update()
    assert binding.reason is None


def test_browse_fills_a_path_field(window, tmp_path):
    window.dialogs.browse_result = str(tmp_path)
    window.form.widget_for("general.cache_dir").button.invoke()
    window.update()
    assert window.preset.general.cache_dir == str(tmp_path)
    assert window.dialogs.asked[-1][:3] == ("browse", "dir", "cache_dir")


def test_concept_list_add_duplicate_remove_enable(window, tmp_path):
    tab = window.tabs["concepts"]
    start = len(window.preset.concepts)
    tab.add_button.invoke()
    window.update()
    assert len(window.preset.concepts) == start + 1 and tab.selected == start
    type_into(window.form.widget_for(f"concepts.{start}.name"), "cats")
    window.update()
    assert window.preset.concepts[start].name == "cats"
    assert tab.rows[start][2].cget("text") == "cats"
    tab.duplicate_button.invoke()
    window.update()
    assert [c.name for c in window.preset.concepts[start:]] == ["cats", "cats copy"]
    switch = tab.rows[start + 1][1].widget
    switch.toggle()
    window.update()
    assert window.preset.concepts[start + 1].enabled is False
    tab.select(start + 1)
    assert window.form.widget_for(f"concepts.{start + 1}.enabled").get_raw() is False
    tab.remove_button.invoke()
    tab.select(start)
    tab.remove_button.invoke()
    window.update()
    assert len(window.preset.concepts) == start


def test_concept_thumbnails_show_captions_and_statistics(window, tmp_path):
    from PIL import Image
    for i, colour in enumerate(("red", "blue", "green")):
        Image.new("RGB", (48, 32), colour).save(tmp_path / f"{colour}.png")
        if i < 2:
            (tmp_path / f"{colour}.txt").write_text(f"a {colour} thing\nanother line\n")
    tab = window.tabs["concepts"]
    tab.add_button.invoke()
    type_into(window.form.widget_for(f"concepts.{tab.selected}.path"), str(tmp_path))
    tab.refresh_images()
    tab.refresh_stats()  # the engine's statistics come from a worker thread
    end = time.monotonic() + 20
    while tab.stats_panel.pending() and time.monotonic() < end:
        window.update()
    for _ in range(10):
        window.update()
    assert "3 images" in tab.stats.cget("text") and "1 without a caption" in tab.stats.cget("text")
    captions = [caption.cget("text") for _, caption in tab.thumb_cards[:3]]
    assert captions[0].startswith("a blue thing") and "+1 more" in captions[0]
    assert captions[1] == "(no caption)"
    assert all(label.cget("image") for label, _ in tab.thumb_cards[:3])


def test_sample_prompts_add_and_remove(window):
    editor = window.tabs["sampling"].prompts
    start = len(window.preset.sampling.prompts)
    editor.add_button.invoke()
    window.update()
    assert len(window.preset.sampling.prompts) == start + 1
    type_into(window.form.widget_for(f"sampling.prompts.{start}.prompt"), "a lighthouse at dusk")
    window.form.widget_for(f"sampling.prompts.{start}.sampler").set("ddim")
    type_into(window.form.widget_for(f"sampling.prompts.{start}.width"), "100")
    window.update()
    prompt = window.preset.sampling.prompts[start]
    assert (prompt.prompt, prompt.sampler) == ("a lighthouse at dusk", "ddim")
    assert "multiple of 8" in window.form.bindings_for(f"sampling.prompts.{start}.width")[0].reason
    editor.rows[start][-1].invoke()  # its ✕ button
    window.update()
    assert len(window.preset.sampling.prompts) == start
    assert window.bottom.start_button.cget("state") == "normal"


def test_save_writes_what_the_widgets_show_and_load_restores_it(window, tmp_path):
    type_into(window.form.widget_for("training.learning_rate"), "3e-5")
    window.form.widget_for("training.optimizer").set("lion")
    window.update()
    path = tmp_path / "mine.json"
    assert window.save_to(path)
    assert path.read_text() == preset_to_json(window.preset)
    assert load_preset(path).training.optimizer == "lion"
    assert not window.dirty and window.preset_path == path
    assert str(path.resolve()) in window.recent.paths
    assert any(p == path.resolve() for p in window._menu_items.values())
    saved = preset_to_dict(window.preset)
    type_into(window.form.widget_for("training.learning_rate"), "9e-3")
    window.update()
    assert window.dirty
    assert window.load_file(path)
    assert preset_to_dict(window.preset) == saved
    assert window.form.widget_for("training.learning_rate").get_raw() == "3e-05"
    assert not window.dirty


def test_save_refuses_an_invalid_value_and_a_bad_file_does_not_load(window, tmp_path):
    type_into(window.form.widget_for("training.epochs"), "many")
    window.update()
    assert not window.save_to(tmp_path / "bad.json") and not (tmp_path / "bad.json").exists()
    assert "Epochs" in window.bottom.message.cget("text")
    type_into(window.form.widget_for("training.epochs"), "3")
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"version": 1, "training": {"lerning_rate": 1}}))
    before = preset_to_dict(window.preset)
    assert not window.load_file(broken)
    assert "training.lerning_rate: unknown key" in window.bottom.message.cget("text")
    assert preset_to_dict(window.preset) == before


def test_save_on_a_builtin_asks_for_a_new_file_and_load_dialog(window, tmp_path):
    window.dialogs.save_path = str(tmp_path / "copy.json")
    window.preset_path = window.presets_dir / "demo.json"
    assert window.save()
    assert ("save",) in window.dialogs.asked and (tmp_path / "copy.json").exists()
    other = window.preset
    other.training.epochs = 77
    save_preset(other, tmp_path / "other.json")
    window.dialogs.open_path = str(tmp_path / "other.json")
    window.load_dialog()
    assert window.preset.training.epochs == 77
    assert window.form.widget_for("training.epochs").get_raw() == "77"


def test_preset_menu_loads_and_asks_before_discarding(window, tmp_path):
    try:
        first = next(iter(window._menu_items))
    except StopIteration:
        return
    type_into(window.form.widget_for("training.epochs"), "5")
    window.update()
    window.dialogs.confirm_answer = False
    window._menu_chosen(first)
    assert window.preset.training.epochs == 5
    window.dialogs.confirm_answer = True
    window._menu_chosen(first)
    assert preset_to_dict(window.preset) == preset_to_dict(load_preset(window._menu_items[first]))


def test_load_error_is_a_config_error_message(window, tmp_path):
    try:
        load_preset(tmp_path / "missing.json")
    except ConfigError as e:
        expected = str(e)
    assert not window.load_file(tmp_path / "missing.json")
    assert expected in window.bottom.message.cget("text")


def test_switching_concepts_drops_text_that_did_not_parse(window):
    tab = window.tabs["concepts"]
    tab.add_button.invoke()
    first = tab.selected
    type_into(window.form.widget_for(f"concepts.{first}.repeats"), "lots")
    window.update()
    assert window.bottom.start_button.cget("state") == "disabled"
    tab.add_button.invoke()
    window.update()
    assert f"concepts.{first}.repeats" not in window.form.parse_errors
    tab.select(first)
    assert window.form.widget_for(f"concepts.{first}.repeats").get_raw() == "1.0"


def test_a_tool_tabs_problem_list_names_its_own_button(window, tmp_path):
    for title, button in (("tools", "Generate"), ("results", "Run")):
        tab = window.tabs[title]
        window.tabview.set(title)
        for path in ("steps", "width") if title == "tools" else ("cell_size", "max_columns"):
            type_into(tab.spec_form.widget_for(path), "not a number")
        window.update()
        tab.validate_now()
        window.update()
        text = tab.problem_label.cget("text")
        assert tab.start_button.cget("text") == button and len(tab.reasons) > 1
        assert f"hover {button} for the list" in text and "Start" not in text


def test_tooltips_stay_on_the_screen_at_its_right_and_bottom_edges(window, pump, screenshots):
    from PIL import ImageGrab
    for path in ("training.learning_rate", "training.epochs", "training.ema_decay", "training.resolution"):
        type_into(window.form.widget_for(path), "a value that is not a number at all, typed in by mistake")
    window.update()
    window.validate_now()
    tip = window.bottom.start_tip
    assert len(window.bottom.problem_reasons) == 4 and "Fix these first" in tip.current_text()
    screen_w, screen_h = window.winfo_screenwidth(), window.winfo_screenheight()
    corners = ((screen_w - 3, screen_h - 3), (screen_w - 3, 200), (200, screen_h - 3), (200, 200))
    for px, py in corners:
        window.event_generate("<Motion>", warp=True, x=px - window.winfo_rootx(), y=py - window.winfo_rooty())
        window.update()
        assert (window.winfo_pointerx(), window.winfo_pointery()) == (px, py)
        tip.show()
        window.update()
        x, y = tip._tip.winfo_rootx(), tip._tip.winfo_rooty()
        width, height = tip._tip.winfo_width(), tip._tip.winfo_height()
        assert 0 <= x and x + width <= screen_w and 0 <= y and y + height <= screen_h, (px, py, x, y, width, height)
        if px < screen_w / 2:  # room on the right: it keeps to the right of the pointer
            assert x > px
        if py < screen_h / 2:  # room below: it stays below the pointer, off the widget
            assert y > py
        else:
            assert y + height < py
    window.event_generate("<Motion>", warp=True, x=screen_w - 3 - window.winfo_rootx(),
                          y=screen_h - 3 - window.winfo_rooty())
    tip.show()
    pump(window, 0.2)
    screenshots.mkdir(parents=True, exist_ok=True)
    ImageGrab.grab().save(screenshots / "tooltip_at_the_corner.png")
    tip.hide()
