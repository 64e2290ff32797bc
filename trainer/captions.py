"""Captions: where they come from (txt, file name, single) and their augmentations. No torch, no UI here."""
from __future__ import annotations

import random
from pathlib import Path

TXT_SOURCES = ("txt", "txt_or_filename")


def read_txt_lines(image: Path) -> list[str] | None:
    """The non-empty lines of image.txt beside the image; None when there is no such file (or it is empty)."""
    txt = image.with_suffix(".txt")
    try:
        text = txt.read_text(encoding="utf-8-sig", errors="replace")
    except OSError:
        return None
    lines = [line.strip() for line in text.splitlines()]
    return [line for line in lines if line] or None


def filename_caption(image: Path) -> str:
    return " ".join(image.stem.replace("_", " ").split())


def caption_lines(image: Path, concept) -> tuple[tuple[str, ...], bool]:
    """Every caption an image can get before augmentation, and whether it came from its own txt file."""
    source = concept.caption_source
    if source == "single":
        return (concept.caption.strip(),), False
    if source == "filename":
        return (filename_caption(image),), False
    lines = read_txt_lines(image)
    if lines:
        return tuple(lines), True
    if source == "txt_or_filename":
        return (filename_caption(image),), False
    return (concept.caption.strip(),), False


def captions_vary(concept) -> bool:
    """True when augmentations make caption text unpredictable (so embeddings cannot all be cached up front)."""
    return concept.shuffle_tags or concept.tag_dropout > 0


def augment_caption(text: str, concept, rng: random.Random) -> str:
    """Tag shuffle (the first keep_tags stay in place), tag dropout (never the kept ones), caption dropout.
    The rng draws happen in a fixed order whatever the settings, so turning one on does not reshuffle others."""
    drop_all = rng.random()
    if concept.shuffle_tags or concept.tag_dropout > 0:
        tags = [t.strip() for t in text.split(",") if t.strip()]
        keep, rest = tags[:concept.keep_tags], tags[concept.keep_tags:]
        if concept.shuffle_tags:
            rng.shuffle(rest)
        if concept.tag_dropout > 0:
            rest = [t for t in rest if rng.random() >= concept.tag_dropout]
        text = ", ".join(keep + rest)
    if drop_all < concept.caption_dropout:
        return ""
    return text


def pick_caption(lines: tuple[str, ...], concept, rng: random.Random) -> str:
    """One use's caption: a random line, then the caption augmentations."""
    line = lines[0] if len(lines) == 1 else lines[rng.randrange(len(lines))]
    return augment_caption(line, concept, rng)


def fixed_captions(lines: tuple[str, ...], concept) -> set[str]:
    """Every caption an image can be trained with when the caption text does not vary (see captions_vary)."""
    out = set(lines)
    if concept.caption_dropout > 0:
        out.add("")
    return out


# ---- editing captions (the window's caption editor, generate-data) --------------------------------------

def write_caption(image: Path, text: str) -> Path:
    """Write image.txt beside the image atomically (a crash leaves the old caption or the new one)."""
    from trainer.fields import atomic_write_text
    txt = Path(image).with_suffix(".txt")
    atomic_write_text(txt, text.strip() + "\n")
    return txt


def replace_in_caption(text: str, find: str, replace: str, whole_word: bool = True) -> str:
    """`find` replaced by `replace` (case-insensitive; whole words only unless whole_word is False); the
    doubled spaces and empty comma tags a removal leaves are tidied away."""
    import re
    if not find.strip():
        return text
    pattern = re.escape(find.strip())
    if whole_word:
        pattern = rf"(?<!\w){pattern}(?!\w)"
    out = re.sub(pattern, lambda _: replace, text, flags=re.IGNORECASE)
    if out == text:
        return text
    out = re.sub(r"[ \t]+", " ", out)
    out = re.sub(r"\s+,", ",", out)
    out = re.sub(r",(\s*,)+", ",", out)
    return out.strip().strip(",").strip()


def find_replace_captions(images: list[Path], find: str, replace: str, whole_word: bool = True,
                          dry_run: bool = False) -> list[Path]:
    """Replace `find` in the txt captions of `images` (each line); returns the images whose caption changed.
    Each changed file is rewritten atomically; dry_run only reports what would change."""
    changed = []
    for image in images:
        txt = Path(image).with_suffix(".txt")
        if not txt.is_file():
            continue
        old = txt.read_text(encoding="utf-8-sig", errors="replace")
        new = "\n".join(replace_in_caption(line, find, replace, whole_word) for line in old.strip().splitlines())
        if new != old.strip():
            changed.append(Path(image))
            if not dry_run:
                write_caption(image, new)
    return changed


def strip_phrases(caption: str, phrases: str) -> str:
    """`caption` with each comma-separated phrase of `phrases` removed (whole words, case-insensitive)."""
    for phrase in phrases.split(","):
        caption = replace_in_caption(caption, phrase, "")
    return caption
