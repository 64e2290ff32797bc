"""Data pipeline: captions and their augmentations, aspect buckets, repeats, seeded and resumable epochs."""
from __future__ import annotations

import math
import random
from collections import Counter

import numpy as np
import pytest

from data_helpers import mixed_folder, plan_for, preset_for, use_counts, write_image
from trainer.config import ConceptConfig
from trainer.data.buckets import bucket_sizes, nearest_bucket
from trainer.data.captions import augment_caption, pick_caption
from trainer.data.images import Augment
from trainer.errors import InputError


# ---- captions --------------------------------------------------------------------------------------------

def captions_of(plan, epochs=1) -> list[str]:
    return [c for e in range(epochs) for step in plan.iter_epoch(e) for b in step for c in b.captions]


@pytest.mark.parametrize("source, with_txt, expected", [
    ("txt", True, "from the txt"), ("txt", False, "fallback"), ("filename", True, "my cat photo"),
    ("single", True, "fallback"), ("txt_or_filename", True, "from the txt"),
    ("txt_or_filename", False, "my cat photo"),
])
def test_caption_sources(tmp_path, source, with_txt, expected):
    write_image(tmp_path / "imgs" / "my_cat__photo.png")
    if with_txt:
        (tmp_path / "imgs" / "my_cat__photo.txt").write_text("\n  from the txt  \n\n")
    plan = plan_for(preset_for(tmp_path, tmp_path / "imgs",
                               concept={"caption_source": source, "caption": "fallback"}))
    assert captions_of(plan) == [expected]


def test_multi_line_txt_picks_every_non_empty_line(tmp_path):
    write_image(tmp_path / "imgs" / "a.png")
    (tmp_path / "imgs" / "a.txt").write_text("first\n\n   \nsecond\nthird\n")
    plan = plan_for(preset_for(tmp_path, tmp_path / "imgs", concept={"repeats": 60.0}))
    seen = Counter(captions_of(plan))
    assert set(seen) == {"first", "second", "third"} and min(seen.values()) > 5


def test_tag_shuffle_keeps_the_first_n():
    concept = ConceptConfig(shuffle_tags=True, keep_tags=2)
    text = "sks person, portrait, red hat, smiling, outdoors, bokeh"
    orders = set()
    for i in range(50):
        out = augment_caption(text, concept, random.Random(i)).split(", ")
        assert out[:2] == ["sks person", "portrait"] and sorted(out) == sorted(text.split(", "))
        orders.add(tuple(out))
    assert len(orders) > 10


def test_dropouts_happen_at_their_rates_and_are_seeded():
    tags = [f"t{i}" for i in range(10)]
    concept = ConceptConfig(tag_dropout=0.3, keep_tags=1, caption_dropout=0.2)
    outs = [augment_caption(", ".join(tags), concept, random.Random(i)) for i in range(4000)]
    empty = sum(o == "" for o in outs) / len(outs)
    kept = [o.split(", ") for o in outs if o]
    dropped = 1 - sum(len(k) - 1 for k in kept) / (9 * len(kept))
    assert abs(empty - 0.2) < 0.03 and abs(dropped - 0.3) < 0.02
    assert all(k[0] == "t0" for k in kept)  # the kept tag is never dropped
    again = [augment_caption(", ".join(tags), concept, random.Random(i)) for i in range(4000)]
    assert again == outs


def test_pick_caption_without_augmentation_returns_the_line_unchanged():
    concept = ConceptConfig()
    assert pick_caption(("a, b,  c",), concept, random.Random(0)) == "a, b,  c"


# ---- buckets ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("resolution", [256, 512, 640, 768, 1024])
def test_bucket_sizes_are_multiples_of_64_near_the_area(resolution):
    sizes = bucket_sizes(resolution)
    assert (resolution, resolution) in sizes
    for w, h in sizes:
        assert w % 64 == 0 and h % 64 == 0
        assert abs(w * h - resolution ** 2) <= 64 * max(w, h) / 2
        assert 0.25 <= w / h <= 4
    assert max(w / h for w, h in sizes) == 4 and (h, w) in sizes  # the full 1:4..4:1 range, symmetric


def test_small_resolutions_use_multiples_of_8():
    for w, h in bucket_sizes(32) + bucket_sizes(64):
        assert w % 8 == 0 and h % 8 == 0
    assert bucket_sizes(32, bucketing=False) == ((32, 32),)


