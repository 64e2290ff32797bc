"""The embedded demo: its generated images and captions, the fitted VAE, and make_demo's folders."""
from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest
import torch

from trainer.tools.demo import (BACKGROUNDS, COLORS, SHAPES, build_tiny_components, demo_pixels, draw_shape,
                                fit_demo_vae, load_pixels, make_demo, make_demo_images, reconstruction_error)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_demo  # noqa: E402  (after the path is set)


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
    threads, threads_in_fit = torch.get_num_threads(), set()
    torch.set_num_threads(2)
    try:
        steps = fit_demo_vae(vae, pixels, seconds=600, max_steps=60, seed=0,  # steps, not time, end this fit
                             on_step=lambda step, done: threads_in_fit.add(torch.get_num_threads()))
        assert threads_in_fit == {1} and torch.get_num_threads() == 2  # one thread, then as it was
    finally:
        torch.set_num_threads(threads)
    after = reconstruction_error(vae, pixels)
    assert steps == 60
    assert after < before / 2, (before, after)  # a minute's fit in make_demo reaches about before / 30
    assert not any(p.requires_grad for p in vae.parameters())
    # The posterior stays near-deterministic: the log-variance half of quant_conv got no update.
    with torch.no_grad():
        std = vae.encode(pixels[:4]).latent_dist.std
    assert float(std.max()) < 0.01


def test_make_demo_writes_a_loadable_model_and_images_and_is_idempotent(tmp_path, monkeypatch):
    import trainer.tools.demo as demo
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

    from trainer.model.models import load_model
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


def test_make_demo_says_what_it_does_and_how_far_along(tmp_path, monkeypatch):
    from trainer import events as ev
    import trainer.tools.demo as demo
    clock = [100.0]
    monkeypatch.setattr(demo.time, "monotonic", lambda: clock[0])
    real_fit = demo.fit_demo_vae

    def fit_on_a_fake_clock(vae, pixels, seconds=60.0, seed=0, on_step=None, **kwargs):
        def step(done_steps, done):  # each step takes half a fake second: 10 steps fill the 5 s budget
            clock[0] += 0.5
            on_step(done_steps, done)
        return real_fit(vae, pixels, seconds=seconds, seed=seed, max_steps=10, on_step=step)

    monkeypatch.setattr(demo, "fit_demo_vae", fit_on_a_fake_clock)
    events = []
    make_demo(tmp_path / "demo", vae_seconds=5, emit=events.append)
    statuses = [e.text for e in events if isinstance(e, ev.Status)]
    logs = [e.text for e in events if isinstance(e, ev.Log)]
    count = len(COLORS) * len(SHAPES) * len(BACKGROUNDS) * demo.DEMO_PER_COMBO
    assert statuses[:2] == [f"Demo 1/3: drawing {count} images", "Demo 2/3: making a tiny model"]
    assert statuses[-1] == "Demo 3/3: writing the model"
    fit = statuses[2:-1]
    # about once a second of the fit (one step in two here), with its share done, up to all of it
    assert 4 <= len(fit) <= 7, fit
    assert fit[0].startswith("Demo 2/3: fitting its VAE, ")
    assert fit[-1] == "Demo 2/3: fitting its VAE, 5 of 5 s (100%)"
    shares = [int(text.rsplit("(", 1)[1].rstrip("%)")) for text in fit]
    assert shares == sorted(shares) and shares[0] < 20
    assert logs[0].startswith(f"Building the demo in {tmp_path / 'demo'}") and "5 s" in logs[0]
    assert any(line.startswith(f"Demo: {count} captioned images written") for line in logs)
    assert any(line.startswith("Demo: VAE fitted to the images in 10 steps") for line in logs)
    assert logs[-1].startswith("Demo built in ")
    events.clear()
    make_demo(tmp_path / "demo", emit=events.append)
    assert events == [], "nothing to build: nothing to say"


def test_demo_benchmark_judges_colour_and_shape(tmp_path):
    rng = random.Random(0)
    for shape in ("circle", "square"):
        draw_shape("red", shape, "white", 64, rng).save(tmp_path / f"red_{shape}.png")
    draw_shape("blue", "circle", "white", 64, rng).save(tmp_path / "blue_circle.png")
    circle = bench_demo.judge(tmp_path / "red_circle.png", "a red circle on a white background")
    assert circle["colour"] and circle["shape"] and circle["iou"]["circle"] > 0.8, circle
    square = bench_demo.judge(tmp_path / "red_square.png", "a red circle on a white background")
    assert square["colour"] and not square["shape"], square  # right colours, wrong shape
    blue = bench_demo.judge(tmp_path / "blue_circle.png", "a red circle on a white background")
    assert not blue["colour"], blue
    assert bench_demo.settled([1.0, 2.0, 3.0, 4.0], [True, False, True, True]) == 3.0
    assert bench_demo.settled([1.0, 2.0], [True, False]) is None
