"""Image files: every format, EXIF rotation, modes (grey, palette, 16-bit, alpha), bad files skipped and reported."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from data_helpers import plan_for, preset_for, write_image
from trainer.data.data import collect_items
from trainer.data.images import Augment, load_pixels
from trainer.errors import InputError

RED = (200, 30, 30)


def rgb_of(pixels: np.ndarray) -> tuple[float, ...]:
    return tuple(np.round((pixels.reshape(-1, 3).mean(0) + 1) * 127.5).tolist())


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".PNG"])
def test_every_format_loads(tmp_path, suffix):
    path = write_image(tmp_path / "imgs" / f"a{suffix}", (40, 24), RED)
    items = collect_items(preset_for(tmp_path, tmp_path / "imgs"))
    assert [i.path for i in items] == [path] and (items[0].width, items[0].height) == (40, 24)
    pixels = load_pixels(path, (40, 24), Augment())
    assert pixels.shape == (24, 40, 3) and pixels.dtype == np.float32
    assert all(abs(a - b) <= 6 for a, b in zip(rgb_of(pixels), RED))


def test_exif_rotation_is_applied(tmp_path):
    im = np.zeros((20, 40, 3), np.uint8)  # 40 wide, 20 tall: left half red, right half blue
    im[:, :20] = (255, 0, 0)
    im[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    (tmp_path / "imgs").mkdir()
    Image.fromarray(im).save(tmp_path / "imgs" / "r.jpg", exif=exif, quality=95)
    (item,) = collect_items(preset_for(tmp_path, tmp_path / "imgs"))
    assert (item.width, item.height) == (20, 40)  # displayed portrait
    pixels = load_pixels(item.path, (20, 40), Augment())
    top, bottom = pixels[:15].mean((0, 1)), pixels[25:].mean((0, 1))
    assert top[0] > 0.5 and top[2] < -0.5 and bottom[2] > 0.5 and bottom[0] < -0.5  # red on top


def test_modes_become_rgb(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.new("L", (16, 16), 128).save(folder / "grey.png")
    Image.new("RGB", (16, 16), RED).convert("P", palette=Image.Palette.ADAPTIVE).save(folder / "palette.png")
    Image.fromarray(np.full((16, 16), 32768, np.uint16)).save(folder / "deep.png")  # 16-bit grey, mid-level
    Image.fromarray(np.full((16, 16), 65535, np.uint16)).save(folder / "deep_white.tif")
    rgba = Image.new("RGBA", (16, 16), (0, 0, 255, 0))
    rgba.paste((0, 0, 255, 255), (0, 0, 8, 16))
    rgba.save(folder / "alpha.png")
    Image.new("LA", (16, 16), (0, 0)).save(folder / "grey_alpha.png")
    p = Image.new("P", (16, 16), 1)
    p.putpalette([0, 0, 0, 10, 200, 10] + [0] * 762)
    p.save(folder / "palette_alpha.png", transparency=1)
    want = {"grey": (128,) * 3, "palette": RED, "deep": (128,) * 3, "deep_white": (255,) * 3,
            "grey_alpha": (255,) * 3, "palette_alpha": (255,) * 3}
    items = collect_items(preset_for(tmp_path, folder))
    assert len(items) == 7 and not items.skipped
    for item in items:
        pixels = load_pixels(item.path, (16, 16), Augment())
        if item.path.stem == "alpha":  # opaque blue left half, transparent right half flattened onto white
            assert rgb_of(pixels[:, :8]) == (0, 0, 255) and rgb_of(pixels[:, 8:]) == (255, 255, 255)
        else:
            assert all(abs(a - b) <= 2 for a, b in zip(rgb_of(pixels), want[item.path.stem])), item.path


def test_bad_files_are_skipped_and_reported_once(tmp_path):
    folder = tmp_path / "imgs"
    good = write_image(folder / "good.png")
    (folder / "notes.png").write_text("this is a text file")
    data = (tmp_path / "big.png")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(data)
    (folder / "truncated.png").write_bytes(data.read_bytes()[:1500])
    (folder / "readme.txt").write_text("not an image suffix: ignored silently")
    preset = preset_for(tmp_path, folder)
    items = collect_items(preset)
    assert [i.path for i in items] == [good]
    reasons = dict((p.name, r) for p, r in items.skipped)
    assert set(reasons) == {"notes.png", "truncated.png"}
    assert "not an image" in reasons["notes.png"] and "decode" in reasons["truncated.png"]
    preset.training.cache_latents = False
    from trainer.data.inputs import input_report
    again = collect_items(preset)  # the second scan reads the file index: the same answer
    plan = plan_for(preset)
    warnings = [e.text for e in input_report(preset, again) if e.level == "warning" and "Skipped" in e.text]
    assert len(warnings) == 2 and any("notes.png" in w and "not an image" in w for w in warnings)
    assert len(list(plan.iter_epoch(0))) == 1  # training goes on with the good image


def test_changed_file_is_rescanned(tmp_path):
    folder = tmp_path / "imgs"
    path = write_image(folder / "a.png", (40, 24))
    first = collect_items(preset_for(tmp_path, folder))[0]
    write_image(path, (24, 40), (1, 2, 3))
    second = collect_items(preset_for(tmp_path, folder))[0]
    assert first.digest != second.digest and (second.width, second.height) == (24, 40)


def test_missing_or_unusable_concepts_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        collect_items(preset_for(tmp_path, tmp_path / "nowhere"))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.jpg").write_bytes(b"\xff\xd8 not really")
    with pytest.raises(InputError, match="no usable images.*x.jpg"):
        collect_items(preset_for(tmp_path, tmp_path / "bad"))
    with pytest.raises(InputError, match="concepts.0.resolution"):
        write_image(tmp_path / "ok" / "a.png")
        collect_items(preset_for(tmp_path, tmp_path / "ok", concept={"resolution": "33"}))


def test_subdirectories_only_when_asked(tmp_path):
    folder = tmp_path / "imgs"
    write_image(folder / "top.png"), write_image(folder / "sub" / "deep.png"), write_image(folder / ".hid" / "h.png")
    assert len(collect_items(preset_for(tmp_path, folder))) == 1
    found = collect_items(preset_for(tmp_path, folder, concept={"include_subdirectories": True}))
    assert sorted(i.path.name for i in found) == ["deep.png", "top.png"]
