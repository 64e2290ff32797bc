"""Shared fixtures: a tiny SD-1.5-shaped model saved as a real diffusers folder, small concepts, presets."""
from __future__ import annotations

import os
import tempfile

import pytest
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Demos built by tests fit their VAE for a few seconds, not the minute `make-demo` spends.
os.environ.setdefault("SEACHANGE_DEMO_VAE_SECONDS", "3")
# SeaChange's own cache (captioning's journals) in a folder of this test session, never the user's
os.environ.setdefault("SEACHANGE_CACHE_DIR", tempfile.mkdtemp(prefix="seachange-test-cache-"))
# transformers resolves its names lazily, and two threads resolving them at once (the window's concept statistics
# thread, which reads captions with CLIPTokenizer, and a test building a tiny model) can fail with "cannot import
# name": resolve the tokenizers those threads use once, here, on the main thread.
from transformers import BertTokenizer, CLIPTokenizer  # noqa: E402,F401


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from trainer.tools.demo import build_tiny_components, save_diffusers_folder
    return save_diffusers_folder(build_tiny_components(seed=0), tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def color_concept(tmp_path_factory):
    """Eight 32 px images: four plain red ones captioned red, four plain blue ones captioned blue."""
    folder = tmp_path_factory.mktemp("colors")
    for i in range(4):
        for name, rgb in (("red", (230, 20, 20)), ("blue", (20, 40, 230))):
            Image.new("RGB", (40, 32), rgb).save(folder / f"{name}{i}.png")
            (folder / f"{name}{i}.txt").write_text(f"a {name} square\n")
    return folder


@pytest.fixture(scope="module")
def components(tiny_model_dir):
    """The tiny model loaded (models.SDComponents), its VAE and text encoder frozen, once per test module."""
    from trainer.model.models import load_model
    c = load_model(str(tiny_model_dir))
    c.vae.requires_grad_(False).eval()
    c.text_encoder.requires_grad_(False).eval()
    return c
