"""Tool specs (generate-data, compare, caption): dataclass trees versioned and validated like presets. No UI here."""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from trainer.config import DEVICES, OUTPUT_DTYPES, SAMPLERS, SamplePrompt
from trainer.fields import (ConfigError, _from_dict, atomic_write_text, field_problems, in_file, opt, read_json_file,
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


CAPTIONERS = ("none", "blip", "florence2", "qwen2_vl")
# The model each captioner loads when captioner_model is empty (a Hugging Face repo id, downloaded once on first use).
# Florence-2: the florence-community conversion, which transformers' own Florence2ForConditionalGeneration reads;
# microsoft/Florence-2-* hold the original remote-code layout, which SeaChange does not run.
DEFAULT_CAPTIONER_MODELS = {"blip": "Salesforce/blip-image-captioning-large",
                            "florence2": "florence-community/Florence-2-base", "qwen2_vl": "Qwen/Qwen2-VL-2B-Instruct"}
DEFAULT_TAGGER_MODEL = "SmilingWolf/wd-vit-tagger-v3"
FLORENCE_CAPTION_TASKS = ("<CAPTION>", "<DETAILED_CAPTION>", "<MORE_DETAILED_CAPTION>")
CAPTION_MODES = ("missing", "all", "prepend", "append")


@dataclass
class CaptionSpec:
    """Caption a folder of images with a local vision-language model and/or a WD tagger (trainer.tools.captioning)."""
    image_dir: str = opt("", "Image folder", "The images to caption; each caption is written beside its image "
                         "(photo.jpg -> photo.txt).", kind="dir")
    include_subfolders: bool = opt(False, "Include subfolders", "Also caption the images in every folder below "
                                   "the image folder.")
    mask_suffix: str = opt("-masklabel", "Mask suffix", "Loss masks beside the images (cat-masklabel.png beside "
                           "cat.jpg, as masked training reads them) are not captioned; empty: every image is.")
    mode: str = opt("missing", "Mode", "missing: only images without a caption (or with an empty one); all: "
                    "replace every caption; prepend / append: put the new text before / after each line of an "
                    "existing caption (an image without one just gets the text). A stopped run resumes.",
                    choices=CAPTION_MODES)
    separator: str = opt(", ", "Separator", "Put between the new text and an existing caption in prepend and "
                         "append modes.")
    captioner: str = opt("florence2", "Captioner", "The model that describes each image. blip: "
                         "BlipForConditionalGeneration; florence2: Florence2ForConditionalGeneration (transformers "
                         "4.56 or newer); qwen2_vl: Qwen2VLForConditionalGeneration; each with its AutoProcessor "
                         "parts. none: tags only.", choices=CAPTIONERS)
    captioner_model: str = opt("", "Captioner model", "A local model folder, or a Hugging Face repo id (e.g. "
                               "Salesforce/blip-image-captioning-large, florence-community/Florence-2-base, "
                               "Qwen/Qwen2-VL-2B-Instruct), downloaded once into the Hugging Face cache. Empty: "
                               "that default for the chosen captioner.", kind="dir")
    prompt: str = opt("", "Prompt", "Florence-2: a task, <CAPTION>, <DETAILED_CAPTION> or <MORE_DETAILED_CAPTION> "
                      "(empty: <DETAILED_CAPTION>); Qwen2-VL: an instruction (empty: a short caption request); "
                      "BLIP: optional text the caption starts with (e.g. 'a photograph of').")
    max_new_tokens: int = opt(75, "Max new tokens", "The longest caption the model may write, in its tokens "
                              "(SD 1.5 reads about 75 CLIP tokens of a caption).", min=1, max=1024)
    tagger: str = opt("none", "Tagger", "wd: a WD tagger (SmilingWolf's ONNX models, run by onnxruntime) adds "
                      "tags after the caption, or alone when the captioner is none.", choices=("none", "wd"))
    tagger_model: str = opt("", "Tagger model", "A folder with model.onnx and selected_tags.csv, or a Hugging Face "
                            "repo id (e.g. SmilingWolf/wd-vit-tagger-v3, the default when empty).", kind="dir")
    tag_threshold: float = opt(0.35, "Tag threshold", "A general tag is written when the tagger's confidence is at "
                               "least this.", min=0.0, max=1.0)
    character_threshold: float = opt(0.85, "Character threshold", "A character tag is written when the tagger's "
                                     "confidence is at least this.", min=0.0, max=1.0)
    replace_underscores: bool = opt(True, "Spaces in tags", "Write long_hair as 'long hair' (emoticons such as ^_^ "
                                    "keep theirs). Ratings are never written.")
    prefix: str = opt("", "Prefix", "Text put first in every new caption, e.g. a trigger word (joined with ', ').")
    suffix: str = opt("", "Suffix", "Text put last in every new caption (joined with ', ').")
    batch_size: int = opt(4, "Batch size", "Images captioned at once.", min=1, max=64)
    device: str = opt("auto", "Device", "auto picks the GPU when there is one.", choices=DEVICES)
    dtype: str = opt("auto", "Precision", "auto: bfloat16 (float16 where the GPU lacks it) on a GPU, float32 on a "
                     "CPU.", choices=DTYPES)
    caption_extension: str = opt(".txt", "Caption extension", "SeaChange trains from .txt; .caption is for other "
                                 "trainers (kohya's --caption_extension).", choices=(".txt", ".caption"))
    workspace_dir: str = opt("", "Journal folder", "Where the journal of each image folder is kept (never in the "
                             "image folder): which images a run captioned, so that a stopped run resumes without "
                             "captioning or appending twice. Empty: SeaChange's cache folder "
                             "(~/.cache/seachange/caption-journals), the same whatever folder a run starts from.",
                             kind="dir")


KINDS = {"generate_data": GenerateDataSpec, "compare": CompareSpec, "caption": CaptionSpec}


def kind_of(spec: Any) -> str:
    return next(name for name, cls in KINDS.items() if isinstance(spec, cls))


def validate_spec(spec: Any) -> list[str]:
    """Every problem as 'dotted.path: reason' (paths are checked when the tool runs)."""
    problems = field_problems(spec, "")
    if isinstance(spec, CaptionSpec):
        return problems + caption_problems(spec)
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


def caption_problems(spec: CaptionSpec) -> list[str]:
    """What makes a caption spec unable to run, as 'field: reason': no image folder, nothing to do (no captioner
    and no tagger), a Florence-2 prompt that is not a captioning task. Folders and models are checked when the
    tool runs (trainer.tools.captioning.check_inputs)."""
    problems = []
    if not spec.image_dir.strip():
        problems.append("image_dir: choose the folder of images to caption")
    if spec.captioner == "none" and spec.tagger == "none":
        problems.append("captioner: nothing to do: choose a captioner, a tagger (tagger: wd) or both")
    prompt = spec.prompt.strip()
    if spec.captioner == "florence2" and prompt and prompt not in FLORENCE_CAPTION_TASKS:
        problems.append(f"prompt: Florence-2 takes a task, one of {', '.join(FLORENCE_CAPTION_TASKS)} (got "
                        f"{prompt!r})")
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


def spec_from_dict(data: dict) -> GenerateDataSpec | CompareSpec | CaptionSpec:
    data = read_versioned(data, "spec", SPEC_VERSION, SPEC_MIGRATIONS)
    kind = data.pop("kind", None)
    if kind not in KINDS:
        raise ConfigError(f"kind: expected one of {', '.join(KINDS)}, got {kind!r}")
    spec = _from_dict(KINDS[kind], data)
    problems = validate_spec(spec)
    if problems:
        raise ConfigError(problems[0])
    return spec


def load_spec(path: str | Path, expected: type | None = None) -> GenerateDataSpec | CompareSpec | CaptionSpec:
    data = read_json_file(path, "spec")  # its own errors name the file
    spec = in_file(path, lambda: spec_from_dict(data))
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
