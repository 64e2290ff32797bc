"""Concepts -> training samples: image files, captions, center crops, a seeded order per epoch. No UI here."""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from trainer.config import ConceptConfig, Preset, parse_resolutions
from trainer.errors import InputError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}


@dataclass(frozen=True)
class ImageItem:
    path: Path
    concept_index: int


def list_images(concept: ConceptConfig) -> list[Path]:
    folder = Path(concept.path).expanduser()
    if not folder.is_dir():
        raise InputError(f"concept {concept.name!r}: folder {folder} does not exist")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def collect_items(preset: Preset) -> list[ImageItem]:
    """Every image of every enabled concept; a concept without images is an error before any model loads."""
    items = []
    for index, concept in enumerate(preset.concepts):
        if not concept.enabled:
            continue
        paths = list_images(concept)
        if not paths:
            raise InputError(f"concept {concept.name!r}: no images in {concept.path} "
                             f"(looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
        items += [ImageItem(p, index) for p in paths]
    if not items:
        raise InputError("concepts: no enabled concept to train on")
    return items


def caption_for(item: ImageItem, concept: ConceptConfig, rng: random.Random) -> str:
    """The caption of one use of an image: a random non-empty line of its .txt, its file name, or the single one."""
    if concept.caption_source == "filename":
        return item.path.stem.replace("_", " ")
    if concept.caption_source == "txt":
        txt = item.path.with_suffix(".txt")
        if txt.is_file():
            lines = [line.strip() for line in txt.read_text(encoding="utf-8", errors="replace").splitlines()]
            lines = [line for line in lines if line]
            if lines:
                return rng.choice(lines)
    return concept.caption


def load_image(path: Path, size: int) -> np.ndarray:
    """Decode, apply EXIF rotation, scale the short side to `size`, center-crop: float32 HWC in [-1, 1]."""
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im).convert("RGB")
    scale = size / min(im.size)
    w, h = max(size, round(im.width * scale)), max(size, round(im.height * scale))
    im = im.resize((w, h), Image.Resampling.BICUBIC)
    left, top = (w - size) // 2, (h - size) // 2
    im = im.crop((left, top, left + size, top + size))
    return np.asarray(im, dtype=np.float32) / 127.5 - 1.0


@dataclass
class Batch:
    """One micro-batch. Either pixels, or cached VAE latent distributions (mean, std; unscaled)."""
    captions: list[str]
    positions: list[int]      # position of each sample inside its epoch (seeds its noise)
    loss_weights: list[float]
    pixels: np.ndarray | None = None       # B, H, W, 3 float32 in [-1, 1]
    latent_mean: object | None = None      # torch tensor B, 4, h, w when latents are cached
    latent_std: object | None = None
    text_embeddings: object | None = None  # torch tensor B, 77, D when text embeddings are cached


class EpochPlan:
    """The seeded order of each epoch, cut into optimizer steps of micro-batches (no image dropped).

    The loop uses only: epoch_steps(epoch), total_steps(epochs), iter_epoch(epoch, start_step).
    """

    def __init__(self, preset: Preset, items: list[ImageItem]):
        self.preset = preset
        self.items = items
        self.resolution = parse_resolutions(preset.training.resolution)[0]
        t = preset.training
        self.batch_size, self.accumulation = t.batch_size, t.gradient_accumulation_steps

    def epoch_uses(self, epoch: int) -> list[ImageItem]:
        rng = random.Random(f"{self.preset.general.seed}-order-{epoch}")
        uses = []
        for item in self.items:
            uses += [item] * max(0, round(self.preset.concepts[item.concept_index].repeats))
        rng.shuffle(uses)
        return uses

    def step_groups(self, epoch: int) -> list[list[list[int]]]:
        """For each optimizer step, its micro-batches as lists of positions into epoch_uses(epoch)."""
        n = len(self.epoch_uses(epoch))
        batches = [list(range(i, min(i + self.batch_size, n))) for i in range(0, n, self.batch_size)]
        return [batches[i:i + self.accumulation] for i in range(0, len(batches), self.accumulation)]

    def epoch_steps(self, epoch: int) -> int:
        return len(self.step_groups(epoch))

    def total_steps(self, epochs: int) -> int:
        return sum(self.epoch_steps(e) for e in range(epochs))

    def iter_epoch(self, epoch: int, start_step: int = 0):
        """Yield, for each optimizer step from start_step on, its list of micro-batches."""
        uses = self.epoch_uses(epoch)
        for group in self.step_groups(epoch)[start_step:]:
            yield [self.load_batch(epoch, positions, uses) for positions in group]

    def load_batch(self, epoch: int, positions: list[int], uses: list[ImageItem]) -> Batch:
        captions, pixels = [], []
        for pos in positions:
            item = uses[pos]
            concept = self.preset.concepts[item.concept_index]
            rng = random.Random(f"{self.preset.general.seed}-caption-{epoch}-{pos}")
            captions.append(caption_for(item, concept, rng))
            pixels.append(load_image(item.path, self.resolution))
        return Batch(captions, list(positions), [1.0] * len(positions), pixels=np.stack(pixels))
