"""Masked training: a loss weight per pixel of each image of a concept, from the image's alpha channel or from a
grey mask file beside it. The mask follows the image's crop, flip and bucket resize, is averaged onto the latent
grid and turned into the loss weights of each latent cell. No torch, no UI here.

It follows OneTrainer's masked training as its code describes it (written anew here):
- the mask of NAME.ext is NAME-masklabel.png beside it, read as one grey channel in 0..1; files with that suffix
  are masks, never training images (modules/dataLoader/mixin/DataLoaderText2ImageMixin.py: ModifyPath postfix
  '-masklabel', LoadImage channels=1 range 0..1, exclude_postfix);
- it is cropped, flipped and scaled with its image, then scaled down onto the latents (ScaleImage factor 1/8:
  the VAE's downsampling; here an exact area average over each latent cell);
- the loss of each latent element is weighted by clamp(mask, unmasked_weight, 1), and with
  normalize_masked_area_loss each sample's loss is divided by the mean of those weights, so a small masked area
  counts as much as a whole image (modules/util/loss/masked_loss.py, masked_losses).

Differences: the settings are per concept (OneTrainer's are the whole run's), the alpha channel can be the mask,
an image of a masked concept that has no mask trains unmasked (weight 1 everywhere) and is reported, and a mask
file whose size is not its image's is refused before training (OneTrainer stretches it).
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from trainer import events as ev
from trainer.config import ConceptConfig, Preset
from trainer.data.images import (Augment, FileIndex, crop_to, decode, decode_size, decode_with_alpha, has_alpha,
                                 load_pixels, open_image, pixels_of, to_grey)
from trainer.errors import InputError

EXAMPLES = 5  # images named in a report line


@dataclass(frozen=True)
class MaskRef:
    """Where an image's mask is: kind "alpha" (the image's own transparency; path is the image) or "file" (path is
    the mask file); digest is the content hash of that file (images.FileIndex), so a changed mask changes the
    latent cache key (cache_key)."""
    kind: str
    path: Path
    digest: str

    def cache_key(self) -> list[str]:
        """What the cached latent entry of a masked image adds to its key."""
        return ["mask", self.kind, self.digest]


@dataclass
class FoundMasks:
    """A concept's masks (find_masks): refs maps an image's path to its MaskRef; without lists the images that
    have none (they train unmasked); problems holds (mask file, reason) of masks that cannot be used (training
    refuses them: refuse_problems)."""
    refs: dict = field(default_factory=dict)
    without: list = field(default_factory=list)
    problems: list = field(default_factory=list)


def uses_masks(concept: ConceptConfig) -> bool:
    return concept.masks in ("alpha", "file")


def mask_path_for(image: Path, suffix: str) -> Path:
    """The mask file of an image: NAME + suffix + .png beside NAME.ext (OneTrainer's NAME-masklabel.png)."""
    return image.with_name(image.stem + suffix + ".png")


def is_mask_file(path: Path, suffix: str) -> bool:
    """Whether a file is named as a mask: its name ends with suffix + .png (the .png in any case)."""
    return bool(suffix) and path.suffix.lower() == ".png" and path.stem.endswith(suffix)


def separate_mask_files(paths: list[Path], concept: ConceptConfig) -> tuple[list[Path], list[tuple[Path, str]]]:
    """(image files, skipped (path, reason)) of a concept's listed image files: with masks "file", the files named
    as masks are not images; one whose image is missing (NAME.* beside it) is listed as skipped with the reason,
    so a misnamed mask is seen. Other modes leave the list as it is."""
    if concept.masks != "file":
        return list(paths), []
    suffix = concept.mask_suffix
    images = [p for p in paths if not is_mask_file(p, suffix)]
    stems = {(p.parent, p.stem) for p in images}
    skipped = [(p, f"a mask file (name ending {suffix}.png) with no image {p.stem[:-len(suffix)]}.* beside it")
               for p in paths if is_mask_file(p, suffix) and (p.parent, p.stem[:-len(suffix)]) not in stems]
    return images, skipped


def _image_has_alpha(path: Path) -> bool:
    try:
        with open_image(path) as im:  # the header tells (mode, tRNS chunk); nothing is decoded
            return has_alpha(im)
    except Exception:  # noqa: BLE001 - the image was checked when scanned; a failure now means no alpha to use
        return False


def find_masks(concept: ConceptConfig, infos: list, index: FileIndex) -> FoundMasks:
    """The masks of a concept's usable images (infos: images.ImageInfo). alpha: the images with transparency
    (header only); file: each image's mask file (mask_path_for), checked through the file index (decoded once,
    hashed, remembered by size and mtime): one that does not decode, or whose size (after EXIF rotation) is not
    its image's, is a problem. Masks "off" finds none. Reads files in parallel threads."""
    found = FoundMasks()
    if not uses_masks(concept) or not infos:
        return found
    workers = min(8, os.cpu_count() or 1)
    if concept.masks == "alpha":
        with ThreadPoolExecutor(workers) as pool:
            alpha = list(pool.map(lambda info: _image_has_alpha(info.path), infos))
        for info, has in zip(infos, alpha):
            if has:
                found.refs[info.path] = MaskRef("alpha", info.path, info.digest)
            else:
                found.without.append(info.path)
        return found
    candidates = [(info, mask_path_for(info.path, concept.mask_suffix)) for info in infos]
    present = [(info, mask) for info, mask in candidates if mask.is_file()]
    with ThreadPoolExecutor(workers) as pool:
        entries = list(pool.map(lambda pair: index.lookup(pair[1]), present))
    looked_up = {info.path: (mask, entry) for (info, mask), entry in zip(present, entries)}
    for info in infos:
        if info.path not in looked_up:
            found.without.append(info.path)
            continue
        mask, entry = looked_up[info.path]
        if "reason" in entry:
            found.problems.append((mask, f"cannot be read as a mask: {entry['reason']}"))
        elif (entry["width"], entry["height"]) != (info.width, info.height):
            found.problems.append((mask, f"is {entry['width']}×{entry['height']} but its image {info.path.name} is "
                                         f"{info.width}×{info.height}; a mask must be the size of its image"))
        else:
            found.refs[info.path] = MaskRef("file", mask, entry["digest"])
    return found


def refuse_problems(index: int, concept: ConceptConfig, found: FoundMasks) -> None:
    """Raise InputError naming the first unusable mask file of concept `index` (and how many more there are)."""
    if not found.problems:
        return
    path, reason = found.problems[0]
    more = len(found.problems) - 1
    raise InputError(f"concepts.{index}.masks: mask file {path} {reason}"
                     + (f" ({more} more mask file(s) of concept {concept.name!r} cannot be used)" if more else ""))


def _names(paths: list[Path]) -> str:
    shown = ", ".join(p.name for p in paths[:EXAMPLES])
    return shown + (f" and {len(paths) - EXAMPLES} more" if len(paths) > EXAMPLES else "")


def describe_source(concept: ConceptConfig) -> str:
    """'alpha channels' or 'files NAME-masklabel.png'."""
    return "alpha channels" if concept.masks == "alpha" else f"files NAME{concept.mask_suffix}.png"


def mask_stats(concept: ConceptConfig, found: FoundMasks) -> dict | None:
    """The statistics of a concept's masks (trainer.data.stats, the window): {"mode", "source", "with", "without",
    "without_examples", "problems": [{"path", "reason"}]}; None when the concept uses no masks."""
    if not uses_masks(concept):
        return None
    return {"mode": concept.masks, "source": describe_source(concept), "with": len(found.refs),
            "without": len(found.without), "without_examples": [str(p) for p in found.without[:EXAMPLES]],
            "problems": [{"path": str(p), "reason": r} for p, r in found.problems]}


def mask_report(preset: Preset, items: list) -> list[ev.Log]:
    """What a run says once before training about each masked concept (items: data.collect_items' images, each
    with its `mask`): how many images have a mask, and the images without one, which train unmasked."""
    logs = []
    for ci, concept in enumerate(preset.concepts):
        mine = [item for item in items if item.concept_index == ci]
        if not uses_masks(concept) or not mine:
            continue
        without = [item.path for item in mine if item.mask is None]
        normalized = ", normalized by the masked area" if concept.normalize_masked_area_loss else ""
        text = (f"Concept {concept.name!r}: masked training with masks from {describe_source(concept)}: "
                f"{len(mine) - len(without)} of {len(mine)} images have one (unmasked weight "
                f"{concept.unmasked_weight:g}{normalized})")
        if without:
            logs.append(ev.Log("warning", f"{text}; {len(without)} without a mask train unmasked (weight 1 "
                                          f"everywhere): {_names(without)}"))
        else:
            logs.append(ev.Log("info", text))
    return logs


# ---- loading ---------------------------------------------------------------------------------------------

def read_mask_file(path: Path) -> Image.Image:
    """A mask file as 8-bit grey (L) with its EXIF rotation applied: colour masks as their luma, 16-bit ones
    rescaled (images.to_grey). Pillow's errors pass through."""
    with open_image(path) as im:
        return to_grey(ImageOps.exif_transpose(im))


def load_with_mask(path: Path, size: tuple[int, int], aug: Augment, ref: MaskRef | None
                   ) -> tuple[np.ndarray, np.ndarray | None]:
    """One image for one use and its mask, cropped, flipped and scaled alike: (pixels (H, W, 3) float32 in [-1, 1]
    as images.load_pixels, mask (H, W) float32 in 0..1 or None without a ref); size is (W, H).

    The mask is brought to the decoded image's size first (a JPEG may decode at a reduced scale), then goes
    through the same images.crop_to, so each mask pixel stays on its image pixel. Colour augmentations do not
    touch it. An alpha ref of an image that turns out to have no transparency gives an all-ones mask."""
    if ref is None:
        return load_pixels(path, size, aug), None
    if ref.kind == "alpha":
        im, mask = decode_with_alpha(path, decode_size(size, aug))
        mask = mask if mask is not None else Image.new("L", im.size, 255)
    else:
        im, mask = decode(path, decode_size(size, aug)), read_mask_file(ref.path)
        if mask.size != im.size:
            mask = mask.resize(im.size, Image.Resampling.BOX)
    grey = np.asarray(crop_to(mask, size, aug), dtype=np.float32) / 255.0
    return pixels_of(im, size, aug), grey


def latent_factor(vae) -> int:
    """How many pixels make one latent cell per side: 2 ** (VAE blocks - 1), as diffusers' vae_scale_factor (8 for
    SD 1.5)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def to_latent_grid(mask: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """A (H, W) mask averaged onto a latent grid (w, h): each cell the mean of the pixels it covers (exact when H
    and W are multiples of h and w, as buckets are; a box filter otherwise). float32 (h, w)."""
    w, h = grid
    H, W = mask.shape
    if H % h == 0 and W % w == 0:
        return mask.reshape(h, H // h, w, W // w).mean(axis=(1, 3), dtype=np.float64).astype(np.float32)
    box = Image.fromarray(mask.astype(np.float32), "F").resize((w, h), Image.Resampling.BOX)
    return np.asarray(box, dtype=np.float32)


def loss_weights(mask: np.ndarray, unmasked_weight: float, normalize: bool) -> np.ndarray:
    """The loss weight of each latent cell of one sample, from its mask at the latent grid (0..1): clamp(mask,
    unmasked_weight, 1), and with normalize divided by its mean over the sample, so the weighted mean loss is
    sum(w * loss) / sum(w) (OneTrainer's masked_losses; a sample whose weights are all 0 stays all 0 instead of
    dividing by 0). float32, the mask's shape."""
    w = np.clip(mask, unmasked_weight, 1.0).astype(np.float32)
    if normalize:
        mean = float(w.mean(dtype=np.float64))
        if mean > 0:
            w = w / np.float32(mean)
    return w


def batch_weights(masks: list, concepts: list[ConceptConfig]) -> np.ndarray | None:
    """The loss weights of a micro-batch, (B, 1, h, w) float32, from each sample's mask at the latent grid (or None:
    weight 1 everywhere) and its concept's unmasked_weight and normalize_masked_area_loss; None when no sample has
    a mask (the loss then needs no weights). Raises ValueError when the masks' grids differ."""
    shapes = {m.shape for m in masks if m is not None}
    if not shapes:
        return None
    if len(shapes) > 1:
        raise ValueError(f"masks of one micro-batch on different latent grids: {sorted(shapes)}")
    (shape,) = shapes
    return np.stack([np.ones(shape, np.float32) if m is None
                     else loss_weights(m, c.unmasked_weight, c.normalize_masked_area_loss)
                     for m, c in zip(masks, concepts)])[:, None]
