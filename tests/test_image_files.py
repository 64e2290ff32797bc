"""Folders and photos people have: symlinked folders and files (no loops, nothing twice), 100-200 MP photos."""
from __future__ import annotations

from pathlib import Path

import json

import numpy as np
import pytest
from PIL import Image, ImageDraw

from data_helpers import write_image
from trainer.data import images
from trainer.data.buckets import bucket_sizes, nearest_bucket
from trainer.data.images import (Augment, FileIndex, ImageTooLarge, check_image, decode, list_image_files,
                                 load_pixels, scan_files)

BIG = (15000, 12400)  # 186 MP: over Pillow's own ~179 MP limit, under ours


def names(paths, folder) -> list[str]:
    return [p.relative_to(folder).as_posix() for p in paths]


# ---- symlinks --------------------------------------------------------------------------------------------

def test_a_symlinked_subfolder_is_followed(tmp_path):
    folder, elsewhere = tmp_path / "concept", tmp_path / "elsewhere" / "shoot"
    write_image(folder / "a.png"), write_image(elsewhere / "b.png"), write_image(elsewhere / "deeper" / "c.jpg")
    (folder / "linked").symlink_to(elsewhere, target_is_directory=True)
    found = list_image_files(folder, recursive=True)
    assert names(found, folder) == ["a.png", "linked/b.png", "linked/deeper/c.jpg"]
    assert all(not p.resolve().is_relative_to(folder) for p in found[1:])  # paths as the user sees them...
    assert found[1].parent == folder / "linked"                            # ...not resolved
    assert names(list_image_files(folder, recursive=False), folder) == ["a.png"]
    usable, skipped = scan_files(found, FileIndex(None))
    assert [i.path for i in usable] == found and not skipped


def test_a_link_to_the_parent_folder_ends_and_counts_every_image_once(tmp_path):
    folder = tmp_path / "concept"
    write_image(folder / "a.png"), write_image(folder / "sub" / "b.png"), write_image(folder / "sub" / "c" / "d.png")
    (folder / "sub" / "c" / "up").symlink_to(folder, target_is_directory=True)  # a loop through the root
    (folder / "sub" / "again").symlink_to(folder / "sub", target_is_directory=True)  # a link to its own folder
    (folder / "me").symlink_to(folder / "me")  # a link to itself (broken: no image suffix, not listed)
    assert names(list_image_files(folder, recursive=True), folder) == ["a.png", "sub/b.png", "sub/c/d.png"]


def test_two_paths_to_one_folder_list_its_images_under_the_first(tmp_path):
    folder = tmp_path / "concept"
    write_image(folder / "real" / "x.png")
    (folder / "a_link").symlink_to(folder / "real", target_is_directory=True)
    (folder / "z_link").symlink_to(folder / "real", target_is_directory=True)
    assert names(list_image_files(folder, recursive=True), folder) == ["a_link/x.png"]


def test_a_symlinked_file_to_an_image_already_there_is_counted_once(tmp_path):
    folder = tmp_path / "concept"
    write_image(folder / "b.png"), write_image(tmp_path / "outside.png", color=(1, 2, 3))
    (folder / "c_same_as_b.png").symlink_to(folder / "b.png")
    (folder / "a_same_as_b.png").symlink_to(folder / "b.png")  # sorts first: this path is kept
    (folder / "outside_link.png").symlink_to(tmp_path / "outside.png")  # a link to another image: used
    for recursive in (True, False):
        duplicates = []
        assert names(list_image_files(folder, recursive, duplicates), folder) == ["a_same_as_b.png",
                                                                                   "outside_link.png"]
        assert [(p.name, "the same file as" in why and "a_same_as_b.png" in why) for p, why in duplicates] == \
            [("b.png", True), ("c_same_as_b.png", True)]  # never dropped without a word


def test_a_file_reached_twice_is_named_by_stats_and_the_run(tmp_path):
    from tiny_presets import make_preset
    from trainer.data.data import collect_items
    from trainer.data.stats import concept_stats
    folder = tmp_path / "concept"
    write_image(folder / "b.png")
    (folder / "a_link.png").symlink_to(folder / "b.png")
    preset = make_preset(tmp_path, "unused", folder)
    items = collect_items(preset)
    assert [p.name for p in (i.path for i in items)] == ["a_link.png"]
    assert [(p.name, "the same file as" in why) for p, why in items.skipped] == [("b.png", True)]
    (stats,) = concept_stats(preset)
    assert stats["image_count"] == 2 and stats["usable"] == 1
    assert [Path(k["path"]).name for k in stats["skipped"]] == ["b.png"]


def test_hidden_entries_stay_out_and_a_broken_link_is_skipped_with_its_reason(tmp_path):
    folder = tmp_path / "concept"
    write_image(folder / "a.png"), write_image(folder / ".hidden.png"), write_image(tmp_path / "other" / "o.png")
    (folder / ".linked").symlink_to(tmp_path / "other", target_is_directory=True)
    (folder / "gone.jpg").symlink_to(tmp_path / "deleted.jpg")
    for recursive in (True, False):
        found = list_image_files(folder, recursive)
        assert names(found, folder) == ["a.png", "gone.jpg"]
        usable, skipped = scan_files(found, FileIndex(None))
        assert [i.path.name for i in usable] == ["a.png"]
        ((path, reason),) = skipped
        assert path.name == "gone.jpg" and "broken link" in reason and "deleted.jpg" in reason


