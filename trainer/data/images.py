"""Image files: find, check, decode (EXIF, modes, alpha), crop to a bucket, augment. No torch, no UI here."""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
import random
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, ImageFile, ImageOps

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
INDEX_VERSION = 2  # 2: photos over Pillow's ~179 MP bomb limit are checked (cached "decompression bomb" reasons)
ROTATED_ORIENTATIONS = {5, 6, 7, 8}  # EXIF orientations that swap width and height
ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, never a half-grey picture
# The largest image used, in megapixels (width × height / 1e6); a larger one is skipped with its size and this
# limit. Pillow refuses images over ~179 MP as possible "decompression bombs"; 100-200 MP phone and stitched
# photos are common, and JPEGs (most of them) are decoded at 1/2-1/8 scale (draft mode) so a 500 MP JPEG
# costs ~190 MB at 1/8 scale. A 500 MP PNG/TIFF is decoded fully (1.5 GB as RGB): raise this with care.
MAX_IMAGE_MEGAPIXELS = 500
BIG_FULL_DECODE = 64_000_000  # pixels: full (non-draft) decodes above this run at most two at a time
_BIG_DECODES = threading.BoundedSemaphore(2)  # 8 scan threads × a 600 MB stitched TIFF each is too much


@dataclass(frozen=True)
class ImageInfo:
    """A usable image: its file, content hash and size as shown (after EXIF rotation)."""
    path: Path
    digest: str
    width: int
    height: int


def _real(path: str) -> str:
    return os.path.normcase(os.path.realpath(path))


def _walk(folder: Path) -> Iterator[Path]:
    """Every non-hidden file below folder, symlinked folders followed; a folder reached twice (a link to a
    parent, to itself, or two links to one folder) is read only the first time, in sorted path order."""
    seen: set[str] = set()
    for root, dirs, files in os.walk(folder, followlinks=True):
        real = _real(root)
        if real in seen:  # a loop, or a folder already read under another name: its files are counted once
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))  # os.walk descends in this order
        yield from (Path(root) / f for f in files if not f.startswith("."))


def list_image_files(folder: Path, recursive: bool, duplicates: list | None = None) -> list[Path]:
    """Image files (by suffix) in the folder, or below it, sorted, as the user sees them (not resolved).

    Hidden files and folders are left out. Symlinked files and (with recursive) symlinked folders are
    followed, without loops; a file reached by two paths (a link to an image that is also there, two links
    to one folder, hard links) is listed once, under the first of its paths in sorted order, and the other
    paths go to `duplicates` as (path, reason) when a list is given. A broken symlink is listed: scan_files
    skips it with the reason ("broken link to ...")."""
    folder = Path(folder)
    if recursive:
        found = list(_walk(folder))
    else:
        found = [p for p in folder.iterdir() if not p.name.startswith(".") and (p.is_file() or p.is_symlink())]
    listed, seen = [], {}
    for path in sorted(p for p in found if p.suffix.lower() in IMAGE_SUFFIXES):
        try:
            st = path.stat()
            key = (st.st_dev, st.st_ino) if st.st_ino else _real(str(path))
        except OSError:  # a broken link: listed, so that the scan names it
            key = ("broken", str(path))
        if key not in seen:
            seen[key] = path
            listed.append(path)
        elif duplicates is not None:
            duplicates.append((path, f"the same file as {seen[key]} (used once, with that path's caption)"))
    return listed


# ---- opening large photos -------------------------------------------------------------------------------
# Pillow's decompression-bomb guard is the process-wide Image.MAX_IMAGE_PIXELS (~89 MP warns, ~179 MP raises,
# checked when a file is opened, and again by TIFF when it loads). Raising it for the whole process would
# weaken it for every other user of Pillow here (thumbnails, sample grids, other libraries). Instead:
#  - while images.py opens or decodes a file, the guard is set to MAX_IMAGE_MEGAPIXELS (reference-counted
#    across the scan threads under a lock, and restored when the last one is done), so TIFF's load-time
#    check passes for an image we accepted and other code in that window still meets a finite limit;
#  - the open itself (a header read: no pixels are decoded) runs with the guard lifted, under the same
#    lock, and the size it reads is checked here at once against MAX_IMAGE_MEGAPIXELS, so an over-size file
#    is refused with its width × height and our limit rather than Pillow's warning or error.
_GUARD = threading.Lock()
_guard_users = 0
_guard_saved: int | None = None


def _limit_pixels() -> int:
    return int(MAX_IMAGE_MEGAPIXELS * 1_000_000)


