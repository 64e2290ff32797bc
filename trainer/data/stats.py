"""Concept statistics as plain data (for the window and `python -m trainer stats`); no torch, no UI here."""
from __future__ import annotations

import functools
from pathlib import Path

from trainer.config import Preset, built_by_demo, parse_resolutions
from trainer.data.buckets import bucket_name, bucket_sizes, nearest_bucket
from trainer.data.data import file_index, scan_concept, sort_captions
from trainer.data.inputs import long_captions
from trainer.data.masks import find_masks, mask_stats


def _range(values: list[int]) -> list[int] | None:
    return [min(values), max(values)] if values else None


EXAMPLES = 5  # files named per kind of problem


def load_tokenizer(preset: Preset):
    """The CLIP tokenizer training will use: the base model's (a diffusers folder's tokenizer/) or the bundled
    SD 1.5 one. transformers' tokenizer loads without torch; each folder is loaded once per process."""
    folder = Path(preset.model.base_model).expanduser() / "tokenizer"
    if not folder.is_dir():
        folder = Path(__file__).parents[1] / "assets" / "sd15" / "tokenizer"
    return _tokenizer(str(folder.resolve()))


@functools.lru_cache(maxsize=4)
def _tokenizer(folder: str):
    from transformers import CLIPTokenizer
    return CLIPTokenizer.from_pretrained(folder, local_files_only=True)


def _one_concept(preset: Preset, concept, index, tokenizer) -> dict:
    out = {"name": concept.name, "path": concept.path, "enabled": concept.enabled, "role": concept.role,
           "error": None, "image_count": 0, "usable": 0, "skipped": [], "without_caption": 0,
           "without_caption_examples": [], "missing_caption": concept.missing_caption, "caption_problems": [],
           "guessed_encodings": [],
           "long_captions": {"limit": preset.training.max_token_length, "count": 0, "examples": []},
           "caption_words": None, "caption_chars": None, "resolutions": [], "buckets": [], "masks": None}
    folder = Path(concept.path).expanduser()
    if not concept.path or not folder.is_dir():
        if not concept.path:
            out["error"] = "no folder chosen"
        elif folder.exists():
            out["error"] = f"{folder} is a file; choose the folder that holds the images"
        elif built_by_demo(preset, concept.path):
            out["error"] = f"folder {folder} does not exist yet: the demo builds it when training starts"
        else:
            out["error"] = f"folder {folder} does not exist"
        return out
    try:
        out["resolutions"] = parse_resolutions(concept.resolution.strip() or preset.training.resolution)
    except ValueError as e:
        out["error"] = f"resolution: {e}"
    usable, skipped = scan_concept(concept, index)  # together: every image file found
    sorted_ = sort_captions(usable, concept)
    out.update(image_count=len(usable) + len(skipped), usable=len(sorted_.kept),
               skipped=[{"path": str(p), "reason": r} for p, r in skipped + sorted_.skipped],
               without_caption=len(sorted_.missing),
               without_caption_examples=[str(p) for p in sorted_.missing[:EXAMPLES]],
               guessed_encodings=[{"path": str(p), "encoding": e} for p, e in sorted_.guessed],
               caption_problems=[{"path": str(p), "reason": r} for p, r in sorted_.problems])
    masks = find_masks(concept, [info for info, _ in sorted_.kept], index)
    out["masks"] = mask_stats(concept, masks)
    if masks.problems and not out["error"]:  # training refuses them (data.collect_items)
        path, reason = masks.problems[0]
        more = len(masks.problems) - 1
        out["error"] = f"mask file {path} {reason}" + (f" ({more} more mask file(s) cannot be used)" if more else "")
    words, chars, counts, texts = [], [], {}, []
    for info, found in sorted_.kept:
        lines = found.lines
        texts.append((info.path, lines))
        words += [len(line.split()) for line in lines]
        chars += [len(line) for line in lines]
        for r in out["resolutions"]:
            size = nearest_bucket(info.width, info.height, bucket_sizes(r, preset.training.aspect_bucketing))
            counts[(r, size)] = counts.get((r, size), 0) + 1
    out["long_captions"] = long_captions(preset, texts, tokenizer)
    out["caption_words"], out["caption_chars"] = _range(words), _range(chars)
    out["buckets"] = [{"resolution": r, "width": s[0], "height": s[1], "images": n}
                      for (r, s), n in sorted(counts.items())]
    return out


