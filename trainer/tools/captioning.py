"""caption: write captions for a folder of images with a vision-language model and/or a WD tagger (modes missing,
all, prepend, append), resuming a stopped run from a journal kept outside the image folder; `preview` proposes
captions and writes nothing. No UI here; the models load lazily (trainer.tools.caption_models).

The run's events: Status lines, a Log per skipped group and a summary at the end, one ImageGenerated per image
it worked on (path: the image, caption: the text written; skipped=True when the image was left without a new
caption, with a warning saying why), and the session's one RunFinished.
"""
from __future__ import annotations

import hashlib
import json
import os
import queue
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from trainer import events as ev
from trainer.data.captions import CaptionFile, encode_caption, read_caption_file
from trainer.data.images import list_image_files
from trainer.errors import InputError
from trainer.fields import atomic_write_bytes, atomic_write_text
from trainer.specs import DEFAULT_CAPTIONER_MODELS, DEFAULT_TAGGER_MODEL, CaptionSpec, validate_spec
from trainer.tools.caption_models import (Captioner, WDTagger, captioner_problem, model_folder, pick_tags,
                                          tagger_problem,
                                          MODEL_FILES, TAGGER_FILES)
from trainer.tools.generate_data import stop_requested

JOURNAL_VERSION = 1
# The settings that decide what a run writes: a journal entry made with others does not count as done.
CAPTION_SETTINGS = ("mode", "separator", "captioner", "captioner_model", "prompt", "max_new_tokens", "tagger",
                    "tagger_model", "tag_threshold", "character_threshold", "replace_underscores", "prefix",
                    "suffix", "caption_extension")


@dataclass
class Work:
    """One image to caption: its caption file and what that file holds now."""
    image: Path
    caption_file: Path
    old: CaptionFile


def _no_emit(event) -> None:
    pass


# ---- inputs ----------------------------------------------------------------------------------------------

def check_inputs(spec: CaptionSpec) -> None:
    """Refuse, before anything loads, what cannot run: an invalid spec, a missing or empty image folder, a local model
    folder of the wrong kind (config.json model_type; a tagger without model.onnx / selected_tags.csv).
    Repo ids are checked when fetched. Raises InputError naming the field; reads files only (no torch)."""
    problems = validate_spec(spec)
    if problems:
        raise InputError(problems[0])
    folder = Path(spec.image_dir).expanduser()
    if not folder.is_dir():
        raise InputError(f"image_dir: {folder} is not a folder")
    if not list_image_files(folder, spec.include_subfolders):
        below = not spec.include_subfolders and any(p.is_dir() for p in folder.iterdir())
        raise InputError(f"image_dir: {folder} has no images"
                         + ("; to caption those of its subfolders, turn on include_subfolders" if below else ""))
    for field, name, problem in (("captioner_model", spec.captioner != "none" and spec.captioner_model,
                                  lambda p: captioner_problem(p, spec.captioner)),
                                 ("tagger_model", spec.tagger != "none" and spec.tagger_model, tagger_problem)):
        if name and Path(name).expanduser().is_dir():
            reason = problem(Path(name).expanduser())
            if reason:
                raise InputError(f"{field}: {reason}")


def caption_file_of(image: Path, spec: CaptionSpec) -> Path:
    """Where the caption of `image` goes: the same name with caption_extension (photo.jpg -> photo.txt)."""
    return image.with_suffix(spec.caption_extension)


def settings_key(spec: CaptionSpec) -> str:
    """A short hash of the settings that decide the written text (CAPTION_SETTINGS)."""
    chosen = {k: v for k, v in asdict(spec).items() if k in CAPTION_SETTINGS}
    return hashlib.sha256(json.dumps(chosen, sort_keys=True).encode()).hexdigest()[:16]


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


# ---- the journal: which images a run captioned, kept outside the user's folder ---------------------------

def journal_folder(spec: CaptionSpec) -> Path:
    """spec.workspace_dir, or when empty SeaChange's cache folder for journals: $SEACHANGE_CACHE_DIR, else
    $XDG_CACHE_HOME/seachange, else ~/.cache/seachange; then caption-journals. Not relative to the folder a run
    starts from, so that the window and the command line find the same journals."""
    if spec.workspace_dir.strip():
        return Path(spec.workspace_dir).expanduser()
    base = os.environ.get("SEACHANGE_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or
                                                         Path.home() / ".cache") / "seachange"
    return Path(base) / "caption-journals"