def test_each_image_lands_in_its_nearest_bucket(tmp_path):
    plan = plan_for(preset_for(tmp_path, mixed_folder(tmp_path / "imgs"), training={"resolution": "64"}))
    sizes = bucket_sizes(64)
    for step in plan.layout(0):
        for planned in step:
            for idx in planned.items:
                item = plan.items[idx]
                best = min(abs(math.log(w / h) - math.log(item.width / item.height)) for w, h in sizes)
                assert abs(math.log(planned.size[0] / planned.size[1]) - math.log(item.width / item.height)) == best
    assert nearest_bucket(1000, 10, sizes) == (128, 32)  # beyond 4:1 goes to the widest bucket


@pytest.mark.parametrize("batch_size", [1, 2, 3, 4, 7])
def test_no_image_is_dropped_and_batches_are_single_bucket(tmp_path, batch_size):
    preset = preset_for(tmp_path, mixed_folder(tmp_path / "imgs"), concept={"repeats": 2.0},
                        training={"batch_size": batch_size, "gradient_accumulation_steps": 2})
    plan = plan_for(preset)
    assert use_counts(plan, 0) == {i: 2 for i in range(len(plan.items))}
    positions = []
    for step in plan.iter_epoch(0):
        assert 1 <= len(step) <= 2
        for batch in step:
            assert 1 <= len(batch.positions) <= batch_size
            assert len({tuple(batch.pixels.shape[1:3])}) == 1
            positions += batch.positions
    assert positions == list(range(2 * len(plan.items)))


def test_one_bucket_order_does_not_depend_on_batch_size(tmp_path):
    folder = tmp_path / "imgs"
    for i in range(6):
        write_image(folder / f"{i}.png", (40, 32))
    orders = []
    for bs in (1, 2, 4):
        plan = plan_for(preset_for(tmp_path, folder, training={"batch_size": bs}))
        orders.append([(p, i) for step in plan.layout(0) for s in step for p, i in zip(s.positions, s.items)])
    assert orders[0] == orders[1] == orders[2]


# ---- repeats ---------------------------------------------------------------------------------------------

def test_fractional_repeats_use_a_different_share_each_epoch(tmp_path):
    folder = tmp_path / "imgs"
    for i in range(8):
        write_image(folder / f"{i}.png")
    plan = plan_for(preset_for(tmp_path, folder, concept={"repeats": 0.5}))
    halves = [set(use_counts(plan, e)) for e in range(4)]
    for e in range(4):
        assert len(halves[e]) == 4 and all(v == 1 for v in use_counts(plan, e).values())
    assert halves[0] | halves[1] == set(range(8)) and halves[2] | halves[3] == set(range(8))
    assert halves[0] != halves[2]  # a new shuffle for the next cycle


@pytest.mark.parametrize("repeats, n", [(0.3, 7), (1.5, 5), (2.25, 4), (0.7, 3)])
def test_repeats_hold_exactly_per_epoch_and_evenly_over_epochs(tmp_path, repeats, n):
    folder = tmp_path / "imgs"
    for i in range(n):
        write_image(folder / f"{i}.png")
    plan = plan_for(preset_for(tmp_path, folder, concept={"repeats": repeats}))
    total = Counter()
    epochs = 20
    for e in range(epochs):
        counts = use_counts(plan, e)
        extra = sum(counts.values()) - math.floor(repeats) * n
        assert all(math.floor(repeats) <= c <= math.floor(repeats) + 1 for c in counts.values())
        frac = (repeats - math.floor(repeats)) * n
        assert extra == math.ceil(round(frac * (e + 1), 9)) - math.ceil(round(frac * e, 9))
        total.update(counts)
    assert sum(total.values()) == pytest.approx(repeats * n * epochs, abs=1)
    assert max(total.values()) - min(total.values()) <= 1


