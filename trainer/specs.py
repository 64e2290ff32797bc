"""Tool specs (generate-data, compare): dataclass trees versioned and validated like presets. No UI here."""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from trainer.config import DEVICES, OUTPUT_DTYPES, SAMPLERS, SamplePrompt
from trainer.fields import (ConfigError, _from_dict, atomic_write_text, field_problems, opt, read_json_file,
                            read_versioned)

SPEC_VERSION = 1
# Migrations: SPEC_MIGRATIONS[n] turns a version-n spec dict into version n+1 (both kinds). Keep a fixture per entry.
SPEC_MIGRATIONS: dict = {}
DTYPES = ("auto", *OUTPUT_DTYPES)  # auto: float16 on a GPU, float32 on a CPU (resolve_dtype)
LORA_STRENGTH_LIMIT = 10.0  # |strength| beyond this is a typo, not a setting (A1111's slider ends at 2)


@dataclass
class GenerateDataSpec:
    """Build a training set with a model: expand prompt templates, generate, write image + caption pairs."""
    base_model: str = opt("", "Generator model", "The model that draws the images: a diffusers folder, a single "
                          ".safetensors or a .ckpt (any model SeaChange loads).", kind="path")
    base_config: str = opt("", "Base config", "Optional diffusers config folder for a single-file model whose "
                           "shapes are not SD 1.5's.", kind="dir")
    output_dir: str = opt("workspace/generated", "Output folder", "Where image.png + image.txt pairs and "
                          "manifest.json are written. Running again resumes: finished images are skipped.",
                          kind="dir")
    prompts: list[str] = opt(None, "Prompt templates", "One template per line. {a|b|c} picks one option "
                             "(nesting allowed); __name__ picks a line of the file name.txt in the wildcard "
                             "folder.", factory=list, kind="text")
    wildcard_dir: str = opt("wildcards", "Wildcard folder", "Folder of name.txt files for __name__ (one option "
                            "per line; blank lines and lines starting with # are ignored).", kind="dir")
    images_per_prompt: int = opt(1, "Images per prompt", "With total 0: every expansion of every template, this "
                                 "many images each (different seeds).", min=1, max=100000)
    total_images: int = opt(0, "Total images", "When above 0: exactly this many images, each from a random "
                            "template and expansion drawn with the seed (reproducible).", min=0, max=1000000)
    negative_prompt: str = opt("", "Negative prompt", "What to steer away from, for every image.")
    width: int = opt(512, "Width", "Image width (multiple of 8).", min=32, max=2048)
    height: int = opt(512, "Height", "Image height (multiple of 8).", min=32, max=2048)
    steps: int = opt(25, "Steps", "Sampling steps.", min=1, max=200)
    cfg_scale: float = opt(7.0, "CFG scale", "Classifier-free guidance strength.", min=1.0, max=30.0)
    sampler: str = opt("dpmpp_2m", "Sampler", "diffusers scheduler used for sampling.", choices=SAMPLERS)
    seed: int = opt(0, "Seed", "Image i uses seed + i; random expansions draw from this seed too.", min=0,
                    max=2**31 - 1)
    caption_template: str = opt("{prompt}", "Caption template", "The caption written beside each image; "
                                "{prompt} is the expanded prompt. Add a trigger word, e.g. 'mnstr, {prompt}'.")
    caption_strip: str = opt("", "Strip from captions", "Comma-separated words or phrases removed from each "
                             "caption (e.g. a style the model should not tie to the subject).")
    batch_size: int = opt(1, "Batch size", "Images generated at once (each keeps its own seed).", min=1, max=64)
    device: str = opt("auto", "Device", "auto picks the GPU when there is one.", choices=DEVICES)
    dtype: str = opt("auto", "Precision", "auto: float16 on a GPU, float32 on a CPU.", choices=DTYPES)


@dataclass
class CompareModel:
    path: str = opt("", "Model", "A diffusers folder, .safetensors or .ckpt: the base model, a save, a backup's "
                    "model or the final output.", kind="path")
    label: str = opt("", "Label", "Column title; empty uses the file or folder name (with a LoRA: NAME + LORA @ "
                     "strength). With several LoRA strengths each column adds its own: LABEL @ 0.5.")
    lora: str = opt("", "LoRA", "Optional: a LoRA for SD 1.5 (a kohya-layout .safetensors, as SeaChange, kohya, "
                    "A1111 and ComfyUI use) merged into this model for its column.", kind="file")
    lora_strength: float = opt(1.0, "LoRA strength", "How much of the LoRA is merged: 0 is the model alone, 1 the "
                               "LoRA as trained, a negative value pushes the other way. LoRA strengths, when set, "
                               "replace it.", min=-LORA_STRENGTH_LIMIT, max=LORA_STRENGTH_LIMIT)