@contextmanager
def _pixel_guard() -> Iterator[None]:
    global _guard_users, _guard_saved
    with _GUARD:
        if _guard_users == 0:
            _guard_saved = Image.MAX_IMAGE_PIXELS
        _guard_users += 1
        Image.MAX_IMAGE_PIXELS = _limit_pixels()
    try:
        yield
    finally:
        with _GUARD:
            _guard_users -= 1
            if _guard_users == 0:
                Image.MAX_IMAGE_PIXELS = _guard_saved


class ImageTooLarge(ValueError):
    """An image over MAX_IMAGE_MEGAPIXELS; the message names its size and the limit."""


def _megapixels(pixels: float) -> str:
    mp = pixels / 1e6
    return f"{mp:,.0f}" if mp >= 10 else f"{mp:.2g}"


def check_size(width: int, height: int) -> None:
    """Raise ImageTooLarge when width × height is over MAX_IMAGE_MEGAPIXELS."""
    if width * height > _limit_pixels():
        raise ImageTooLarge(f"{width}×{height} = {_megapixels(width * height)} MP is over the "
                            f"{MAX_IMAGE_MEGAPIXELS:g} MP limit (trainer/data/images.py MAX_IMAGE_MEGAPIXELS); "
                            "downscale it to train on it")


@contextmanager
def open_image(source: str | Path | io.BytesIO) -> Iterator[Image.Image]:
    """Image.open for photos up to MAX_IMAGE_MEGAPIXELS (Pillow alone refuses ~179 MP): the size is read
    from the header and checked first (ImageTooLarge above the limit), then the image can be loaded inside
    the `with`. Pillow's own errors (UnidentifiedImageError, OSError...) pass through."""
    with _pixel_guard():
        with _GUARD:
            Image.MAX_IMAGE_PIXELS = None  # the header only; its size is checked just below
            try:
                im = Image.open(source)
            finally:
                Image.MAX_IMAGE_PIXELS = _limit_pixels()
        with im:
            check_size(*im.size)
            yield im


def _is_jpeg(im: Image.Image) -> bool:
    return im.format in ("JPEG", "MPO")  # MPO: a phone JPEG with a second picture (depth map, preview) in it


@contextmanager
def _full_decode_slot(im: Image.Image) -> Iterator[None]:
    if im.width * im.height > BIG_FULL_DECODE:
        with _BIG_DECODES:
            yield
    else:
        yield


