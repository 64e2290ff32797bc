"""The concepts tab's editor (strengths follow their switch, Enabled shown once), thumbnails in a second window of
the same process, the sample prompts' wide multi-line fields, and GUI tests that keep away from the checkout."""
from __future__ import annotations

from pathlib import Path

import customtkinter as ctk
from PIL import Image

from app.tabs.concepts import switches_of
from app.widgets import MUTED, MultilineField
from gui_helpers import type_into
from trainer.config import ConceptConfig

REPO = Path(__file__).resolve().parents[2]


def image_folder(folder: Path, count: int = 3) -> Path:
    folder.mkdir(parents=True)
    for i in range(count):
        Image.new("RGB", (48, 48), ("red", "green", "blue")[i % 3]).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(f"shape {i}\n")
    return folder


def labels_of(widget) -> list[str]:
    """The texts of every CTkLabel below `widget`."""
    found = []
    for child in widget.winfo_children():
        if isinstance(child, ctk.CTkLabel):
            found.append(child.cget("text"))
        found += labels_of(child)
    return found


def test_strength_fields_are_editable_only_while_their_switch_is_on(window):
    assert switches_of(ConceptConfig) == {
        "random_flip_probability": "random_flip", "crop_jitter_strength": "crop_jitter",
        "random_brightness_strength": "random_brightness", "random_contrast_strength": "random_contrast",
        "random_saturation_strength": "random_saturation", "random_hue_strength": "random_hue"}
    tab = window.tabs["concepts"]
    window.tabview.set("concepts")
    tab.select(0)
    bindings = dict(tab.editor_bindings)
    for field, switch in switches_of(ConceptConfig).items():
        entry, label = bindings[field].widget, bindings[field].labelled.label
        assert getattr(window.preset.concepts[0], switch) is False
        assert entry.cget("state") == "disabled" and label.cget("text_color") == MUTED, field
        window.form.widget_for(f"concepts.0.{switch}").toggle()
        window.update()
        assert entry.cget("state") == "normal" and label.cget("text_color") != MUTED, field
        type_into(entry, "0.25")
        window.update()
        assert getattr(window.preset.concepts[0], field) == 0.25
    tab.add_button.invoke()  # another concept, its switches off: its strengths are greyed again
    window.update()
    assert all(bindings[field].widget.cget("state") == "disabled" for field in switches_of(ConceptConfig))
    tab.select(0)
    assert all(bindings[field].widget.cget("state") == "normal" for field in switches_of(ConceptConfig))


def test_enabled_is_shown_once_as_the_lists_switch(window):
    tab = window.tabs["concepts"]
    tab.select(0)
    assert "Enabled" not in labels_of(tab.editor)
    shown = window.form.bindings_for("concepts.0.enabled")
    assert len(shown) == 1 and shown[0].widget is tab.rows[0][1].widget


def test_a_second_window_in_the_same_process_shows_its_images(window, make_window, tmp_path):
    """Images belong to a Tk root: with the shared window open, a second window builds every tab, shows its
    concept's thumbnails and the caption editor's preview (CTkImage's default root would make them for the
    first window: 'image "pyimageN" doesn't exist')."""
    from trainer.config import Preset
    folder = image_folder(tmp_path / "photos")
    preset = Preset()
    preset.concepts = [ConceptConfig(name="photos", path=str(folder))]
    preset.general.workspace_dir = str(tmp_path / "workspace")
    second = make_window(preset=preset, lazy=False)
    tab = second.tabs["concepts"]
    second.tabview.set("concepts")
    for _ in range(10):
        second.update()
    assert all(label.cget("image") for label, _ in tab.thumb_cards[:3])
    assert second.form.bindings_for("training.learning_rate"), "the tabs after the concepts tab were not built"
    editor = tab.open_caption_editor()
    second.update()
    assert editor.preview.cget("image")
    editor.close()
    window.preset.concepts[0].path = str(folder)  # the first window shows the same images, in its own root
    window.tabs["concepts"].select(0)
    for _ in range(10):
        window.update()
    assert all(label.cget("image") for label, _ in window.tabs["concepts"].thumb_cards[:3])


def test_gui_tests_keep_away_from_the_checkouts_demo_and_workspace(window, make_window):
    """`./run.sh` builds the demo in the checkout: no GUI test may read (or write) it, whatever is there."""
    for shown in (window, make_window(lazy=False)):
        preset = shown.preset
        paths = [preset.general.workspace_dir, preset.general.cache_dir, preset.general.demo_dir,
                 preset.model.base_model, preset.model.output_path, *(c.path for c in preset.concepts)]
        for path in filter(None, paths):
            assert not Path(path).resolve().is_relative_to(REPO), path


def test_sample_prompts_get_wide_multi_line_fields(window):
    tab = window.tabs["sampling"]
    window.tabview.set("sampling")
    window.update()
    box = window.form.widget_for("sampling.prompts.0.prompt")
    negative = window.form.widget_for("sampling.prompts.0.negative_prompt")
    assert isinstance(box, MultilineField) and isinstance(negative, MultilineField)
    assert box.winfo_width() > 0.6 * tab.frame.winfo_width() and negative.winfo_width() == box.winfo_width()
    assert box.cget("wrap") == "word" and box.winfo_height() >= 2 * negative.cget("font").metrics("linespace")
    long = "a red circle on a white background, centred, flat colours, no shadow, seen from straight above"
    type_into(box, long)
    window.update()
    assert window.preset.sampling.prompts[0].prompt == long
    tab.prompts.add_button.invoke()
    window.update()
    last = len(window.preset.sampling.prompts) - 1
    assert isinstance(window.form.widget_for(f"sampling.prompts.{last}.prompt"), MultilineField)
    tab.prompts.rows[last][-1].invoke()  # its ✕
    window.update()
    assert len(window.preset.sampling.prompts) == last