@dataclass
class CompareSpec:
    """A labelled grid of images: sample files across steps or epochs, or the same prompts across models (a
    model with a LoRA: across LoRA strengths)."""
    source: str = opt("samples", "Source", "samples: the sample images a run already wrote; models: generate "
                      "each prompt with each model at the same seed and settings.", choices=("samples", "models"))
    samples_dir: str = opt("workspace/run", "Run folder", "A run's workspace (or its samples folder) for "
                           "source 'samples'.", kind="dir")
    columns: str = opt("steps", "Columns", "For samples: one column per sampled step, or per epoch (the last "
                       "sample of each epoch).", choices=("steps", "epochs"))
    max_columns: int = opt(0, "Max columns", "0 keeps every column; otherwise this many, evenly spaced, first "
                           "and last included.", min=0, max=10000)
    models: list[CompareModel] = opt(None, "Models", "The models to compare, one column each (a model with a "
                                     "LoRA: a column per LoRA strength).", factory=list)
    lora_strengths: list[float] = opt(None, "LoRA strengths", "Strengths to try every model's LoRA at, e.g. 0, "
                                      "0.5, 1: a column each (0: the model without its LoRA). Empty: each model's "
                                      "own LoRA strength.", factory=list)
    prompts: list[SamplePrompt] = opt(None, "Prompts", "The prompts to generate with each model, one row each "
                                      "(per seed).", factory=list)
    seeds: list[int] = opt(None, "Seeds", "Seeds to try for every prompt (a row per prompt and seed); empty "
                           "uses each prompt's own seed.", factory=list)
    output_png: str = opt("workspace/compare.png", "Export to", "The grid as one labelled PNG.", kind="file")
    replace_output: bool = opt(False, "Replace the file", "Write over the file at Export to when it exists. Off, "
                               "a comparison whose file exists stops before it starts (the window asks first).")
    cell_size: int = opt(256, "Cell size", "Each image is scaled to this many pixels on its longer side in the "
                         "grid; 0 keeps its size.", min=0, max=4096)
    base_config: str = opt("", "Base config", "Optional diffusers config folder for single-file models whose "
                           "shapes are not SD 1.5's.", kind="dir")
    device: str = opt("auto", "Device", "auto picks the GPU when there is one.", choices=DEVICES)
    dtype: str = opt("auto", "Precision", "auto: float16 on a GPU, float32 on a CPU.", choices=DTYPES)


KINDS = {"generate_data": GenerateDataSpec, "compare": CompareSpec}


def kind_of(spec: Any) -> str:
    return next(name for name, cls in KINDS.items() if isinstance(spec, cls))


def validate_spec(spec: Any) -> list[str]:
    """Every problem as 'dotted.path: reason' (paths are checked when the tool runs)."""
    problems = field_problems(spec, "")
    sizes = [("", spec)] if isinstance(spec, GenerateDataSpec) else \
        [(f"prompts.{i}.", p) for i, p in enumerate(spec.prompts)]
    for prefix, item in sizes:
        for side in ("width", "height"):
            if getattr(item, side) % 8:
                problems.append(f"{prefix}{side}: must be a multiple of 8")
    if isinstance(spec, GenerateDataSpec):
        if not any(p.strip() for p in spec.prompts):
            problems.append("prompts: no prompt template")
        if "{prompt}" not in spec.caption_template:
            problems.append("caption_template: must contain {prompt}")
    elif spec.source == "models":
        if not spec.models:
            problems.append("models: no model to compare")
        if not spec.prompts:
            problems.append("prompts: no prompt to generate")
        problems += [f"seeds.{i}: {s} is outside 0 .. 2147483647" for i, s in enumerate(spec.seeds)
                     if not 0 <= s < 2**31]
        problems += lora_problems(spec)
    return problems


def lora_problems(spec: CompareSpec) -> list[str]:
    """The LoRA settings of a model comparison that cannot run, as 'dotted.path: reason': a LoRA that is not a
    .safetensors file, a strength that is not a finite number within +-LORA_STRENGTH_LIMIT, strengths to try
    with no model that has a LoRA. Whether the files exist is checked when the tool runs (and by the window)."""
    problems = []
    for i, model in enumerate(spec.models):
        lora = model.lora.strip()
        if lora and not lora.lower().endswith(".safetensors"):
            problems.append(f"models.{i}.lora: {lora} is not a .safetensors file (a LoRA for SD 1.5 in kohya's "
                            "layout)")
        if not math.isfinite(model.lora_strength):  # NaN passes the range check
            problems.append(f"models.{i}.lora_strength: expected a finite number, got {model.lora_strength}")
    limit = LORA_STRENGTH_LIMIT
    problems += [f"lora_strengths.{k}: {s:g} is outside {-limit:g} .. {limit:g}"
                 for k, s in enumerate(spec.lora_strengths) if not -limit <= s <= limit]  # NaN fails too
    if spec.lora_strengths and not any(m.lora.strip() for m in spec.models):
        problems.append("lora_strengths: no model has a LoRA to try at these strengths (choose a model's LoRA, or "
                        "empty this)")
    return problems


def spec_from_dict(data: dict) -> GenerateDataSpec | CompareSpec:
    data = read_versioned(data, "spec", SPEC_VERSION, SPEC_MIGRATIONS)
    kind = data.pop("kind", None)
    if kind not in KINDS:
        raise ConfigError(f"kind: expected one of {', '.join(KINDS)}, got {kind!r}")
    spec = _from_dict(KINDS[kind], data)
    problems = validate_spec(spec)
    if problems:
        raise ConfigError(problems[0])
    return spec


def load_spec(path: str | Path, expected: type | None = None) -> GenerateDataSpec | CompareSpec:
    spec = spec_from_dict(read_json_file(path, "spec"))
    if expected is not None and not isinstance(spec, expected):
        wanted = next(name for name, cls in KINDS.items() if cls is expected)
        raise ConfigError(f"kind: {path} is a {kind_of(spec)!r} spec; this command needs {wanted!r}")
    return spec


def spec_to_dict(spec: Any) -> dict:
    return {"version": SPEC_VERSION, "kind": kind_of(spec), **asdict(spec)}


def save_spec(spec: Any, path: str | Path) -> None:
    atomic_write_text(path, json.dumps(spec_to_dict(spec), indent=2) + "\n")


def resolve_device(name: str) -> str:
    import torch
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: 'cuda' was chosen but no CUDA GPU is visible")
    return name


def resolve_dtype(name: str, device: str):
    import torch
    if name == "auto":
        name = "float16" if device == "cuda" else "float32"
    return getattr(torch, name)
