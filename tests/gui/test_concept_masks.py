"""The concept editor's mask settings (masked training, trainer/data/masks.py): shown with masks on, the suffix for
masks
from files only; the statistics count the images with and without a mask and leave the mask files out."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from gui_helpers import screenshot, settled, type_into, wait_for

MASK_FIELDS = ("mask_suffix", "unmasked_weight", "normalize_masked_area_loss")


def masked_concept(folder: Path) -> Path:
    """Four captioned images, three with a left-half mask file beside them."""
    folder.mkdir()
    for i in range(4):
        Image.new("RGB", (64, 64), ("red", "green", "blue", "white")[i]).save(folder / f"shape{i}.png")
        (folder / f"shape{i}.txt").write_text(f"a shape {i}\n")
        if i < 3:
            mask = np.zeros((64, 64), np.uint8)
            mask[:, :32] = 255
            Image.fromarray(mask, "L").save(folder / f"shape{i}-masklabel.png")
    return folder


def shown(tab) -> dict[str, bool]:
    bindings = dict(tab.editor_bindings)
    return {name: bindings[name].labelled.label.winfo_ismapped() for name in MASK_FIELDS}


def test_mask_settings_show_with_masks_on_and_stats_count_masks(window, tmp_path, screenshots, pump):
    folder = masked_concept(tmp_path / "shapes")
    tab = window.tabs["concepts"]
    window.tabview.set("concepts")
    type_into(window.form.widget_for("general.demo_dir"), "")
    tab.add_button.invoke()
    index = tab.selected
    type_into(window.form.widget_for(f"concepts.{index}.path"), str(folder))
    window.update()
    assert shown(tab) == dict.fromkeys(MASK_FIELDS, False)  # masks off: none of their settings
    wait_for(window, lambda: settled(tab, folder) and tab.stats_panel.shown is not None, "the statistics")
    assert "7 images usable" in tab.stats_panel.summary.cget("text")  # masks off: mask files are images
    window.form.widget_for(f"concepts.{index}.masks").set("file")
    window.update()
    assert shown(tab) == dict.fromkeys(MASK_FIELDS, True)
    wait_for(window, lambda: "Masks from files" in tab.stats_panel.captions.cget("text"), "the mask statistics")
    text = tab.stats_panel.captions.cget("text")
    assert "3 images with a mask, 1 without (trained unmasked): shape3.png" in text
    assert "4 of 4 images usable" in tab.stats_panel.summary.cget("text")
    assert [p.name for p in tab.shown_images] == [f"shape{i}.png" for i in range(4)]  # no mask thumbnails
    screenshot(window, pump, screenshots, "concept_masks")
    tab.editor.master._parent_canvas.yview_moveto(0.3)  # the right column scrolled to the mask settings
    screenshot(window, pump, screenshots, "concept_masks_settings")
    window.form.widget_for(f"concepts.{index}.masks").set("alpha")
    window.update()
    assert shown(tab) == {"mask_suffix": False, "unmasked_weight": True, "normalize_masked_area_loss": True}
    window.form.widget_for(f"concepts.{index}.masks").set("off")
    window.update()
    assert shown(tab) == dict.fromkeys(MASK_FIELDS, False)