def test_two_concepts_weights_and_zero_repeats(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    write_image(a / "x.png"), write_image(b / "y.png")
    plan = plan_for(preset_for(tmp_path, a, concepts=[
        {"name": "a", "path": str(a), "loss_weight": 2.5, "caption_source": "single", "caption": "a"},
        {"name": "b", "path": str(b), "repeats": 0.0}]))
    batches = [b for step in plan.iter_epoch(0) for b in step]
    assert [b.loss_weights for b in batches] == [[2.5]] and batches[0].captions == ["a"]
    with pytest.raises(InputError, match="repeats 0"):
        plan_for(preset_for(tmp_path, a, concept={"repeats": 0.0}))


def test_multiple_resolutions_are_picked_per_image_per_epoch(tmp_path):
    folder = tmp_path / "imgs"
    for i in range(8):
        write_image(folder / f"{i}.png", (32, 32))
    plan = plan_for(preset_for(tmp_path, folder, concept={"repeats": 2.0}, training={"resolution": "32,64"}))
    per_image = set()
    for e in range(3):
        sizes = {}
        for step in plan.layout(e):
            for planned in step:
                for idx in planned.items:
                    assert sizes.setdefault(idx, planned.size) == planned.size  # one size per image per epoch
        per_image |= set(sizes.values())
    assert per_image == {(32, 32), (64, 64)}


# ---- resume determinism ----------------------------------------------------------------------------------

AUGMENTED = {"random_flip": True, "crop_jitter": True, "random_brightness": True, "random_hue": True,
             "shuffle_tags": True, "tag_dropout": 0.2, "caption_dropout": 0.1, "repeats": 1.5,
             "image_variations": 2}


def flatten(steps) -> list:
    out = []
    for step in steps:
        for b in step:
            out.append((tuple(b.captions), tuple(b.positions), tuple(b.loss_weights),
                        None if b.pixels is None else b.pixels.tobytes(),
                        None if b.latent_mean is None else b.latent_mean.numpy().tobytes()))
        out.append("|")
    return out


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_mid_epoch_yields_the_remaining_batches(tmp_path, workers):
    preset = preset_for(tmp_path, mixed_folder(tmp_path / "imgs"), concept=AUGMENTED,
                        general={"dataloader_workers": workers, "seed": 3},
                        training={"batch_size": 2, "resolution": "32,48"})
    plan = plan_for(preset)
    for epoch in (0, 1):
        full = list(plan.iter_epoch(epoch))
        for k in (1, 3):
            assert flatten(plan_for(preset).iter_epoch(epoch, k)) == flatten(full[k:])
    assert flatten(plan.iter_epoch(0)) != flatten(plan.iter_epoch(1))


def test_augmentations_change_pixels_and_flip_mirrors(tmp_path):
    folder = tmp_path / "imgs"
    im = np.zeros((32, 32, 3), np.uint8)
    im[:, :16] = (255, 0, 0)
    from PIL import Image
    folder.mkdir()
    Image.fromarray(im).save(folder / "half.png")
    plan = plan_for(preset_for(tmp_path, folder, concept={"repeats": 40.0, "random_flip": True}))
    pixels = [b.pixels[0] for step in plan.iter_epoch(0) for b in step]
    flipped = [p for p in pixels if p[0, 0, 0] < 0]
    assert 8 < len(flipped) < 32 and all(p[0, -1, 0] > 0.9 for p in flipped)
    plan = plan_for(preset_for(tmp_path, folder, concept={"repeats": 10.0, "random_brightness": True,
                                                          "random_brightness_strength": 0.3}))
    means = [b.pixels[0].mean() for step in plan.iter_epoch(0) for b in step]
    assert np.std(means) > 0.01


def test_colour_augmentations():
    from trainer.data.images import color_jitter
    rng = np.random.default_rng(0)
    x = rng.uniform(0.2, 0.8, (8, 8, 3)).astype(np.float32)
    luma = np.array([0.299, 0.587, 0.114], np.float32)
    grey = color_jitter(x, Augment(saturation=0.0))
    assert np.allclose(grey[..., 0], grey[..., 1], atol=1e-6) and np.allclose(grey @ luma, x @ luma, atol=1e-5)
    flat = color_jitter(x, Augment(contrast=0.0))
    assert np.allclose(flat, (x @ luma).mean(), atol=1e-5)
    hue = color_jitter(x, Augment(hue=0.25))
    assert np.allclose(hue @ luma, x @ luma, atol=2e-2) and np.abs(hue - x).max() > 0.1
    assert np.allclose(color_jitter(x, Augment(hue=1.0)), x, atol=1e-4)  # a full turn changes nothing
    assert np.allclose(color_jitter(x, Augment(brightness=1.2)), np.clip(x * 1.2, 0, 1))