def concept_stats(preset: Preset) -> list[dict]:
    """Per concept (in preset order): its role (config.CONCEPT_ROLES), image files found, usable ones, skipped
    ones with reasons, images without a caption file (txt sources), caption length ranges (words, characters;
    over every caption line), and the bucket histogram per resolution. A missing folder gives an "error" entry
    instead of raising. Files are fully decoded once; the cache folder's file index (when the folder exists)
    remembers them."""
    index, tokenizer = file_index(preset), load_tokenizer(preset)
    stats = [_one_concept(preset, concept, index, tokenizer) for concept in preset.concepts]
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
        role = ROLE_TAGS.get(s.get("role", "train"), "")
        lines.append(f"{s['name']} ({s['path']}){'' if s['enabled'] else ' [disabled]'}{role}")
        if s["error"]:
            lines.append(f"  error: {s['error']}")
        if s["error"] and not s["image_count"]:
            continue
        lines.append(f"  {s['image_count']} image files, {s['usable']} usable, {len(s['skipped'])} skipped, "
                     f"{s['without_caption']} without a caption (missing_caption: {s['missing_caption']})")
        unreadable = {str(Path(k["path"]).with_suffix("")) for k in s["caption_problems"]}
        for k in s["skipped"]:
            if str(Path(k["path"]).with_suffix("")) not in unreadable:  # listed below with its caption file
                lines.append(f"    skipped {k['path']}: {k['reason']}")
        if s["without_caption"]:
            more = s["without_caption"] - len(s["without_caption_examples"])
            lines.append(f"    without a caption: {', '.join(Path(p).name for p in s['without_caption_examples'])}"
                         + (f" and {more} more" if more else "")
                         + ("; training refuses to start until they have one" if s["missing_caption"] == "refuse"
                            else ""))
        for k in s["caption_problems"]:
            lines.append(f"    caption not readable {k['path']}: {k['reason']}")
        for k in s["guessed_encodings"]:
            lines.append(f"    caption read as {k['encoding']} (a legacy code page, detected): {k['path']}")
        long = s["long_captions"]
        if long["count"]:
            lines.append(f"  {long['count']} caption(s) longer than {long['limit']} tokens (the rest is cut; "
                         "training.max_token_length takes 150 or 225):")
            for k in long["examples"]:
                lines.append(f"    {k['path']}: {k['tokens']} tokens")
        masks = s.get("masks")
        if masks:
            lines.append(f"  masks from {masks['source']}: {masks['with']} image(s) with a mask, {masks['without']} "
                         "without (trained unmasked)")
            if masks["without"]:
                more = masks["without"] - len(masks["without_examples"])
                lines.append(f"    without a mask: {', '.join(Path(p).name for p in masks['without_examples'])}"
                             + (f" and {more} more" if more else ""))
            for k in masks["problems"]:
                lines.append(f"    mask not usable {k['path']}: {k['reason']}")
        if s["caption_words"]:
            lines.append(f"  captions: {s['caption_words'][0]}-{s['caption_words'][1]} words, "
                         f"{s['caption_chars'][0]}-{s['caption_chars'][1]} characters")
        for b in s["buckets"]:
            size = bucket_name((b["width"], b["height"]))
            lines.append(f"  bucket {size:>10} @ {b['resolution']}: {b['images']} image(s)")
    lines += role_totals(stats)
    return "\n".join(lines)


ROLE_TAGS = {"regularization": " [regularization: mixed into every epoch]",
             "validation": " [validation: never trained on]"}


def role_totals(stats: list[dict]) -> list[str]:
    """The usable images of the enabled concepts counted by role, as one line; none when every concept trains."""
    totals = {}
    for s in stats:
        if s["enabled"]:
            totals[s.get("role", "train")] = totals.get(s.get("role", "train"), 0) + s["usable"]
    if set(totals) <= {"train"}:
        return []
    words = {"train": "to train on", "regularization": "regularization", "validation": "validation (never trained on)"}
    return ["usable images: " + ", ".join(f"{totals[r]} {words[r]}" for r in words if r in totals)]