def check_image(data: bytes) -> tuple[int, int]:
    """Decode the bytes to check them; returns the displayed size (after EXIF rotation) or raises with the
    reason (ImageTooLarge over MAX_IMAGE_MEGAPIXELS). JPEGs decode at 1/8 scale (draft mode: every byte of the
    compressed data is still read, so damage is found, in a fraction of the time and memory); other formats
    decode fully."""
    with open_image(io.BytesIO(data)) as im:
        orientation = im.getexif().get(0x0112, 1)
        w, h = im.size
        if _is_jpeg(im):
            im.draft(im.mode, (max(1, w // 8), max(1, h // 8)))
            im.load()
        else:
            with _full_decode_slot(im):
                im.load()
    return (h, w) if orientation in ROTATED_ORIENTATIONS else (w, h)


def _reason(error: Exception) -> str:
    if isinstance(error, Image.UnidentifiedImageError):
        return "not an image (unknown or damaged format)"
    if isinstance(error, ImageTooLarge):
        return str(error)
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    return f"cannot decode: {text}"


def _unreadable(path: Path, error: OSError) -> dict:
    if path.is_symlink() and not path.exists():
        return {"reason": f"broken link to {os.readlink(path)} (its target is missing)"}
    return {"reason": f"cannot read: {error.strerror or error}"}


class FileIndex:
    """Remembers, per file, its size, mtime, content hash and whether it decodes: an unchanged file is neither
    re-read nor re-hashed on the next run. Stored as JSON in the cache folder."""

    def __init__(self, path: Path | None):
        self.path, self.entries, self.changed = path, {}, False
        if path is not None and path.is_file():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                if data.get("version") == INDEX_VERSION:
                    self.entries = data["files"]
            except (OSError, ValueError, KeyError, AttributeError):
                self.entries = {}  # a damaged index is only a slower scan

    def lookup(self, path: Path) -> dict:
        """{digest, width, height} or {reason}; reads the file only when it changed since it was last seen."""
        key = str(path.resolve())
        try:
            st = path.stat()
        except OSError as e:
            return _unreadable(path, e)
        entry = self.entries.get(key)
        if entry and entry["size"] == st.st_size and entry["mtime_ns"] == st.st_mtime_ns:
            return entry
        try:
            data = path.read_bytes()
        except OSError as e:
            return {"reason": f"cannot read: {e.strerror or e}"}
        entry = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
        try:
            width, height = check_image(data)
            entry.update(digest=hashlib.blake2b(data, digest_size=16).hexdigest(), width=width, height=height)
        except Exception as e:  # noqa: BLE001 - any decoder failure means this file is skipped, with its reason
            entry["reason"] = _reason(e)
        self.entries[key], self.changed = entry, True
        return entry

    def save(self) -> None:
        if self.path is None or not self.changed:
            return
        from trainer.fields import atomic_write_text
        atomic_write_text(self.path, json.dumps({"version": INDEX_VERSION, "files": self.entries}))
        self.changed = False


def scan_files(paths: list[Path], index: FileIndex) -> tuple[list[ImageInfo], list[tuple[Path, str]]]:
    """Check every file (in parallel threads; PIL decodes without the GIL): usable images and (path, reason)."""
    workers = min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        entries = list(pool.map(index.lookup, paths))
    usable, skipped = [], []
    for path, entry in zip(paths, entries):
        if "reason" in entry:
            skipped.append((path, entry["reason"]))
        else:
            usable.append(ImageInfo(path, entry["digest"], entry["width"], entry["height"]))
    return usable, skipped


# ---- decoding -------------------------------------------------------------------------------------------

def _to_8bit(im: Image.Image) -> Image.Image:
    """16-bit and 32-bit grey (I;16, I, F) to 8-bit L by scaling the full range, not clipping it."""
    arr = np.asarray(im, dtype=np.float32)
    if im.mode.startswith("I;16"):
        arr = arr / 257.0
    elif im.mode == "F":
        arr = arr * 255.0 if arr.max(initial=0.0) <= 1.0 else arr
    elif arr.max(initial=0.0) > 255:
        arr = arr / 257.0
    return Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8), "L")


def has_alpha(im: Image.Image) -> bool:
    """Whether an image has transparency: an alpha channel or a palette/colour key ("transparency"). Known from the
    header alone (an opened, not yet decoded image will do)."""
    return im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info


def _is_high_bit(im: Image.Image) -> bool:
    return im.mode in ("I", "F") or im.mode.startswith("I;16")


def to_grey(im: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit grey (L): high bit depths rescaled (not clipped), colour as luma (ITU-R 601-2, PIL's
    convert("L")); an alpha channel is ignored."""
    return _to_8bit(im) if _is_high_bit(im) else im.convert("L")


def alpha_channel(im: Image.Image) -> Image.Image | None:
    """The transparency of an image as 8-bit grey (L: 255 opaque, 0 transparent), or None when it has none."""
    if _is_high_bit(im) or not has_alpha(im):
        return None
    return im.convert("RGBA").getchannel("A")


def to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode to RGB: high bit depths rescaled, palettes expanded, transparency flattened onto white."""
    if _is_high_bit(im):
        im = _to_8bit(im)
    if has_alpha(im):
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, im).convert("RGB")
    return im.convert("RGB")


def decode(path: Path, draft_size: tuple[int, int] | None = None) -> Image.Image:
    """Open an image as RGB with its EXIF rotation applied. draft_size (w, h as displayed) lets a JPEG decode
    at a reduced scale (1/2 to 1/8, never below that size), which is much faster and lighter for large photos;
    other formats decode fully. Images up to MAX_IMAGE_MEGAPIXELS open (open_image); raises ImageTooLarge
    above it, and Pillow's errors for a damaged file."""
    return _decode(path, draft_size, to_rgb)


def decode_with_alpha(path: Path, draft_size: tuple[int, int] | None = None
                      ) -> tuple[Image.Image, Image.Image | None]:
    """As decode, and the image's transparency (alpha_channel: L, or None without one), rotated alike. The RGB
    image is the same as decode's (transparency flattened onto white)."""
    return _decode(path, draft_size, lambda im: (to_rgb(im), alpha_channel(im)))


def _decode(path: Path, draft_size: tuple[int, int] | None, finish):
    with open_image(path) as im:
        if draft_size is not None and _is_jpeg(im):
            orientation = im.getexif().get(0x0112, 1)
            w, h = draft_size if orientation not in ROTATED_ORIENTATIONS else draft_size[::-1]
            im.draft(im.mode, (w, h))
            return finish(ImageOps.exif_transpose(im))
        with _full_decode_slot(im):
            return finish(ImageOps.exif_transpose(im))


# ---- crop and augment -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Augment:
    """One use's image augmentation. Offsets and factors are drawn in advance so a cached variant is reproducible
    and its parameters can be part of the cache key."""
    flip: bool = False
    crop_x: float = 0.5      # crop position within the spare width/height, 0..1 (0.5 = center)
    crop_y: float = 0.5
    zoom: float = 1.0        # extra scale beyond "cover", >= 1
    brightness: float = 1.0
    contrast: float = 1.0
    saturation: float = 1.0
    hue: float = 0.0         # rotation as a share of the colour circle

    def key(self) -> str:
        return json.dumps([self.flip, round(self.crop_x, 6), round(self.crop_y, 6), round(self.zoom, 6),
                           round(self.brightness, 6), round(self.contrast, 6), round(self.saturation, 6),
                           round(self.hue, 6)])


def draw_augment(concept, rng: random.Random, flip: bool | None = None) -> Augment:
    """Random augmentation parameters for a concept's settings (flip drawn unless given)."""
    c = concept
    if flip is None:
        flip = c.random_flip and rng.random() < c.random_flip_probability
    crop_x = crop_y = 0.5
    zoom = 1.0
    if c.crop_jitter:
        s = c.crop_jitter_strength
        crop_x, crop_y = 0.5 + s * (rng.random() - 0.5), 0.5 + s * (rng.random() - 0.5)
        zoom = 1.0 + 0.1 * s * rng.random()

    def factor(on: bool, strength: float) -> float:
        return 1.0 + strength * (2 * rng.random() - 1) if on else 1.0
    return Augment(
        flip=bool(flip), crop_x=crop_x, crop_y=crop_y, zoom=zoom,
        brightness=factor(c.random_brightness, c.random_brightness_strength),
        contrast=factor(c.random_contrast, c.random_contrast_strength),
        saturation=factor(c.random_saturation, c.random_saturation_strength),
        hue=c.random_hue_strength * (2 * rng.random() - 1) if c.random_hue else 0.0)


def has_random_augments(concept) -> bool:
    """Augmentations other than the flip (those make cached variants)."""
    c = concept
    return c.crop_jitter or c.random_brightness or c.random_contrast or c.random_saturation or c.random_hue


def cover_size(width: int, height: int, target: tuple[int, int], zoom: float = 1.0) -> tuple[int, int]:
    """The size that covers target (w, h) while keeping the aspect ratio."""
    scale = max(target[0] / width, target[1] / height) * zoom
    return max(target[0], math.ceil(width * scale - 1e-6)), max(target[1], math.ceil(height * scale - 1e-6))


def crop_to(im: Image.Image, target: tuple[int, int], aug: Augment) -> Image.Image:
    """Scale to cover the target size, then crop (centered, or where the augmentation says); flip if asked."""
    w, h = cover_size(im.width, im.height, target, aug.zoom)
    if (w, h) != im.size:
        im = im.resize((w, h), Image.Resampling.LANCZOS, reducing_gap=3.0)
    left = round((w - target[0]) * min(max(aug.crop_x, 0.0), 1.0))
    top = round((h - target[1]) * min(max(aug.crop_y, 0.0), 1.0))
    im = im.crop((left, top, left + target[0], top + target[1]))
    return im.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if aug.flip else im


_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _rotate_hue(x: np.ndarray, turns: float) -> np.ndarray:
    """Rotate the chroma of RGB values in YIQ space (a linear, fast stand-in for an HSV hue shift)."""
    to_yiq = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], np.float32)
    a = 2 * math.pi * turns
    rot = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]], np.float32)
    m = np.linalg.inv(to_yiq) @ rot @ to_yiq
    return x @ m.T.astype(np.float32)


