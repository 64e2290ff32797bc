"""What of a graphics card's memory a training can use, and GiB in words: torch-free, for the engine's memory
estimate (trainer/tools/memory.py), the command line and the window. No UI here."""
from __future__ import annotations

HEADROOM_GIB, HEADROOM_SHARE = 0.5, 0.05  # of a card: the CUDA context and the allocator's spare blocks


def usable_gib(vram_gib: float) -> float:
    """What of a card of `vram_gib` GiB the trainer's tensors can use: less the CUDA context and the share the
    allocator holds in spare blocks (HEADROOM_GIB + HEADROOM_SHARE of the card), which max_memory_allocated, and
    so the estimate, do not count."""
    return max(0.0, vram_gib * (1 - HEADROOM_SHARE) - HEADROOM_GIB)


def amount(gib: float) -> str:
    """GiB in words: '5.2 GiB'; under 1 GiB in MiB ('340 MiB'), so that a small model does not read 0.0."""
    return f"{gib * 1024:.0f} MiB" if gib < 1 else f"{gib:.1f} GiB"


def a_card(gib: float) -> str:
    """A card's size as stated, with its article: "an 8 GiB card", "a 24 GiB card", "an 11 GiB card"."""
    size = f"{gib:g}"
    vowel_sound = size.startswith("8") or size.split(".")[0] in ("11", "18")
    return f"{'an' if vowel_sound else 'a'} {size} GiB card"