class Journal:
    """The journal of one image folder, WORKSPACE/journal-<hash of the folder's absolute path>.json:
    {"version", "folder": absolute path, "images": {file name: {"settings": settings_key, "caption": text}}}.
    An entry is written before its caption file, so an image counts as done when its caption file holds
    exactly the entry's text under the same settings: a stop or a crash at any point never captions (or
    appends to) an image twice, and a caption the user edited since is captioned again."""

    def __init__(self, workspace: Path, folder: Path):
        self.folder = os.path.abspath(folder)
        digest = hashlib.sha256(self.folder.encode("utf-8")).hexdigest()[:16]
        self.path = Path(workspace).expanduser() / f"journal-{digest}.json"
        self.images: dict = {}
        if self.path.exists():
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
                if data.get("folder") == self.folder:
                    self.images = dict(data["images"])
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
                raise InputError(f"workspace_dir: the journal {self.path} is unreadable ({e}); move it away to "
                                 "start over") from e

    def done(self, work: Work, key: str) -> bool:
        entry = self.images.get(work.image.name) or {}
        return entry.get("settings") == key and _lines(entry.get("caption", "")) == list(work.old.lines)

    def record(self, image: Path, key: str, text: str) -> None:
        self.images[image.name] = {"settings": key, "caption": text}

    def save(self) -> None:
        atomic_write_text(self.path, json.dumps({"version": JOURNAL_VERSION, "folder": self.folder,
                                                 "images": self.images}, indent=1))


def mask_files(images: list[Path], suffix: str) -> set[Path]:
    """The images that are loss masks of others (trainer.data.masks: NAME + suffix + .png beside an image NAME.*);
    an image whose name merely ends with the suffix, with no image of the shorter name beside it, is not one."""
    if not suffix:
        return set()
    stems = {(image.parent, image.stem) for image in images}
    return {image for image in images if image.suffix.lower() == ".png" and image.stem.endswith(suffix)
            and (image.parent, image.stem[:-len(suffix)]) in stems}


def plan(spec: CaptionSpec, emit: Callable, journals: dict | None = None) -> tuple[list[Work], int]:
    """(the images the run would caption, in sorted path order; how many it leaves as they are). Those are
    counted in Log lines by reason: captions there already (mode missing), images done by an earlier run (the
    journal), caption files that cannot be decoded (never touched). journals: folder -> Journal, filled for the
    modes that keep one."""
    images = list_image_files(Path(spec.image_dir).expanduser(), spec.include_subfolders)
    masks = mask_files(images, spec.mask_suffix)
    if masks:
        emit(ev.Log("info", f"{len(masks)} loss mask file(s) (e.g. {sorted(masks)[0].name}) are not captioned"))
        images = [image for image in images if image not in masks]
    sharing: dict[Path, list[Path]] = {}
    for image in images:
        sharing.setdefault(caption_file_of(image, spec), []).append(image)
    for caption_file, shared in sharing.items():
        if len(shared) > 1:  # one caption file, two images: either caption would be the other's
            emit(ev.Log("warning", f"{' and '.join(i.name for i in shared)} share the caption file "
                                   f"{caption_file.name}: not captioned; rename one of them"))
            images = [image for image in images if image not in shared]
    key = settings_key(spec)
    journals = {} if journals is None else journals
    todo, has_caption, done, unreadable = [], 0, 0, []
    for image in images:
        work = Work(image, caption_file_of(image, spec), read_caption_file(caption_file_of(image, spec)))
        if work.old.problem:
            unreadable.append(f"{work.caption_file} ({work.old.problem})")
        elif spec.mode == "missing":
            if work.old.lines:
                has_caption += 1
            else:
                todo.append(work)
        else:
            if image.parent not in journals:
                journals[image.parent] = Journal(journal_folder(spec), image.parent)
            if journals[image.parent].done(work, key):
                done += 1
            else:
                todo.append(work)
    if has_caption:
        emit(ev.Log("info", f"{has_caption} image(s) already have a caption: left as they are (mode missing)"))
    if done:
        emit(ev.Log("info", f"{done} image(s) were captioned with these settings by an earlier run: left as they "
                            f"are (the journals in {journal_folder(spec)} record them; delete them to caption "
                            "again)"))
    if unreadable:
        emit(ev.Log("warning", f"{len(unreadable)} caption file(s) cannot be decoded and are left untouched: "
                               + "; ".join(unreadable[:3]) + (" ..." if len(unreadable) > 3 else "")))
    return todo, has_caption + done + len(unreadable)


