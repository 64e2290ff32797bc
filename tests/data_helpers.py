"""Helpers for the data tests: image folders of many shapes and formats, presets over them, plans."""
from __future__ import annotations

from pathlib import Path

from PIL import Image

from tiny_presets import make_preset

# (width, height): tall, wide, square, tiny, very wide, slightly wide
MIXED_SIZES = [(24, 64), (64, 24), (40, 40), (9, 11), (120, 20), (48, 40)]


def write_image(path: Path, size=(40, 32), color=(200, 30, 30), **save) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, **save)
    return path


def mixed_folder(folder: Path, sizes=MIXED_SIZES, captions=True) -> Path:
    """Images of the given sizes, each a different colour, captioned 'shape k, colour, tag' (two lines)."""
    folder.mkdir(parents=True, exist_ok=True)
    for k, size in enumerate(sizes):
        write_image(folder / f"img_{k}.png", size, (40 * k % 256, 120, 255 - 30 * k))
        if captions:
            (folder / f"img_{k}.txt").write_text(f"shape {k}, colour {k}, tag {k}\nother line {k}\n")
    return folder


def preset_for(tmp_path: Path, folder: Path, model="unused-model", concept=None, concepts=None, **sections):
    """A tiny CPU preset (tests/tiny_presets.py) over one concept folder with concept overrides."""
    concepts = concepts or [{"name": "mixed", "path": str(folder), **(concept or {})}]
    return make_preset(tmp_path, model, folder, concepts=concepts, **sections)


def plan_for(preset):
    from trainer.data.data import EpochPlan, collect_items
    return EpochPlan(preset, collect_items(preset))


def use_counts(plan, epoch: int) -> dict[int, int]:
    counts: dict[int, int] = {}
    for step in plan.layout(epoch):
        for spec in step:
            for idx in spec.items:
                counts[idx] = counts.get(idx, 0) + 1
    return counts
