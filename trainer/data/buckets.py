"""Aspect-ratio buckets: sizes of about resolution² pixels, and the nearest bucket of an image. No UI here.

Both sides are multiples of 64 (the SD 1.5 UNet downsamples latents 3 times, and 64 px steps keep the bucket count
small) for resolutions of 256 and up; below 256 (the tiny test and demo models) the step is 8, the smallest that the
VAE's 8x downsampling allows, so a 32 px training still gets a few aspect ratios.
"""
from __future__ import annotations

import math
from functools import lru_cache

MAX_RATIO = 4.0  # from 1:4 to 4:1


def bucket_step(resolution: int) -> int:
    return 64 if resolution >= 256 else 8


@lru_cache(maxsize=64)
def bucket_sizes(resolution: int, bucketing: bool = True) -> tuple[tuple[int, int], ...]:
    """(width, height) pairs, sorted: the square one plus, per short side, the long side nearest to an area of
    resolution², keeping aspect ratios within 1:4 .. 4:1. Without bucketing: only resolution x resolution."""
    if not bucketing:
        return ((resolution, resolution),)
    step = bucket_step(resolution)
    area = resolution * resolution
    square = max(step, round(resolution / step) * step)
    sizes = {(square, square)}
    for short in range(step, square + 1, step):
        long = max(step, round(area / short / step) * step)
        if long < short or long / short > MAX_RATIO:
            continue
        sizes.add((short, long))
        sizes.add((long, short))
    return tuple(sorted(sizes))


def nearest_bucket(width: int, height: int, sizes: tuple[tuple[int, int], ...]) -> tuple[int, int]:
    """The bucket whose aspect ratio is nearest the image's (in log space, so 1:2 and 2:1 are equally far from
    1:1); ties go to the larger area."""
    ratio = math.log(width / height)
    return min(sizes, key=lambda s: (abs(math.log(s[0] / s[1]) - ratio), -s[0] * s[1]))


def bucket_name(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"