# ---- large photos ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def big_jpeg(tmp_path_factory):
    """A real 15000×12400 (186 MP) RGB JPEG, red left half and blue right half (~1 s, ~3 MB on disk)."""
    path = tmp_path_factory.mktemp("big") / "panorama.jpg"
    im = Image.new("RGB", BIG, (200, 30, 30))
    ImageDraw.Draw(im).rectangle((BIG[0] // 2, 0, BIG[0] - 1, BIG[1] - 1), fill=(30, 30, 200))
    im.save(path, quality=20)
    return path


def test_a_186_megapixel_photo_is_used_and_decodes_to_its_bucket(big_jpeg, tmp_path):
    pillow_limit = Image.MAX_IMAGE_PIXELS
    assert BIG[0] * BIG[1] > 2 * pillow_limit  # Pillow alone refuses it as a decompression bomb
    index = FileIndex(tmp_path / "files.json")
    usable, skipped = scan_files([big_jpeg], index)
    assert not skipped and [(i.width, i.height) for i in usable] == [BIG]
    size = nearest_bucket(*BIG, bucket_sizes(512))
    assert size[0] > size[1] and abs(size[0] * size[1] - 512 * 512) < 0.15 * 512 * 512
    pixels = load_pixels(big_jpeg, size, Augment())
    assert pixels.shape == (size[1], size[0], 3) and pixels.dtype == np.float32
    left, right = pixels[:, : size[0] // 3].mean((0, 1)), pixels[:, -size[0] // 3:].mean((0, 1))
    assert left[0] > 0.4 and left[2] < -0.5 and right[2] > 0.4 and right[0] < -0.5  # red left, blue right
    assert Image.MAX_IMAGE_PIXELS == pillow_limit  # Pillow's guard is the same for everyone else afterwards


def test_a_cached_decompression_bomb_reason_is_checked_again(big_jpeg, tmp_path):
    st = big_jpeg.stat()
    old = {"version": 1, "files": {str(big_jpeg.resolve()): {  # version 1: the rule before the 500 MP limit
        "size": st.st_size, "mtime_ns": st.st_mtime_ns,
        "reason": "cannot decode: Image size (186000000 pixels) exceeds limit of 178956970 pixels"}}}
    (tmp_path / "files.json").write_text(json.dumps(old))
    entry = FileIndex(tmp_path / "files.json").lookup(big_jpeg)
    assert "reason" not in entry and (entry["width"], entry["height"]) == BIG


@pytest.mark.filterwarnings("error::PIL.Image.DecompressionBombWarning")  # our reason, not Pillow's warning
@pytest.mark.parametrize("suffix", [".png", ".jpg", ".tif"])
def test_an_image_over_the_limit_is_skipped_naming_its_size_and_the_limit(tmp_path, monkeypatch, suffix):
    over = write_image(tmp_path / f"over{suffix}", (64, 48))  # 3072 px: over the limit
    far_over = write_image(tmp_path / f"far_over{suffix}", (100, 100))  # over twice the limit (Pillow: error)
    small = write_image(tmp_path / f"small{suffix}", (20, 20))
    monkeypatch.setattr(images, "MAX_IMAGE_MEGAPIXELS", 0.002)  # 2000 px
    pillow_limit = Image.MAX_IMAGE_PIXELS
    usable, skipped = scan_files([far_over, over, small], FileIndex(None))
    assert [i.path for i in usable] == [small]
    reasons = dict(skipped)
    assert set(reasons) == {over, far_over}
    assert "64×48 = 0.0031 MP is over the 0.002 MP limit" in reasons[over]
    assert "100×100 = 0.01 MP is over the 0.002 MP limit" in reasons[far_over]
    assert all("MAX_IMAGE_MEGAPIXELS" in r and "bomb" not in r for r in reasons.values())
    with pytest.raises(ImageTooLarge, match="64×48"):
        load_pixels(over, (16, 16), Augment())
    with pytest.raises(ImageTooLarge, match="100×100"):
        check_image(far_over.read_bytes())
    assert decode(small).size == (20, 20)
    assert Image.MAX_IMAGE_PIXELS == pillow_limit  # restored, errors included


def test_jpeg_draft_decoding_keeps_exif_rotation_and_reaches_the_size(tmp_path):
    arr = np.zeros((600, 1600, 3), np.uint8)  # 1600 wide, 600 tall stored; displayed portrait (orientation 6)
    arr[:, :800] = (255, 0, 0)
    arr[:, 800:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "r.jpg"
    Image.fromarray(arr).save(path, exif=exif, quality=90)
    assert check_image(path.read_bytes()) == (600, 1600)
    im = decode(path, draft_size=(150, 400))
    assert im.size[0] >= 150 and im.size[1] >= 400 and im.size[1] < 1600  # drafted, never below the size
    top, bottom = np.asarray(im)[: im.size[1] // 3].mean((0, 1)), np.asarray(im)[-im.size[1] // 3:].mean((0, 1))
    assert top[0] > 200 and top[2] < 60 and bottom[2] > 200 and bottom[0] < 60  # red on top

