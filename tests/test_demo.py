"""The embedded demo: its generated images and captions, the fitted VAE, and make_demo's folders."""
from __future__ import annotations

import json

import pytest
import torch

from trainer.demo import (BACKGROUNDS, COLORS, SHAPES, build_tiny_components, demo_pixels, fit_demo_vae,
                          load_pixels, make_demo, make_demo_images, reconstruction_error)


def test_demo_images_have_matching_captions(tmp_path):
    count = make_demo_images(tmp_path, per_combo=1)
    assert count == len(COLORS) * len(SHAPES) * len(BACKGROUNDS)
    pngs = sorted(tmp_path.glob("*.png"))
    assert len(pngs) == count
    for png in pngs:
        color, shape, background, _ = png.stem.split("_")
        caption = png.with_suffix(".txt").read_text().strip()
        assert caption == f"a {color} {shape} on a {background} background"
    pixels = load_pixels(tmp_path)
    assert pixels.shape == (count, 3, 64, 64) and pixels.min() >= -1 and pixels.max() <= 1


def test_fitted_vae_reconstructs_the_demo_images():
    torch.manual_seed(0)
    vae = build_tiny_components(seed=0, vae_norm_groups=8).vae
    pixels = demo_pixels()
    before = reconstruction_error(vae, pixels)
    steps = fit_demo_vae(vae, pixels, seconds=600, max_steps=60, seed=0)  # steps, not time, end this fit
    after = reconstruction_error(vae, pixels)
    assert steps == 60
    assert after < before / 2, (before, after)  # a minute's fit in make_demo reaches about before / 30
    assert not any(p.requires_grad for p in vae.parameters())
    # The posterior stays near-deterministic: the log-variance half of quant_conv got no update.
    with torch.no_grad():
        std = vae.encode(pixels[:4]).latent_dist.std
    assert float(std.max()) < 0.01


def test_make_demo_writes_a_loadable_model_and_images_and_is_idempotent(tmp_path, monkeypatch):
    import trainer.demo as demo
    fits = []
    real_fit = demo.fit_demo_vae

    def short_fit(vae, pixels, seconds=60.0, seed=0, **kwargs):
        fits.append(seconds)
        return real_fit(vae, pixels, seconds=seconds, seed=seed, max_steps=3)

    monkeypatch.setattr(demo, "fit_demo_vae", short_fit)
    folder = make_demo(tmp_path / "demo", seed=3)
    assert fits, "make_demo fits the VAE"
    images = sorted((folder / "images").glob("*.png"))
    assert len(images) == len(COLORS) * len(SHAPES) * len(BACKGROUNDS) * demo.DEMO_PER_COMBO
    assert (folder / "model" / "model_index.json").is_file()
    assert not (folder / "model.tmp").exists() and not (folder / "images.tmp").exists()
    scale = json.loads((folder / "model" / "vae" / "config.json").read_text())["scaling_factor"]

    from trainer.models import load_model
    model = load_model(str(folder / "model"))
    with torch.no_grad():
        latents = model.vae.encode(load_pixels(folder / "images")).latent_dist.mean * model.vae.config.scaling_factor
    assert model.vae.config.scaling_factor == pytest.approx(scale)
    assert 0.5 < float(latents.std()) < 2.0  # recalibrated after the fit: about unit variance
    # the objective presets/demo.json trains is the model's own: no warning about a contradicting choice
    assert model.prediction_type == "v_prediction" and model.zero_terminal_snr
    from trainer.fields import umask_mode  # readable as the user's umask says (safetensors alone writes 0600)
    assert {p.stat().st_mode & 0o777 for p in (folder / "model").rglob("*") if p.is_file()} == {umask_mode()}

    stamps = {p: p.stat().st_mtime_ns for p in (folder / "model").rglob("*") if p.is_file()}
    stamps.update({p: p.stat().st_mtime_ns for p in images})
    make_demo(folder, seed=3)
    assert len(fits) == 1, "a second call builds nothing"
    assert stamps == {p: p.stat().st_mtime_ns for p in stamps}
