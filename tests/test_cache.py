"""Latent and text caches: encode counts across runs, invalidation, damaged files rebuilt, cached batches."""
from __future__ import annotations

import os

import torch

from data_helpers import mixed_folder, plan_for, preset_for, write_image
from trainer import events as ev
from trainer.data.images import Augment, load_pixels


class Counting:
    """Counts images through vae.encode and captions through the text encoder during prepare()."""

    def __init__(self, c):
        self.c, self.images, self.texts = c, 0, 0

    def __enter__(self):
        vae_encode, te_forward = self.c.vae.encode, self.c.text_encoder.forward

        def encode(x, *a, **k):
            self.images += x.shape[0]
            return vae_encode(x, *a, **k)

        def forward(ids, *a, **k):
            self.texts += ids.shape[0]
            return te_forward(ids, *a, **k)
        self.c.vae.encode, self.c.text_encoder.forward = encode, forward
        return self

    def __exit__(self, *exc):
        del self.c.vae.encode, self.c.text_encoder.forward


def prepare(preset, c, encode_text=True):
    plan = plan_for(preset)
    events = []
    with Counting(c) as count:
        plan.prepare(c, "cpu", torch.float32, encode_text, events.append)
    return plan, count, events


def test_second_run_encodes_nothing_and_batches_come_cached(tmp_path, components):
    preset = preset_for(tmp_path, mixed_folder(tmp_path / "imgs"))
    plan, first, events = prepare(preset, components)
    assert first.images == 6 and first.texts == 12  # six images; two caption lines each
    assert any(isinstance(e, ev.Status) and e.text.startswith("Caching latents") for e in events)
    plan, second, events = prepare(preset, components)
    assert second.images == 0 and second.texts == 0
    assert plan.report == {"latents_total": 6, "latents_encoded": 0, "latents_rebuilt": 0,
                           "texts_total": 12, "texts_encoded": 0, "texts_rebuilt": 0}
    assert not plan.needs_vae_encoder and not plan.needs_text_encoder
    batch = next(plan.iter_epoch(0))[0]
    assert batch.pixels is None and batch.latent_mean.shape[:2] == (len(batch.positions), 4)
    assert batch.text_embeddings.shape == (len(batch.positions), 77, 32)
    # the cached latent is the VAE's encoding of the loaded pixels
    spec = plan.layout(0)[0][0]
    pixels = load_pixels(plan.items[spec.items[0]].path, spec.size, Augment())
    with torch.no_grad():
        direct = components.vae.encode(torch.from_numpy(pixels).permute(2, 0, 1)[None].contiguous()).latent_dist
    assert torch.allclose(direct.mean[0], batch.latent_mean[0], atol=1e-5)


def test_changed_image_re_encodes_only_itself(tmp_path, components):
    folder = mixed_folder(tmp_path / "imgs")
    preset = preset_for(tmp_path, folder)
    prepare(preset, components)
    write_image(folder / "img_2.png", (40, 40), (1, 2, 3))
    os.utime(folder / "img_2.png", ns=(1, 1))  # even with an old mtime, a new size means a re-read
    _, count, _ = prepare(preset, components)
    assert count.images == 1 and count.texts == 0


def test_resolution_bucketing_and_vae_changes_re_encode(tmp_path, components):
    preset = preset_for(tmp_path, mixed_folder(tmp_path / "imgs"))
    prepare(preset, components)
    preset.training.resolution = "48"
    assert prepare(preset, components)[1].images == 6
    assert prepare(preset, components)[1].images == 0
    preset.training.aspect_bucketing = False  # every image to 48x48: those that were not square re-encode
    assert 0 < prepare(preset, components)[1].images < 6
    with torch.no_grad():
        components.vae.encoder.conv_in.bias[0] += 0.01
    try:
        _, count, _ = prepare(preset, components, encode_text=False)
        assert count.images == 6 and count.texts == 0
    finally:
        with torch.no_grad():
            components.vae.encoder.conv_in.bias[0] -= 0.01


def test_damaged_cache_files_are_rebuilt_not_used(tmp_path, components):
    preset = preset_for(tmp_path, mixed_folder(tmp_path / "imgs"))
    plan, _, _ = prepare(preset, components)
    files = sorted((tmp_path / "cache" / "latents").rglob("*.safetensors"))
    assert len(files) == 6
    files[0].write_bytes(files[0].read_bytes()[:-7])  # half-written
    data = bytearray(files[1].read_bytes())
    data[-3] ^= 0xFF  # one flipped byte in the tensor data
    files[1].write_bytes(bytes(data))
    files[2].write_bytes(b"")
    texts = sorted((tmp_path / "cache" / "text").rglob("*.safetensors"))
    texts[0].write_bytes(b"garbage")
    plan, count, events = prepare(preset, components)
    assert count.images == 3 and count.texts == 1
    assert plan.report["latents_rebuilt"] == 3 and plan.report["texts_rebuilt"] == 1
    assert any("3 damaged" in e.text for e in events if isinstance(e, ev.Log))
    assert prepare(preset, components)[1].images == 0


def test_augmented_variants_and_varying_captions(tmp_path, components):
    preset = preset_for(tmp_path, mixed_folder(tmp_path / "imgs"),
                        concept={"random_flip": True, "crop_jitter": True, "image_variations": 3,
                                 "shuffle_tags": True, "repeats": 4.0})
    plan, count, _ = prepare(preset, components)
    assert count.images == 6 * 3 * 2 and count.texts == 0  # 3 variants x 2 flips; shuffled text is not cached
    assert plan.needs_text_encoder
    batches = [b for step in plan.iter_epoch(0) for b in step]
    assert all(b.text_embeddings is None and b.latent_mean is not None for b in batches)
    full = [(b.captions, b.latent_mean) for step in plan.iter_epoch(1) for b in step]
    resumed = [(b.captions, b.latent_mean) for step in plan.iter_epoch(1, 2) for b in step]
    tail = full[len(full) - len(resumed):]
    assert all(a[0] == b[0] and torch.equal(a[1], b[1]) for a, b in zip(tail, resumed))
    assert prepare(preset, components)[1].images == 0


def test_caption_dropout_caches_the_empty_caption(tmp_path, components):
    preset = preset_for(tmp_path, mixed_folder(tmp_path / "imgs"), concept={"caption_dropout": 0.5})
    plan, count, _ = prepare(preset, components)
    assert count.texts == 13 and "" in plan.text_keys
    batches = [b for step in plan.iter_epoch(0) for b in step]
    assert all(b.text_embeddings is not None for b in batches)