def color_jitter(x: np.ndarray, aug: Augment) -> np.ndarray:
    """Brightness, contrast, saturation and hue on float RGB in [0, 1] (HWC)."""
    if aug.brightness != 1.0:
        x = x * aug.brightness
    if aug.contrast != 1.0:
        mean = float((x @ _LUMA).mean())
        x = (x - mean) * aug.contrast + mean
    if aug.saturation != 1.0:
        grey = (x @ _LUMA)[..., None]
        x = grey + (x - grey) * aug.saturation
    if aug.hue != 0.0:
        x = _rotate_hue(x, aug.hue)
    return np.clip(x, 0.0, 1.0)


def load_pixels(path: Path, size: tuple[int, int], aug: Augment) -> np.ndarray:
    """One image for one use: decoded, covered and cropped to size (w, h), augmented; float32 HWC in [-1, 1]."""
    return pixels_of(decode(path, draft_size=decode_size(size, aug)), size, aug)


def decode_size(size: tuple[int, int], aug: Augment) -> tuple[int, int]:
    """The smallest decoded size (w, h) that one use at `size` with `aug` needs (decode's draft_size)."""
    return math.ceil(size[0] * aug.zoom), math.ceil(size[1] * aug.zoom)


def pixels_of(im: Image.Image, size: tuple[int, int], aug: Augment) -> np.ndarray:
    """A decoded RGB image covered and cropped to size (w, h), augmented; float32 HWC in [-1, 1]."""
    im = crop_to(im, size, aug)
    x = np.asarray(im, dtype=np.float32) / 255.0
    x = color_jitter(x, aug)
    return x * 2.0 - 1.0