# ---- the text -------------------------------------------------------------------------------------------

def _join(parts: list[str]) -> str:
    """Non-empty parts joined with ', '; a part's final period is dropped when another part follows it."""
    parts = [p.strip().strip(",").strip() for p in parts]
    parts = [p for p in parts if p]
    return ", ".join([p.rstrip(".").rstrip() if i < len(parts) - 1 else p for i, p in enumerate(parts)])


def compose(spec: CaptionSpec, caption: str, tags: list[str]) -> str:
    """The new text of one image: prefix, the model's caption, its tags, suffix, joined with ', '; "" when
    neither the captioner nor the tagger found anything (a prefix alone is no caption)."""
    if not caption.strip() and not tags:
        return ""
    return _join([spec.prefix, caption, ", ".join(tags), spec.suffix])


def apply_mode(spec: CaptionSpec, old_lines: tuple[str, ...], text: str) -> str:
    """The caption file's new content: `text` alone (modes missing and all, or no caption yet), or `text`
    joined with the separator before (prepend) or after (append) each line of the existing caption."""
    if spec.mode in ("missing", "all") or not old_lines:
        return text
    if spec.mode == "prepend":
        return "\n".join(f"{text}{spec.separator}{line}" for line in old_lines)
    return "\n".join(f"{line}{spec.separator}{text}" for line in old_lines)


def write_caption_text(path: Path, old: CaptionFile, text: str) -> str | None:
    """Write `text` to the caption file atomically, in the file's own encoding, BOM and line ends (as
    captions.save_caption does for .txt; a symlinked file is written where it points). Returns the note of
    captions.encode_caption (text the old encoding cannot hold is written as UTF-8), or None."""
    data, note = encode_caption(old, text)
    atomic_write_bytes(Path(os.path.realpath(path)), data)
    return note


# ---- the models -----------------------------------------------------------------------------------------

class Models:
    """The spec's captioner and tagger, loaded on the device: `describe(images)` -> (caption, tags) per image."""

    def __init__(self, spec: CaptionSpec, emit: Callable):
        import torch

        from trainer.specs import resolve_device
        device = resolve_device(spec.device)
        if spec.dtype != "auto":
            dtype = getattr(torch, spec.dtype)
        elif device == "cuda":
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        else:
            dtype = torch.float32
        self.spec, self.captioner, self.tagger = spec, None, None
        if spec.captioner != "none":
            name = spec.captioner_model.strip() or DEFAULT_CAPTIONER_MODELS[spec.captioner]
            folder = model_folder(name, "captioner_model", emit,
                                  lambda p, weights: captioner_problem(p, spec.captioner, weights), MODEL_FILES,
                                  config_first=True)
            emit(ev.Status(f"Loading {name}"))
            self.captioner = Captioner(spec.captioner, folder, device, dtype, spec.prompt.strip(),
                                       spec.max_new_tokens)
        if spec.tagger != "none":
            name = spec.tagger_model.strip() or DEFAULT_TAGGER_MODEL
            folder = model_folder(name, "tagger_model", emit,
                                  lambda p, complete: tagger_problem(p) if complete else None, list(TAGGER_FILES))
            emit(ev.Status(f"Loading {name}"))
            self.tagger = WDTagger(folder, device, emit)

    def describe(self, images: list) -> list[tuple[str, list[str]]]:
        captions = self.captioner.caption(images) if self.captioner else [""] * len(images)
        if self.tagger is None:
            return [(c, []) for c in captions]
        s = self.spec
        scores = self.tagger.scores(images)
        return [(c, pick_tags(row, self.tagger.table, s.tag_threshold, s.character_threshold,
                              s.replace_underscores)) for c, row in zip(captions, scores)]


def _decode(work: list[Work], emit: Callable) -> tuple[list[int], list]:
    """(indices, images): the batch's images that decode, as RGB (EXIF rotation applied, transparency on white);
    an image that cannot be decoded is left out with a warning."""
    from trainer.data.images import decode
    kept, images = [], []
    for i, item in enumerate(work):
        try:
            images.append(decode(item.image, draft_size=(1024, 1024)))
            kept.append(i)
        except (OSError, ValueError) as e:  # damaged, not an image, over the size limit
            emit(ev.Log("warning", f"{item.image}: cannot be read ({e}); left without a new caption"))
    return kept, images


