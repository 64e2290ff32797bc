"""Masked training (trainer/data/masks.py): masks from files or alpha channels follow each crop, flip and bucket resize
of their image onto the latent grid; the loss counts masked-out cells at the unmasked weight (the gradient on the
UNet's prediction shows it); the latent cache keeps masks and re-encodes when a mask file changes; statistics and
the run log count images with and without masks; a mask of the wrong size is refused by name."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from data_helpers import preset_for
from tiny_presets import make_preset, run_stopping_at
from trainer import events as ev
from trainer.config import validate
from trainer.data.images import Augment, crop_to, load_pixels
from trainer.data.masks import batch_weights, load_with_mask, loss_weights, mask_path_for, to_latent_grid
from trainer.errors import InputError
from trainer.train import losses


def half_mask(size, left=True, level=255) -> Image.Image:
    """A grey mask of `size` (w, h), `level` on the left (or right) half, 0 on the other."""
    w, h = size
    a = np.zeros((h, w), np.uint8)
    if left:
        a[:, : w // 2] = level
    else:
        a[:, w // 2:] = level
    return Image.fromarray(a, "L")


def masked_folder(folder, sizes=((32, 32),) * 4, masked=None, suffix="-masklabel", colour=(200, 60, 40)):
    """Images img_k.png (captioned) with, for the indices in `masked` (default: all), a left-half mask file."""
    folder.mkdir(parents=True, exist_ok=True)
    masked = range(len(sizes)) if masked is None else masked
    for k, size in enumerate(sizes):
        Image.new("RGB", size, (colour[0], colour[1] + 20 * k, colour[2])).save(folder / f"img_{k}.png")
        (folder / f"img_{k}.txt").write_text(f"a red square {k}\n")
        if k in masked:
            half_mask(size).save(mask_path_for(folder / f"img_{k}.png", suffix))
    return folder


# ---- the mask follows its image --------------------------------------------------------------------------

def picture(size) -> tuple[Image.Image, Image.Image]:
    """An asymmetric picture and its mask with the same content: white in the top-left quarter and a bar along
    the bottom-right, black elsewhere; the picture as RGB, the mask as grey."""
    w, h = size
    a = np.zeros((h, w), np.uint8)
    a[: h // 2, : w // 3] = 255
    a[h - h // 5:, w - w // 4:] = 160
    return Image.fromarray(np.stack([a] * 3, -1), "RGB"), Image.fromarray(a, "L")


AUGMENTS = [Augment(), Augment(flip=True), Augment(crop_x=0.0, crop_y=1.0, zoom=1.3),
            Augment(flip=True, crop_x=0.9, crop_y=0.2, zoom=1.07)]


@pytest.mark.parametrize("aug", AUGMENTS)
@pytest.mark.parametrize("size", [(32, 32), (48, 24), (24, 40)])
def test_a_mask_follows_crop_flip_and_bucket_resize_pixel_for_pixel(tmp_path, aug, size):
    """The image's own content equals its mask, so after any crop, flip, zoom and bucket resize each mask pixel
    must still equal its image pixel."""
    image, mask = picture((90, 60))
    image.save(tmp_path / "a.png")
    mask.save(tmp_path / "a-masklabel.png")

    from trainer.data.masks import MaskRef
    pixels, got = load_with_mask(tmp_path / "a.png", size, aug, MaskRef("file", tmp_path / "a-masklabel.png", "x"))
    assert got.shape == (size[1], size[0]) and pixels.shape == (size[1], size[0], 3)
    assert np.abs((pixels[..., 0] + 1) / 2 - got).max() < 1.5 / 255
    assert np.array_equal(pixels, load_pixels(tmp_path / "a.png", size, aug))  # the pixels are untouched
    # and the mask is where the augmentation puts it: the top-left block, mirrored by a flip
    expected = np.asarray(crop_to(mask, size, aug), np.float32) / 255
    assert np.array_equal(got, expected)
    top = got[: size[1] // 5]
    lit = top.mean(axis=0) > 0.5
    if lit.any():
        side = np.flatnonzero(lit).mean() / size[0]
        assert (side > 0.5) == aug.flip


def test_a_jpeg_decoded_at_reduced_scale_keeps_its_mask_aligned(tmp_path):
    """A big JPEG decodes at 1/2..1/8 scale (draft): its full-size mask is brought to that size first."""
    image, mask = picture((800, 600))
    image.save(tmp_path / "big.jpg", quality=95)
    mask.save(tmp_path / "big-masklabel.png")

    from trainer.data.masks import MaskRef
    for aug in AUGMENTS:
        pixels, got = load_with_mask(tmp_path / "big.jpg", (64, 48), aug,
                                     MaskRef("file", tmp_path / "big-masklabel.png", "x"))
        assert np.abs((pixels[..., 0] + 1) / 2 - got).mean() < 0.02  # JPEG noise only, no shift


def test_latent_grid_is_the_area_average_and_weights_clamp_and_normalise():
    mask = np.zeros((8, 12), np.float32)
    mask[:, :6] = 1.0
    mask[0, 6] = 0.5
    grid = to_latent_grid(mask, (3, 2))  # 4x4 pixel cells
    assert grid.shape == (2, 3)
    assert np.allclose(grid, [[1.0, 0.5 / 16 * 1 + 0.5, 0.0], [1.0, 0.5, 0.0]])
    odd = to_latent_grid(np.ones((10, 10), np.float32), (3, 3))  # not a multiple: box filter
    assert odd.shape == (3, 3) and np.allclose(odd, 1.0)
    w = loss_weights(grid, 0.1, False)
    assert np.allclose(w, np.clip(grid, 0.1, 1.0)) and w.min() == pytest.approx(0.1)
    n = loss_weights(grid, 0.1, True)
    assert n.mean() == pytest.approx(1.0) and np.allclose(n / n[0, 0], w / w[0, 0])
    assert not loss_weights(np.zeros((2, 2), np.float32), 0.0, True).any()  # all zero stays zero, no NaN
    from trainer.config import ConceptConfig
    c = ConceptConfig(masks="file", unmasked_weight=0.25)
    assert batch_weights([None, None], [c, c]) is None
    both = batch_weights([grid, None], [c, c])
    assert both.shape == (2, 1, 2, 3) and np.array_equal(both[1, 0], np.ones((2, 3)))  # no mask: weight 1
    assert np.allclose(both[0, 0], np.clip(grid, 0.25, 1.0))


# ---- the loss --------------------------------------------------------------------------------------------

def test_diffusion_loss_weighs_each_element():
    sched = losses.configure_noise_scheduler({"num_train_timesteps": 1000, "beta_schedule": "scaled_linear",
                                              "beta_start": 0.00085, "beta_end": 0.012}, "epsilon", False)
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(2, 4, 3, 5, generator=g), torch.randn(2, 4, 3, 5, generator=g)
    t = torch.tensor([10, 500])
    weight = torch.rand(2, 1, 3, 5, generator=g)
    got = losses.diffusion_loss(pred, target, t, sched, element_weight=weight)
    expected = (((pred - target) ** 2) * weight).mean(dim=(1, 2, 3)).mean()
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    assert losses.diffusion_loss(pred, target, t, sched, element_weight=torch.ones(2, 1, 3, 5)).item() == \
        pytest.approx(losses.diffusion_loss(pred, target, t, sched).item(), rel=1e-6)
    with pytest.raises(ValueError, match="element_weight"):
        losses.diffusion_loss(pred, target, t, sched, element_weight=torch.ones(2, 1, 4, 5))


def prediction_gradient(preset, monkeypatch):
    """Run step.micro_batch_loss on the first micro-batch of epoch 0 and backpropagate: (effective weight of each
    element of the UNet's prediction, recovered from its gradient, B x C x h x w; the batch). For the MSE loss
    d loss / d pred = 2 (pred - target) w / (B C h w), so w = grad B C h w / (2 (pred - target))."""
    from trainer.data.data import EpochPlan, collect_items
    from trainer.model.training_model import TrainingModel
    from trainer.train.processes import make_accelerator
    from trainer.train.step import micro_batch_loss
    items = collect_items(preset)
    model = TrainingModel.load(preset, items, torch.device("cpu"), lambda e: None)
    plan = EpochPlan(preset, items)
    plan.prepare(model.components, "cpu", model.frozen_dtype, encode_text=True, emit=lambda e: None)
    batch = next(plan.iter_epoch(0))[0]
    seen = {}
    unet, forward, target_of = model.components.unet, model.components.unet.forward, losses.training_target

    def watched_forward(*a, **k):
        out = forward(*a, **k)
        out.sample.retain_grad()
        seen["pred"] = out.sample
        return out

    def watched_target(*a, **k):
        seen["target"] = target_of(*a, **k)
        return seen["target"]
    monkeypatch.setattr(unet, "forward", watched_forward)
    monkeypatch.setattr(losses, "training_target", watched_target)
    loss = micro_batch_loss(batch, model, make_accelerator(preset), preset.training, seed=preset.general.seed,
                            epoch=0)
    loss.backward()
    pred, target = seen["pred"], seen["target"]
    assert pred.grad is not None
    scale = pred.numel() / (2 * (pred.detach() - target.detach()))
    return pred.grad * scale, batch


@pytest.mark.parametrize("cache_latents", [True, False])
def test_with_a_left_half_mask_the_right_half_gets_no_gradient(tmp_path, tiny_model_dir, cache_latents,
                                                               monkeypatch):
    """Left half masked in, unmasked_weight 0: the gradient of the loss on the UNet's prediction is zero on the
    right half of the latent grid and not on the left; with 0.1 the right half counts a tenth of the left."""
    folder = masked_folder(tmp_path / "imgs")
    weights = {}
    for uw in (0.0, 0.1):
        preset = make_preset(tmp_path / f"uw{uw}", tiny_model_dir, folder,
                             concepts=[{"name": "m", "path": str(folder), "masks": "file", "unmasked_weight": uw}],
                             training={"cache_latents": cache_latents, "batch_size": 2})
        w, batch = prediction_gradient(preset, monkeypatch)
        assert batch.mask_weights.shape == (2, 1, 8, 8)  # the tiny VAE makes 32 px 8 latent cells
        weights[uw] = w
    right, left = weights[0.0][..., 4:], weights[0.0][..., :4]
    assert torch.count_nonzero(right) == 0
    assert torch.allclose(left, torch.ones_like(left), atol=1e-3)
    assert torch.allclose(weights[0.1][..., 4:], torch.full_like(right, 0.1), atol=1e-3)
    assert torch.allclose(weights[0.1][..., :4], torch.ones_like(left), atol=1e-3)


def test_normalised_area_and_images_without_a_mask(tmp_path, tiny_model_dir, monkeypatch):
    """normalize_masked_area_loss divides each masked sample's weights by their mean; an image without a mask in
    the masked concept trains with weight 1 everywhere."""
    folder = masked_folder(tmp_path / "imgs", sizes=((32, 32),) * 2, masked=[0])
    preset = make_preset(tmp_path, tiny_model_dir, folder, training={"batch_size": 2},
                         concepts=[{"name": "m", "path": str(folder), "masks": "file", "unmasked_weight": 0.2,
                                    "normalize_masked_area_loss": True}])
    w, batch = prediction_gradient(preset, monkeypatch)
    assert len(batch.positions) == 2
    masked = [k for k in range(2) if batch.mask_weights[k].min() < batch.mask_weights[k].max()]
    assert len(masked) == 1
    m, u = masked[0], 1 - masked[0]
    mean = (1.0 + 0.2) / 2
    assert torch.allclose(w[m, ..., :4], torch.full_like(w[m, ..., :4], 1 / mean), atol=1e-3)
    assert torch.allclose(w[m, ..., 4:], torch.full_like(w[m, ..., 4:], 0.2 / mean), atol=1e-3)
    assert torch.allclose(w[u], torch.ones_like(w[u]), atol=1e-3)


# ---- augmentation and buckets through the plan -------------------------------------------------------------

@pytest.mark.parametrize("flip", [False, True])
def test_plan_batches_carry_masks_through_flip_and_bucket_resize(tmp_path, flip):
    """A 64x40 image in a 40x24 bucket (resized and cropped) with a left-half mask, always flipped or never: the
    latent weights are 1 on the masked side and the unmasked weight on the other, mirrored by the flip."""
    folder = masked_folder(tmp_path / "imgs", sizes=[(64, 40)])
    preset = preset_for(tmp_path, folder, concept={"masks": "file", "unmasked_weight": 0.0, "random_flip": flip,
                                                   "random_flip_probability": 1.0},
                        training={"resolution": "32", "cache_latents": False, "batch_size": 1})
    from trainer.data.data import EpochPlan, collect_items
    plan = EpochPlan(preset, collect_items(preset))
    batch = next(plan.iter_epoch(0))[0]
    size = plan.layout(0)[0][0].size
    assert size == (40, 24)  # aspect bucket of 64x40 at 32 px
    grid = batch.mask_weights[0, 0].numpy()
    assert grid.shape == (24 // 8, 40 // 8)  # before prepare: SD's 8 px per latent cell
    masked_side = grid[:, 3:] if flip else grid[:, :2]
    other_side = grid[:, :2] if flip else grid[:, 3:]
    assert np.all(masked_side > 0.99) and np.all(other_side < 0.01)


# ---- alpha channels ----------------------------------------------------------------------------------------

def test_alpha_channel_masks(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:, :16, 3] = 255  # opaque left half, transparent right half
    Image.fromarray(rgba, "RGBA").save(folder / "cut.png")
    Image.new("RGB", (32, 32), (0, 0, 255)).save(folder / "plain.png")
    Image.new("RGB", (32, 32), (0, 0, 255)).save(folder / "plain-masklabel.png")  # alpha mode: an image
    for name in ("cut", "plain", "plain-masklabel"):
        (folder / f"{name}.txt").write_text("x\n")
    preset = preset_for(tmp_path, folder, concept={"masks": "alpha", "unmasked_weight": 0.3},
                        training={"cache_latents": False, "batch_size": 1})
    from trainer.data.data import EpochPlan, collect_items
    items = collect_items(preset)
    assert {i.path.name: i.mask is not None for i in items} == {"cut.png": True, "plain.png": False,
                                                                "plain-masklabel.png": False}
    cut = next(i for i in items if i.path.name == "cut.png")
    pixels, mask = load_with_mask(cut.path, (32, 32), Augment(), cut.mask)
    assert np.allclose(mask[:, :16], 1.0) and np.allclose(mask[:, 16:], 0.0)
    assert np.allclose(pixels[:, 16:], 1.0)  # transparency is still flattened onto white for the pixels
    plan = EpochPlan(preset, items)
    for step in plan.iter_epoch(0):
        batch = step[0]
        if batch.mask_weights is not None:
            g = batch.mask_weights[0, 0]
            assert torch.allclose(g[:, :2], torch.ones(4, 2)) and torch.allclose(g[:, 2:], torch.full((4, 2), 0.3))
    assert sum(step[0].mask_weights is not None for step in plan.iter_epoch(0)) == 1


# ---- cache ---------------------------------------------------------------------------------------------

def test_the_cache_keeps_masks_and_a_changed_mask_re_encodes(tmp_path, components):
    from trainer.data.data import EpochPlan, collect_items
    folder = masked_folder(tmp_path / "imgs", sizes=((32, 32),) * 3)
    preset = preset_for(tmp_path, folder, concept={"masks": "file", "unmasked_weight": 0.0},
                        training={"batch_size": 1})

    def prepare():
        plan = EpochPlan(preset, collect_items(preset))
        plan.prepare(components, "cpu", torch.float32, False, lambda e: None)
        return plan

    first = prepare()
    assert first.report["latents_encoded"] == 3
    cached = [step[0].mask_weights for step in first.iter_epoch(0)]
    assert all(w is not None and w.shape == (1, 1, 8, 8) for w in cached)
    assert all(torch.equal(w[0, 0, :, :4], torch.ones(8, 4)) and not w[0, 0, :, 4:].any() for w in cached)
    assert prepare().report["latents_encoded"] == 0
    mask = folder / "img_1-masklabel.png"
    half_mask((32, 32), left=False).save(mask)  # the other half now
    os.utime(mask, ns=(1, 1))
    again = prepare()
    assert again.report["latents_encoded"] == 1  # the masked image's entry has a new key
    weights = {again.items[spec.items[0]].path.name: step_batches[0].mask_weights
               for steps, step_batches in zip(again.layout(0), again.iter_epoch(0)) for spec in steps}
    assert torch.equal(weights["img_1.png"][0, 0, :, 4:], torch.ones(8, 4))
    assert not weights["img_0.png"][0, 0, :, 4:].any()
    # switching masks off uses the plain entries: a new key again, no mask in the batch
    for mask in folder.glob("*-masklabel.png"):
        mask.unlink()  # else they are images now
    preset.concepts[0].masks = "off"
    plain = prepare()
    assert plain.report["latents_encoded"] == 3 and all(s[0].mask_weights is None for s in plain.iter_epoch(0))


# ---- inputs: files, statistics, the log, refusals ---------------------------------------------------------

def test_mask_files_are_not_images_and_stats_count_with_and_without(tmp_path):
    from trainer.data.stats import concept_stats, format_stats
    folder = masked_folder(tmp_path / "imgs", sizes=((32, 32),) * 5, masked=[0, 1, 2])
    half_mask((32, 32)).save(folder / "ghost-masklabel.png")  # a mask without its image
    preset = preset_for(tmp_path, folder, concept={"masks": "file"})
    (s,) = concept_stats(preset)
    assert s["error"] is None and s["usable"] == 5
    assert s["masks"]["with"] == 3 and s["masks"]["without"] == 2
    assert sorted(os.path.basename(p) for p in s["masks"]["without_examples"]) == ["img_3.png", "img_4.png"]
    assert [os.path.basename(k["path"]) for k in s["skipped"]] == ["ghost-masklabel.png"]
    text = format_stats([s])
    assert "3 image(s) with a mask, 2 without (trained unmasked)" in text and "img_3.png" in text
    preset.concepts[0].masks = "off"  # then a mask file is an image like any other
    (off,) = concept_stats(preset)
    assert off["masks"] is None and off["usable"] == 9
    preset.concepts[0].masks, preset.concepts[0].mask_suffix = "file", "_m"  # other suffix: no mask found
    (other,) = concept_stats(preset)
    assert other["masks"]["with"] == 0 and other["usable"] == 9


def test_the_run_says_once_which_images_have_no_mask(tmp_path, components):
    from trainer.data.data import EpochPlan, collect_items
    folder = masked_folder(tmp_path / "imgs", sizes=((32, 32),) * 3, masked=[0])
    preset = preset_for(tmp_path, folder, concept={"masks": "file"})
    events = []
    EpochPlan(preset, collect_items(preset)).prepare(components, "cpu", torch.float32, False, events.append)
    said = [e for e in events if isinstance(e, ev.Log) and "mask" in e.text]
    assert len(said) == 1 and said[0].level == "warning"
    assert "1 of 3 images have one" in said[0].text and "img_1.png, img_2.png" in said[0].text


def test_a_mask_of_the_wrong_size_is_refused_by_name(tmp_path):
    from trainer.data.data import collect_items
    from trainer.data.stats import concept_stats
    folder = masked_folder(tmp_path / "imgs", sizes=((32, 32),) * 2)
    half_mask((32, 30)).save(folder / "img_1-masklabel.png")
    preset = preset_for(tmp_path, folder, concept={"masks": "file"})
    with pytest.raises(InputError, match=r"concepts\.0\.masks: mask file .*img_1-masklabel\.png is 32×30 but its "
                                         r"image img_1\.png is 32×32"):
        collect_items(preset)
    (s,) = concept_stats(preset)
    assert "img_1-masklabel.png" in s["error"]  # `stats` exits 2 on it, the window shows it in red
    (folder / "img_1-masklabel.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match="img_1-masklabel.png cannot be read as a mask"):
        collect_items(preset)


def test_the_preset_checks_the_suffix():
    from trainer.config import ConceptConfig, Preset
    preset = Preset(concepts=[ConceptConfig(masks="file", mask_suffix="")])
    assert any(p.startswith("concepts.0.mask_suffix:") for p in validate(preset))
    preset.concepts[0].masks = "alpha"
    assert not any(p.startswith("concepts.0.mask_suffix:") for p in validate(preset))


def test_a_masked_run_trains_end_to_end(tmp_path, tiny_model_dir):
    folder = masked_folder(tmp_path / "imgs")
    preset = make_preset(tmp_path, tiny_model_dir, folder, training={"max_steps": 2},
                         concepts=[{"name": "m", "path": str(folder), "masks": "file", "random_flip": True}])
    finished, events = run_stopping_at(preset)
    assert finished.outcome == "completed"
    assert any(isinstance(e, ev.Log) and "4 of 4 images have one" in e.text for e in events)


def test_a_changed_mask_file_is_a_changed_image_for_resume():
    """A backup's dataset record holds the mask file's hash with its image's: resume sees a new mask as a changed
    image (and asks), while an image without a mask keeps the record older backups have."""
    from trainer.data.data import ImageItem
    from trainer.data.inputs import dataset_changes, dataset_record
    from pathlib import Path

    from trainer.data.masks import MaskRef
    plain = ImageItem(Path("a.png"), 0, digest="d1", captions=("x",))
    masked = ImageItem(Path("b.png"), 0, digest="d2", captions=("x",), mask=MaskRef("file", Path("b-masklabel.png"), "m1"))
    before = dataset_record([plain, masked])
    assert before["a.png"][0] == "d1"
    after = dataset_record([plain, ImageItem(Path("b.png"), 0, digest="d2", captions=("x",),
                                             mask=MaskRef("file", Path("b-masklabel.png"), "m2"))])
    assert dataset_changes(before, after) == {"images changed": ["b.png"]}
