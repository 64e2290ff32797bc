"""generate-data: expand prompt templates, draw each image with a model, write image.png + image.txt pairs and a
manifest; running again resumes. No UI here."""
from __future__ import annotations

import json
import queue
import random
from dataclasses import dataclass
from pathlib import Path

from trainer import events as ev
from trainer.data.captions import strip_phrases, write_caption
from trainer.data.prompts import CHUNK, first_words, over_limit
from trainer.data.wildcards import Wildcards, WildcardError, expand_all, expand_random
from trainer.errors import InputError
from trainer.fields import atomic_write_text
from trainer.specs import GenerateDataSpec, spec_to_dict

MANIFEST = "manifest.json"
SETTINGS = ("negative_prompt", "width", "height", "steps", "cfg_scale", "sampler")


@dataclass(frozen=True)
class PlannedImage:
    name: str     # file stem: NAME.png, NAME.txt
    prompt: str
    seed: int
    caption: str


def plan_images(spec: GenerateDataSpec) -> list[PlannedImage]:
    """Every image the spec asks for, in order; the same spec always gives the same plan.

    total_images 0: every expansion of every template (in order), images_per_prompt each. Otherwise exactly
    total_images, each from a template and an expansion drawn with random.Random(seed). Image i has seed + i.
    """
    templates = [t.strip() for t in spec.prompts if t.strip()]
    wildcards = Wildcards(spec.wildcard_dir)
    try:
        if spec.total_images:
            rng = random.Random(spec.seed)
            prompts = [expand_random(rng.choice(templates), rng, wildcards) for _ in range(spec.total_images)]
        else:
            prompts = [p for t in templates for p in expand_all(t, wildcards) for _ in range(spec.images_per_prompt)]
    except WildcardError as e:
        raise InputError(f"prompts: {e}") from e
    width = max(6, len(str(len(prompts))))
    return [PlannedImage(f"{i:0{width}d}", p, spec.seed + i, make_caption(spec, p)) for i, p in enumerate(prompts)]


def make_caption(spec: GenerateDataSpec, prompt: str) -> str:
    caption = spec.caption_template.replace("{prompt}", prompt)
    return strip_phrases(caption, spec.caption_strip) if spec.caption_strip.strip() else caption.strip()


def manifest_entry(spec: GenerateDataSpec, item: PlannedImage, done: bool) -> dict:
    return {"file": f"{item.name}.png", "prompt": item.prompt, "seed": item.seed, "caption": item.caption,
            "model": spec.base_model, **{k: getattr(spec, k) for k in SETTINGS}, "done": done}


def same_image(entry: dict, expected: dict) -> bool:
    keys = ("prompt", "seed", "model", *SETTINGS)
    return all(entry.get(k) == expected[k] for k in keys)


def read_manifest(folder: Path) -> dict:
    path = folder / MANIFEST
    if not path.exists():
        return {"images": {}}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return {"images": dict(data["images"])}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(f"output_dir: {path} is unreadable ({e}); move it away to start over") from e


def write_manifest(folder: Path, spec: GenerateDataSpec, images: dict) -> None:
    atomic_write_text(folder / MANIFEST, json.dumps({"spec": spec_to_dict(spec), "images": images}, indent=1))


def check_folder(folder: Path, plan: list[PlannedImage], spec: GenerateDataSpec, images: dict) -> None:
    """Refuse to overwrite what is not ours: a planned file the manifest does not know, or one it lists with
    other settings (a different spec wrote this folder)."""
    for item in plan:
        entry = images.get(item.name)
        png = folder / f"{item.name}.png"
        if entry is None and (png.exists() or png.with_suffix(".txt").exists()):
            raise InputError(f"output_dir: {png} exists but was not written by generate-data; choose an empty "
                             "folder")
        if entry is not None and not same_image(entry, manifest_entry(spec, item, True)):
            raise InputError(f"output_dir: {folder} holds images from other settings ({item.name}.png was "
                             f"{entry.get('prompt')!r}, seed {entry.get('seed')}); choose another folder")


