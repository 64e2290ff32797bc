"""What a run says about its inputs before it trains (files left out, images without a caption, captions over the
token limit), and the record of the images it trained on that a backup keeps for resume. No torch, no UI here."""
from __future__ import annotations

import hashlib
from pathlib import Path

from trainer import events as ev
from trainer.config import Preset


def names(paths: list[Path], first: int = 5) -> str:
    """'a.png, b.png, c.png and 7 more'."""
    shown = ", ".join(p.name for p in paths[:first])
    return shown + (f" and {len(paths) - first} more" if len(paths) > first else "")


def input_report(preset: Preset, items) -> list[ev.Log]:
    """What the run says before training about its inputs (`items`: data.collect_items' result): every file
    left out with its reason, captions read in a detected code page, and per concept the images without a
    usable caption and what is done with them (never silent)."""
    logs = [ev.Log("warning", f"Skipped {path}: {reason}") for path, reason in items.skipped]
    if items.guessed_encodings:
        shown = ", ".join(f"{path.name} ({encoding})" for path, encoding in items.guessed_encodings[:5])
        more = len(items.guessed_encodings) - 5
        count = len(items.guessed_encodings)
        logs.append(ev.Log("info", f"{count} caption file{'s are' if count > 1 else ' is'} in a legacy code page, "
                                   f"read as detected: {shown}{f' and {more} more' if more > 0 else ''}. If one "
                                   "reads wrong in the caption editor, save it as UTF-8"))
    what = {"concept_caption": "trained with the concept's caption", "filename": "captioned with their file name"}
    for ci, paths in items.without_caption.items():
        concept = preset.concepts[ci]
        action = concept.missing_caption
        if action == "skip":
            continue  # each is in `skipped` already
        doing = what[action] + (f" {concept.caption.strip()!r}" if action == "concept_caption" else "")
        if action == "concept_caption" and not concept.caption.strip():
            doing = "trained with an empty caption"
        logs.append(ev.Log("warning", f"Concept {concept.name!r}: {len(paths)} image(s) have no caption (missing "
                                      f"or empty .txt), {doing}: {names(paths)}. Set the concept's 'Without a "
                                      "caption' (missing_caption) to choose."))
    return logs


def long_captions(preset: Preset, captions: list[tuple[Path, tuple[str, ...]]], tokenizer) -> dict:
    """Captions over training.max_token_length: {"limit", "count" (caption lines), "examples": the first few
    [{"path", "tokens"}] (the longest line of each image)}."""
    from trainer.data.prompts import token_count
    limit = preset.training.max_token_length
    count, examples = 0, []
    for path, lines in captions:
        lengths = [token_count(tokenizer, line) for line in lines]
        over = [n for n in lengths if n > limit]
        count += len(over)
        if over and len(examples) < 5:
            examples.append({"path": str(path), "tokens": max(over)})
    return {"limit": limit, "count": count, "examples": examples}


def long_caption_report(preset: Preset, items: list, tokenizer) -> list[ev.Log]:
    """The run's warning, once at start, when captions are longer than training.max_token_length."""
    found = long_captions(preset, [(item.path, item.captions) for item in items], tokenizer)
    if not found["count"]:
        return []
    shown = ", ".join(f"{Path(e['path']).name} ({e['tokens']} tokens)" for e in found["examples"])
    more = " (150 or 225 hold more)" if found["limit"] < 225 else ""
    return [ev.Log("warning", f"{found['count']} caption(s) are longer than training.max_token_length = "
                              f"{found['limit']} tokens{more}; the words past it are cut: {shown}")]


def caption_hash(lines: tuple[str, ...]) -> str:
    """A short hex hash of an image's caption lines (UTF-8, joined by newlines): edits show, line ends do not."""
    return hashlib.blake2b("\n".join(lines).encode("utf-8"), digest_size=12).hexdigest()


def dataset_record(items: list) -> dict[str, list[str]]:
    """What a run trains on, for its backups: image path -> [content hash (with its mask file's, when it has
    one: a changed mask is a changed image), hash of its caption lines]."""
    def digest(item) -> str:
        mask = getattr(item, "mask", None)
        return item.digest if mask is None or mask.kind != "file" else f"{item.digest}+{mask.digest}"
    return {str(item.path): [digest(item), caption_hash(item.captions)] for item in items}


def dataset_changes(saved: dict[str, list[str]], now: dict[str, list[str]]) -> dict[str, list[str]]:
    """The differences between two dataset records: {"added", "removed", "images changed", "captions edited"}
    -> image paths (only the non-empty kinds)."""
    changes = {"added": sorted(set(now) - set(saved)), "removed": sorted(set(saved) - set(now)),
               "images changed": sorted(p for p in set(saved) & set(now) if saved[p][0] != now[p][0]),
               "captions edited": sorted(p for p in set(saved) & set(now) if saved[p][1] != now[p][1])}
    return {kind: paths for kind, paths in changes.items() if paths}
