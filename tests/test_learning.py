"""The model learns its prompts: after a short training on red vs blue, each caption generates its own colour."""
from __future__ import annotations

import queue

import numpy as np
import torch
from PIL import Image

from tiny_presets import make_preset
from trainer.config import SamplePrompt
from trainer.model.models import load_model
from trainer.train.loop import train
from trainer.train.sampling import generate, make_pipeline


def mean_latent(vae, color) -> torch.Tensor:
    pixels = torch.from_numpy(np.asarray(Image.new("RGB", (32, 32), color), dtype=np.float32) / 127.5 - 1)
    with torch.no_grad():
        return vae.encode(pixels.permute(2, 0, 1)[None]).latent_dist.mean[0] * vae.config.scaling_factor


def test_generated_latents_follow_their_captions(tiny_model_dir, color_concept, tmp_path):
    preset = make_preset(tmp_path, tiny_model_dir, color_concept,
                         training={"epochs": 200, "batch_size": 4, "learning_rate": 1e-3})
    finished = train(preset, lambda e: None, queue.Queue())
    assert finished.outcome == "completed", finished.message
    model = load_model(finished.output_path, base_config=str(tiny_model_dir))
    targets = {"red": mean_latent(model.vae, (230, 20, 20)), "blue": mean_latent(model.vae, (20, 40, 230))}
    pipe = make_pipeline(model.unet, model.vae, model.text_encoder, model.tokenizer, model.noise_scheduler.config,
                         "ddim")
    for name, other in (("red", "blue"), ("blue", "red")):
        distances = {"own": [], "other": []}
        for seed in range(2):
            prompt = SamplePrompt(prompt=f"a {name} square", seed=seed, cfg_scale=7.0, steps=20, width=32, height=32)
            latents = generate(pipe, prompt, "cpu", output_type="latent")
            distances["own"].append((latents - targets[name]).norm().item())
            distances["other"].append((latents - targets[other]).norm().item())
        assert np.mean(distances["own"]) < np.mean(distances["other"]), (name, distances)
