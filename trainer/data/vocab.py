"""The words of textual-inversion embeddings: their added token names and whether a word can be one (not a word
CLIP knows). Torch-free and import-free of the preset (config validates with it); trainer.model.embedding trains them.
No UI here."""
from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path

PLACEHOLDER_PATTERN = re.compile(r"[a-z0-9_\-]+")
BUNDLED_VOCAB = Path(__file__).parents[1] / "assets" / "sd15" / "tokenizer" / "vocab.json"


def token_names(placeholder: str, vectors: int) -> list[str]:
    """The added tokens of a word of `vectors` vectors: [placeholder, placeholder_1, ...]."""
    return [placeholder] + [f"{placeholder}_{i}" for i in range(1, vectors)]


@lru_cache(maxsize=4)
def _vocab(path: Path) -> frozenset:
    return frozenset(json.loads(path.read_text(encoding="utf-8")))


def placeholder_problem(placeholder: str, vocab_file: Path = BUNDLED_VOCAB) -> str | None:
    """Why `placeholder` cannot be a new word (None when it can): empty, characters other than lowercase letters,
    digits, - and _, or a word CLIP's vocabulary already has (as a whole word, "cat</w>", or a word start)."""
    if not placeholder:
        return "no placeholder word given"
    if not PLACEHOLDER_PATTERN.fullmatch(placeholder):
        return (f"{placeholder!r}: use lowercase letters, digits, - and _ only (CLIP lowercases what it reads, and "
                "A1111 names the embedding after its file)")
    vocab = _vocab(vocab_file)
    if f"{placeholder}</w>" in vocab or placeholder in vocab:
        return f"{placeholder!r} is already a token of CLIP's vocabulary: choose a made-up word (e.g. {placeholder}xz)"
    return None