def move_model(model, device: str, dtype) -> None:
    """Put the three networks on the device in the dtype (loaded models are float32 on the CPU)."""
    import torch
    for module in (model.unet, model.vae, model.text_encoder):
        module.to(device) if dtype == torch.float32 else module.to(device=device, dtype=dtype)


def stop_requested(commands: queue.Queue | None) -> bool:
    while commands is not None:
        try:
            if commands.get_nowait().name == ev.STOP:
                return True
        except queue.Empty:
            return False
    return False


def generate_data(spec: GenerateDataSpec, emit, commands: queue.Queue | None = None) -> ev.RunFinished:
    """Generate what the spec asks for into spec.output_dir, skipping images finished by an earlier run."""
    import torch

    from trainer.model.models import load_model
    from trainer.specs import resolve_device, resolve_dtype
    from trainer.train.sampling import make_pipeline
    plan = plan_images(spec)
    folder = Path(spec.output_dir).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    images = read_manifest(folder)["images"]
    check_folder(folder, plan, spec, images)
    todo, done = [], 0
    for item in plan:
        png = folder / f"{item.name}.png"
        if images.get(item.name, {}).get("done") and png.exists() and png.with_suffix(".txt").exists():
            done += 1
            emit(ev.ImageGenerated(str(png), item.caption, done, len(plan), skipped=True))
        else:
            todo.append(item)
    if not todo:
        return ev.RunFinished("completed", f"all {len(plan)} images were already in {folder}", str(folder))
    emit(ev.Status(f"Loading {spec.base_model}"))
    device = resolve_device(spec.device)
    dtype = resolve_dtype(spec.dtype, device)
    model = load_model(spec.base_model, spec.base_config or None)
    if model.weights_note:
        emit(ev.Log("info", f"Loaded the {model.weights_note}"))
    move_model(model, device, dtype)
    pipe = make_pipeline(model.unet, model.vae, model.text_encoder, model.tokenizer, model.noise_scheduler.config,
                         spec.sampler)
    long = over_limit(model.tokenizer, [item.prompt for item in todo], CHUNK)
    if long:  # the pipeline reads 75 tokens of a prompt: say which prompts lose words, never silently
        index, count = long[0]
        emit(ev.Log("warning", f"{len(long)} prompt(s) are longer than CLIP's {CHUNK} tokens; the words past it do "
                               f"not reach the model (first: \"{first_words(todo[index].prompt)}\", {count} "
                               "tokens). Their captions keep the whole prompt."))
    emit(ev.Status(f"Generating {len(todo)} of {len(plan)} images into {folder}"))
    for start in range(0, len(todo), spec.batch_size):
        if stop_requested(commands):
            return ev.RunFinished("stopped", f"stopped after {done} of {len(plan)} images; run again to resume",
                                  str(folder))
        batch = todo[start:start + spec.batch_size]
        for item in batch:  # mark the batch as ours before writing, so a crash leaves nothing unexplained
            images[item.name] = manifest_entry(spec, item, done=False)
        write_manifest(folder, spec, images)
        with torch.no_grad():
            result = pipe(prompt=[i.prompt for i in batch],
                          negative_prompt=[spec.negative_prompt] * len(batch) if spec.negative_prompt else None,
                          width=spec.width, height=spec.height, num_inference_steps=spec.steps,
                          guidance_scale=spec.cfg_scale, output_type="pil",
                          generator=[torch.Generator("cpu").manual_seed(i.seed) for i in batch])
        for item, image in zip(batch, result.images):
            png = folder / f"{item.name}.png"
            tmp = png.with_name(f".{png.name}.tmp")
            image.save(tmp, format="PNG")
            tmp.replace(png)
            write_caption(png, item.caption)
            images[item.name]["done"] = True
            done += 1
            emit(ev.ImageGenerated(str(png), item.caption, done, len(plan)))
        write_manifest(folder, spec, images)
    return ev.RunFinished("completed", f"{len(todo)} images generated ({len(plan)} in all) in {folder}",
                          str(folder))