def _proposals(models: Models, work: list[Work], emit: Callable) -> list[tuple[Work, str | None]]:
    """(work, new caption file content) for each image of a batch; None where there is nothing to write. Each
    caption file is read again first: one that changed since the plan (captioned meanwhile in mode missing, or no
    longer decodable) is left as it is, and prepend / append extend what it holds now."""
    fresh = []
    for i, item in enumerate(work):
        item.old = read_caption_file(item.caption_file)
        if item.old.problem or (models.spec.mode == "missing" and item.old.lines):
            emit(ev.Log("warning", f"{item.caption_file} changed during the run: left as it is"))
        else:
            fresh.append(i)
    kept, images = _decode([work[i] for i in fresh], emit)
    kept = [fresh[k] for k in kept]
    texts: list[str | None] = [None] * len(work)
    for i, (caption, tags) in zip(kept, models.describe(images) if images else []):
        text = compose(models.spec, caption, tags)
        if text:
            texts[i] = apply_mode(models.spec, work[i].old.lines, text)
        else:
            emit(ev.Log("warning", f"{work[i].image}: the model wrote no text and no tag passed the thresholds; "
                                   "left without a new caption"))
    return list(zip(work, texts))


# ---- the tool -------------------------------------------------------------------------------------------

def caption(spec: CaptionSpec, emit: Callable, commands: queue.Queue | None = None) -> ev.RunFinished:
    """Caption spec.image_dir as the spec says, batch by batch; a stop command is honoured between batches and
    a later run resumes (mode missing: the captions written are there; the other modes: the journals).
    Existing captions change only as the mode says; undecodable caption files are never touched."""
    check_inputs(spec)
    folder = Path(spec.image_dir).expanduser()
    journals: dict = {}
    todo, kept = plan(spec, emit, journals)
    if not todo:
        return ev.RunFinished("completed", f"nothing to caption in {folder} ({kept} image(s) left as they are)",
                              str(folder))
    models = Models(spec, emit)
    key = settings_key(spec)
    written = left = 0
    emit(ev.Status(f"Captioning {len(todo)} image(s) in {folder}"))
    for start in range(0, len(todo), spec.batch_size):
        if stop_requested(commands):
            return ev.RunFinished("stopped", f"stopped after {written + left} of {len(todo)} image(s) ({written} "
                                             "captions written); run again to resume", str(folder))
        batch = _proposals(models, todo[start:start + spec.batch_size], emit)
        if spec.mode != "missing":  # the journal first: a crash after it never appends twice
            for item, text in batch:
                if text is not None:
                    journals[item.image.parent].record(item.image, key, text)
            for parent in {item.image.parent for item, _ in batch}:
                journals[parent].save()
        for item, text in batch:
            if text is None:
                left += 1
            else:
                note = write_caption_text(item.caption_file, item.old, text)
                if note:
                    emit(ev.Log("warning", f"{item.caption_file}: {note}"))
                written += 1
            emit(ev.ImageGenerated(str(item.image), text or "", written + left, len(todo), skipped=text is None))
    summary = (f"{written} caption(s) written in {folder}" + (f", {left} image(s) left without one" if left else "")
               + (f", {kept} image(s) left as they were (see above)" if kept else ""))
    emit(ev.Log("info", summary))
    return ev.RunFinished("completed", summary, str(folder))


def preview(spec: CaptionSpec, count: int, emit: Callable = _no_emit,
            commands: queue.Queue | None = None) -> list[tuple[Path, str]]:
    """[(image, proposed caption file content)] for the first `count` images the run would change, in the
    order it would, writing nothing (no caption, no journal). Raises InputError as `caption` does."""
    check_inputs(spec)
    todo, _ = plan(spec, emit)
    if not todo or count < 1:
        return []
    models = Models(spec, emit)
    found: list[tuple[Path, str]] = []
    start = 0
    while start < len(todo) and len(found) < count and not stop_requested(commands):
        size = min(spec.batch_size, count - len(found))
        for item, text in _proposals(models, todo[start:start + size], emit):
            if text is not None:
                found.append((item.image, text))
                emit(ev.ImageGenerated(str(item.image), text, len(found), count))
        start += size
    return found
