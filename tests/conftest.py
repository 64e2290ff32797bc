"""Shared fixtures: a tiny SD-1.5-shaped model saved as a real diffusers folder, small concepts, presets."""
from __future__ import annotations

import os

import pytest
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from trainer.demo import build_tiny_components, save_diffusers_folder
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


def make_preset(tmp_path, model_dir, concept_dir, **sections):
    """A small CPU preset over the defaults; `sections` maps 'training' etc. to dicts of overrides."""
    from trainer.config import preset_from_dict
    data = {
        "version": 1,
        "general": {"workspace_dir": str(tmp_path / "ws"), "cache_dir": str(tmp_path / "cache"), "device": "cpu",
                    "tensorboard": False, "seed": 7},
        "model": {"base_model": str(model_dir), "output_path": str(tmp_path / "out.safetensors"),
                  "output_dtype": "float32"},
        "concepts": [{"name": "colors", "path": str(concept_dir)}],
        "training": {"epochs": 1, "batch_size": 2, "learning_rate": 1e-3, "resolution": "32"},
        "sampling": {"unit": "never"},
    }
    for section, values in sections.items():
        if isinstance(values, dict):
            data[section] = {**data.get(section, {}), **values}
        else:
            data[section] = values
    return preset_from_dict(data)
