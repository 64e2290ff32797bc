"""Concept statistics as plain data (for the window and `python -m trainer stats`); no torch, no UI here."""
from __future__ import annotations

from pathlib import Path

from trainer.buckets import bucket_name, bucket_sizes, nearest_bucket
from trainer.captions import TXT_SOURCES, caption_lines
from trainer.config import Preset, parse_resolutions
from trainer.images import list_image_files, scan_files
from trainer.data import file_index


def _range(values: list[int]) -> list[int] | None:
    return [min(values), max(values)] if values else None


def _one_concept(preset: Preset, concept, index) -> dict:
    out = {"name": concept.name, "path": concept.path, "enabled": concept.enabled, "error": None,
           "image_count": 0, "usable": 0, "skipped": [], "without_caption": 0, "caption_words": None,
           "caption_chars": None, "resolutions": [], "buckets": []}
    folder = Path(concept.path).expanduser()
    if not concept.path or not folder.is_dir():
        out["error"] = f"folder {folder} does not exist" if concept.path else "no folder chosen"
        return out
    try:
        out["resolutions"] = parse_resolutions(concept.resolution.strip() or preset.training.resolution)
    except ValueError as e:
        out["error"] = f"resolution: {e}"
    files = list_image_files(folder, concept.include_subdirectories)
    usable, skipped = scan_files(files, index)
    out.update(image_count=len(files), usable=len(usable),
               skipped=[{"path": str(p), "reason": r} for p, r in skipped])
    words, chars, counts = [], [], {}
    for info in usable:
        lines, has_txt = caption_lines(info.path, concept)
        if concept.caption_source in TXT_SOURCES and not has_txt:
            out["without_caption"] += 1
        words += [len(line.split()) for line in lines]
        chars += [len(line) for line in lines]
        for r in out["resolutions"]:
            size = nearest_bucket(info.width, info.height, bucket_sizes(r, preset.training.aspect_bucketing))
            counts[(r, size)] = counts.get((r, size), 0) + 1
    out["caption_words"], out["caption_chars"] = _range(words), _range(chars)
    out["buckets"] = [{"resolution": r, "width": s[0], "height": s[1], "images": n}
                      for (r, s), n in sorted(counts.items())]
    return out


def concept_stats(preset: Preset) -> list[dict]:
    """Per concept (in preset order): image files found, usable ones, skipped ones with reasons, images without
    a caption file (txt sources), caption length ranges (words, characters; over every caption line), and the
    bucket histogram per resolution. A missing folder gives an "error" entry instead of raising. Files are fully
    decoded once; the cache folder's file index (when the folder exists) remembers them."""
    index = file_index(preset)
    stats = [_one_concept(preset, concept, index) for concept in preset.concepts]
    if index.path is not None and index.path.parent.is_dir():
        try:
            index.save()
        except OSError:
            pass
    return stats


def format_stats(stats: list[dict]) -> str:
    """A readable report of concept_stats() for the command line."""
    lines = []
    for s in stats:
        lines.append(f"{s['name']} ({s['path']}){'' if s['enabled'] else ' [disabled]'}")
        if s["error"]:
            lines.append(f"  error: {s['error']}")
        if s["error"] and not s["image_count"]:
            continue
        lines.append(f"  {s['image_count']} image files, {s['usable']} usable, {len(s['skipped'])} skipped, "
                     f"{s['without_caption']} without a caption file")
        for k in s["skipped"]:
            lines.append(f"    skipped {k['path']}: {k['reason']}")
        if s["caption_words"]:
            lines.append(f"  captions: {s['caption_words'][0]}-{s['caption_words'][1]} words, "
                         f"{s['caption_chars'][0]}-{s['caption_chars'][1]} characters")
        for b in s["buckets"]:
            size = bucket_name((b["width"], b["height"]))
            lines.append(f"  bucket {size:>10} @ {b['resolution']}: {b['images']} image(s)")
    return "\n".join(lines)
