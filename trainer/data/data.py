"""Concepts -> training batches: images, repeats, aspect buckets, seeded epochs, cached latents/text. No UI here.

Every choice (order, bucket batches, resolution, caption line and augmentation, image augmentation or cached
variant) is a pure function of (general.seed, epoch, position or image), so iter_epoch(e, k) yields exactly the
steps k.. of an uninterrupted epoch e. Under `accelerate launch` each process gets its own share of every
optimizer step (process_steps). torch is imported lazily: trainer.data.stats uses this module without it.
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path

import numpy as np

from trainer import events as ev
from trainer.config import ConceptConfig, Preset, parse_resolutions
from trainer.data.buckets import bucket_sizes, nearest_bucket
from trainer.data.captions import caption_lines, captions_vary, fixed_captions, pick_caption
from trainer.data.images import (IMAGE_SUFFIXES, Augment, FileIndex, draw_augment, has_random_augments,
                                 list_image_files, scan_files)
from trainer.data.inputs import names
from trainer.data.masks import (MaskRef, batch_weights, find_masks, latent_factor, load_with_mask, mask_report,
                                refuse_problems, separate_mask_files, to_latent_grid)
from trainer.errors import InputError


@dataclass(frozen=True)
class ImageItem:
    """A usable image of an enabled concept, with what bucketing and captions need."""
    path: Path
    concept_index: int
    digest: str = ""
    width: int = 1
    height: int = 1
    captions: tuple[str, ...] = ("",)
    has_txt: bool = False
    mask: MaskRef | None = None  # its loss mask when its concept uses masks and it has one (trainer.data.masks)


class Items(list):
    """collect_items' result: the usable images; `skipped` holds (path, reason) of the files left out (unreadable
    images, undecodable captions, images without a caption that their concept skips); `without_caption` maps
    a concept index to the images that have no usable caption (missing or empty .txt); `guessed_encodings`
    holds (caption file, encoding) of captions in a legacy code page (detected, so worth a look)."""
    skipped: list
    without_caption: dict
    guessed_encodings: list


def file_index(preset: Preset) -> FileIndex:
    # a name no user file has: the cache folder may be one of the user's folders
    return FileIndex(Path(preset.general.cache_dir).expanduser() / "seachange-file-index.json")


def concept_resolutions(preset: Preset, index: int) -> list[int]:
    concept = preset.concepts[index]
    text = concept.resolution.strip() or preset.training.resolution
    try:
        return parse_resolutions(text)
    except ValueError as e:
        where = f"concepts.{index}.resolution" if concept.resolution.strip() else "training.resolution"
        raise InputError(f"{where}: {e}") from None


def scan_concept(concept: ConceptConfig, index: FileIndex) -> tuple[list, list[tuple[Path, str]]]:
    """(usable ImageInfo, skipped (path, reason)) of a concept; a missing folder raises InputError."""
    folder = Path(concept.path).expanduser()
    if not concept.path or not folder.is_dir():
        raise InputError(f"concept {concept.name!r}: folder {folder} does not exist")
    duplicates: list = []
    listed = list_image_files(folder, concept.include_subdirectories, duplicates)
    listed, masks = separate_mask_files(listed, concept)  # with masks from files, those files are no images
    usable, skipped = scan_files(listed, index)
    return usable, skipped + masks + duplicates


@dataclass
class SortedCaptions:
    """A concept's usable images sorted by their captions (sort_captions).

    kept: (ImageInfo, captions.ImageCaptions) of the images trained on; skipped: (image, reason) of those left
    out (an undecodable caption file, or no caption under missing_caption "skip"); missing: the images without a
    usable caption (kept or skipped as the concept says); guessed: (caption file, encoding) of captions read in
    a detected code page; problems: (caption file, reason) of caption files that cannot be decoded."""
    kept: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    missing: list = field(default_factory=list)
    guessed: list = field(default_factory=list)
    problems: list = field(default_factory=list)


def sort_captions(usable: list, concept: ConceptConfig) -> SortedCaptions:
    """Read each usable image's captions (captions.caption_lines) and sort the images: what training does with
    them, and what `stats` and the run report about them. One reading for both, so they never disagree."""
    out = SortedCaptions()
    for info in usable:
        found = caption_lines(info.path, concept)
        txt = info.path.with_suffix(".txt")
        if found.missing:
            out.missing.append(info.path)
        if found.guessed:
            out.guessed.append((txt, found.guessed_encoding))
        if found.problem:
            out.problems.append((txt, found.problem))
            out.skipped.append((info.path, f"caption file {txt.name}: {found.problem}"))
        elif found.skip:
            out.skipped.append((info.path, "no caption (missing or empty .txt) and the concept's missing_caption "
                                           "is skip"))
        else:
            out.kept.append((info, found))
    return out


def collect_items(preset: Preset) -> Items:
    """Every usable image of every enabled concept. Each file is fully decoded once (remembered in the cache
    folder by size and mtime); unreadable ones are skipped with a reason. A missing folder or a concept without
    a usable image raises InputError, before any model loads."""
    index, items = file_index(preset), Items()
    items.skipped, items.without_caption, items.guessed_encodings = [], {}, []
    for ci, concept in enumerate(preset.concepts):
        if not concept.enabled:
            continue
        usable, skipped = scan_concept(concept, index)
        concept_resolutions(preset, ci)
        sorted_ = sort_captions(usable, concept)
        skipped += sorted_.skipped
        missing = sorted_.missing
        items.guessed_encodings += sorted_.guessed
        masks = find_masks(concept, [info for info, _ in sorted_.kept], index)
        refuse_problems(ci, concept, masks)
        kept = [ImageItem(info.path, ci, info.digest, info.width, info.height, found.lines, found.has_txt,
                          masks.refs.get(info.path)) for info, found in sorted_.kept]
        if missing and concept.missing_caption == "refuse":
            raise InputError(f"concepts.{ci}.missing_caption: {len(missing)} image(s) of concept {concept.name!r} "
                             f"have no caption (missing or empty .txt): {names(missing)}. Write their captions, "
                             "or choose another action for images without a caption")
        if not kept:
            if not skipped:
                raise InputError(f"concept {concept.name!r}: no images in {concept.path} "
                                 f"(looked for {', '.join(IMAGE_SUFFIXES)})")
            path, reason = skipped[0]
            raise InputError(f"concept {concept.name!r}: no usable images in {concept.path}; "
                             f"{len(skipped)} file(s) left out (first: {path.name}: {reason})")
        items += kept
        items.skipped += skipped
        if missing:
            items.without_caption[ci] = missing
    try:
        index.save()
    except OSError:
        pass  # the index only saves time on the next run
    if not items:
        raise InputError("concepts: no enabled concept to train on")
    trained = [i for i in items if preset.concepts[i.concept_index].role == "train"]
    if not trained:
        raise InputError("concepts: no enabled concept of role train has usable images; regularization and "
                         "validation images only accompany the images trained on")
    if all(preset.concepts[i.concept_index].repeats <= 0 for i in trained):
        raise InputError("concepts: every enabled concept has repeats 0, so there is nothing to train on")
    return items


@dataclass
class Batch:
    """One micro-batch (one bucket). Either pixels, or cached VAE latent distributions (mean, std; unscaled)."""
    captions: list[str]
    positions: list[int]      # position of each sample inside its epoch (seeds its noise)
    loss_weights: list[float]
    pixels: np.ndarray | None = None       # B, H, W, 3 float32 in [-1, 1]
    latent_mean: object | None = None      # torch tensor B, 4, h, w when latents are cached
    latent_std: object | None = None
    text_embeddings: object | None = None  # torch tensor B, 77, D when text embeddings are cached
    padding: bool = False  # a repeat with loss weight 0 that keeps processes in step (EpochPlan.process_steps)
    # torch tensor B, 1, h, w (the latent grid): the loss weight of each latent cell from the samples' masks
    # (trainer.data.masks.batch_weights); None when no sample of the batch has a mask
    mask_weights: object | None = None

    def pin_memory(self) -> "Batch":
        """Called by the DataLoader (pin_memory=True on CUDA): page-locked tensors copy to the GPU faster."""
        pinned = {k: getattr(self, k).pin_memory() for k in ("latent_mean", "latent_std", "text_embeddings",
                                                             "mask_weights") if getattr(self, k) is not None}
        return replace(self, **pinned)


@dataclass(frozen=True)
class PlannedBatch:
    """A micro-batch as the plan lays it out, before loading (EpochPlan.load makes it a Batch): its epoch, its
    bucket size, and each sample's position in the epoch and index in EpochPlan.items."""
    epoch: int
    size: tuple[int, int]
    positions: tuple[int, ...]
    items: tuple[int, ...]
    padding: bool = False  # loads with loss weight 0: it only keeps a process in step with the others


class EpochPlan:
    """The seeded order of each epoch, cut into optimizer steps of one-bucket micro-batches (no image dropped).

    The loop uses: prepare(...), epoch_steps(epoch), total_steps(epochs), step_samples(epoch, step),
    iter_epoch(epoch, start_step). With several processes (process_index of num_processes) an optimizer step
    holds the micro-batches of all of them, and iter_epoch yields this process's share (process_steps).

    The images of the concepts trained on (role train, and regularization mixed in at its rate: concept_rate)
    make the plan; validation images never enter it. With validation=True the plan is the other way round: the
    validation images alone, each used once per epoch (trainer.train.validation measures their loss on epoch 0's).
    """

    def __init__(self, preset: Preset, items: list[ImageItem], process_index: int = 0, num_processes: int = 1,
                 validation: bool = False):
        self.validation = validation
        self.preset = preset
        self.items = [i for i in items if (preset.concepts[i.concept_index].role == "validation") == validation]
        self.process_index, self.num_processes = process_index, num_processes
        t, self.seed = preset.training, preset.general.seed
        self.batch_size, self.accumulation = t.batch_size, t.gradient_accumulation_steps
        self.bucketing, self.workers = t.aspect_bucketing, preset.general.dataloader_workers
        self.resolutions = {ci: concept_resolutions(preset, ci) for ci in {i.concept_index for i in self.items}}
        self.members: dict[int, list[int]] = {}
        for idx, item in enumerate(self.items):
            self.members.setdefault(item.concept_index, []).append(idx)
        self.whole, self.fraction = {}, {}
        for ci, members in self.members.items():
            r = self.concept_rate(ci)
            self.whole[ci], self.fraction[ci] = math.floor(r), (r - math.floor(r)) * len(members)
        self._cycles: dict[int, list[list[int]]] = {}
        self._layouts: dict[int, list[list[PlannedBatch]]] = {}
        self._sizes: dict[tuple[int, int], tuple[int, int]] = {}
        self.latents = self.texts = None   # TensorCaches, set by prepare()
        self.vae_id, self.dtype_name, self.text_keys, self.pin_memory = "", "", {}, False
        self.latent_factor = 8  # pixels per latent cell and side; prepare() reads it from the VAE
        self.report: dict[str, int] = {}

    # ---- which images an epoch uses ------------------------------------------------------------------

    def training_uses(self) -> Fraction:
        """The uses of training images (role train) in an epoch, on average over epochs: repeats x images summed
        over the concepts of role train."""
        return sum((Fraction(self.preset.concepts[ci].repeats).limit_denominator(10_000) * len(members)
                    for ci, members in self.members.items() if self.preset.concepts[ci].role == "train"),
                   Fraction(0))

    def concept_rate(self, ci: int) -> Fraction:
        """Uses per image per epoch of concept `ci` (exact; the fraction's share is spread over epochs by
        epoch_uses): its repeats for role train; for role regularization its regularization_rate x the epoch's
        training uses, shared among its images, as kohya balances reg images against train images (sd-scripts
        library/train_util.py, DreamBoothDataset: as many reg image uses per epoch as train image uses), except
        that here every image of a large set takes its turn instead of the first ones only; 1 in a validation
        plan."""
        concept = self.preset.concepts[ci]
        if self.validation:
            return Fraction(1)
        if concept.role == "regularization":
            rate = Fraction(concept.regularization_rate).limit_denominator(10_000)
            return rate * self.training_uses() / len(self.members[ci])
        return Fraction(concept.repeats).limit_denominator(10_000)

    def role_summary(self) -> list[str]:
        """Log lines about the regularization concepts: how many of their images an epoch mixes in, against how
        many training image uses, at which loss weight (empty without one)."""
        lines, train = [], self.training_uses()
        for ci, members in self.members.items():
            concept = self.preset.concepts[ci]
            if concept.role == "regularization":
                per_epoch = self.concept_rate(ci) * len(members)
                lines.append(f"Regularization concept {concept.name!r}: {float(per_epoch):.4g} uses of its "
                             f"{len(members)} images mixed into each epoch of {float(train):.4g} training image "
                             f"uses (rate {concept.regularization_rate:g}), loss weight {concept.loss_weight:g}")
        return lines

    def _cycle(self, ci: int, k: int) -> list[int]:
        """The k-th seeded permutation of a concept's images, from which fractional repeats take their share.
        Epoch windows run through the cycles back to back, so over time every image gets the same share; a window
        that spans two cycles never repeats an image (the next cycle starts with images not in its tail)."""
        cycles, members, x = self._cycles.setdefault(ci, []), self.members[ci], self.fraction[ci]
        n = len(members)
        while len(cycles) <= k:
            j = len(cycles)
            perm = list(members)
            random.Random(f"{self.seed}-cycle-{ci}-{j}").shuffle(perm)
            if j > 0:
                b = j * n
                e = math.floor((b - 1) / x)
                start, end = math.ceil(x * e), math.ceil(x * (e + 1))
                if start < b < end:
                    tail = set(cycles[j - 1][start - (j - 1) * n:])
                    head = [p for p in perm if p not in tail][:end - b]
                    perm = head + [p for p in perm if p not in set(head)]
            cycles.append(perm)
        return cycles[k]

    def epoch_uses(self, epoch: int) -> list[int]:
        """Item indices used this epoch (before shuffling): floor(repeats) of every image, plus the fractional
        share, taken in windows of ceil(x*e)..ceil(x*(e+1)) over the cycles (x = fraction x images)."""
        uses = []
        for ci, members in self.members.items():
            uses += members * self.whole[ci]
            x, n = self.fraction[ci], len(members)
            if x:
                for s in range(math.ceil(x * epoch), math.ceil(x * (epoch + 1))):
                    uses.append(self._cycle(ci, s // n)[s % n])
        return uses

    def bucket_for(self, idx: int, resolution: int) -> tuple[int, int]:
        key = (idx, resolution)
        if key not in self._sizes:
            item = self.items[idx]
            self._sizes[key] = nearest_bucket(item.width, item.height, bucket_sizes(resolution, self.bucketing))
        return self._sizes[key]

    def size_for(self, idx: int, epoch: int) -> tuple[int, int]:
        """The bucket of an image this epoch (its resolution is picked per image per epoch from a list)."""
        sizes = self.resolutions[self.items[idx].concept_index]
        r = sizes[0] if len(sizes) == 1 else random.Random(f"{self.seed}-resolution-{epoch}-{idx}").choice(sizes)
        return self.bucket_for(idx, r)

    def layout(self, epoch: int) -> list[list[PlannedBatch]]:
        """The epoch's optimizer steps. The uses are shuffled once; walking that order, each use joins its
        bucket's open batch, and a batch is emitted when full; leftover (smaller) batches come last. With one
        bucket this is the shuffled order cut in batch_size pieces, whatever the batch size. A step holds
        gradient_accumulation_steps micro-batches per process (batch_size is per process, as in accelerate)."""
        if epoch in self._layouts:
            return self._layouts[epoch]
        uses = self.epoch_uses(epoch)
        random.Random(f"{self.seed}-order-{epoch}").shuffle(uses)
        batches, open_batches = [], {}
        for n, idx in enumerate(uses):
            size = self.size_for(idx, epoch)
            members = open_batches.setdefault(size, (n, []))[1]
            members.append(idx)
            if len(members) == self.batch_size:
                batches.append((size, members))
                del open_batches[size]
        batches += [(size, m) for size, (_, m) in sorted(open_batches.items(), key=lambda kv: kv[1][0])]
        planned, pos = [], 0
        for size, members in batches:
            planned.append(PlannedBatch(epoch, size, tuple(range(pos, pos + len(members))), tuple(members)))
            pos += len(members)
        per_step = self.accumulation * self.num_processes
        steps = [planned[i:i + per_step] for i in range(0, len(planned), per_step)]
        if len(self._layouts) > 8:
            self._layouts.pop(next(iter(self._layouts)))
        self._layouts[epoch] = steps
        return steps

    def process_steps(self, epoch: int) -> list[list[PlannedBatch]]:
        """This process's share of each optimizer step: the step's micro-batches number process_index,
        process_index + num_processes, ... (dealt round-robin, so a short last step is spread evenly).

        Every process must run the same number of micro-batches in a step: each backward of a
        DistributedDataParallel module joins a gradient exchange, and the exchanges must pair up. When a step's
        micro-batches do not divide evenly (the epoch's last step), a process short of one gets padding: the
        first sample of the step's last micro-batch again, with loss weight 0. Padding adds nothing to the
        gradient and costs one sample's compute; the alternative, dropping the leftovers, would leave images
        out of the epoch, and splitting micro-batches across processes would break the one-bucket batches."""
        n, steps = self.num_processes, self.layout(epoch)
        if n == 1:
            return steps
        shares = []
        for step in steps:
            mine = list(step[self.process_index::n])
            last = step[-1]
            pad = replace(last, positions=last.positions[:1], items=last.items[:1], padding=True)
            shares.append(mine + [pad] * (math.ceil(len(step) / n) - len(mine)))
        return shares

    def epoch_steps(self, epoch: int) -> int:
        return len(self.layout(epoch))

    def step_samples(self, epoch: int, step: int) -> int:
        """The samples of one optimizer step over all processes (padding not counted)."""
        return sum(len(planned.positions) for planned in self.layout(epoch)[step])

    def total_steps(self, epochs: int) -> int:
        return sum(self.epoch_steps(e) for e in range(epochs))

    def run_length(self, epochs: int, max_steps: int) -> tuple[int, int]:
        """(optimizer steps, epochs) of a run of `epochs` epochs, or of `max_steps` steps when that is set (its
        epochs counted as of the first epoch's length)."""
        if not max_steps:
            return self.total_steps(epochs), epochs
        return max_steps, math.ceil(max_steps / self.epoch_steps(0))

    # ---- loading ---------------------------------------------------------------------------------------

    def iter_epoch(self, epoch: int, start_step: int = 0):
        """Yield, for each optimizer step from start_step on, its list of micro-batches (Batch). Micro-batches
        load in DataLoader workers (general.dataloader_workers) ahead of the training."""
        from trainer.data.loader import map_loader
        steps = self.process_steps(epoch)[start_step:]
        flat = [planned for step in steps for planned in step]
        loaded = iter(map_loader(self.load, flat, self.workers, self.pin_memory))
        for step in steps:
            yield [next(loaded) for _ in step]

    def _concept(self, idx: int) -> ConceptConfig:
        return self.preset.concepts[self.items[idx].concept_index]

    def variant_augment(self, idx: int, size: tuple[int, int], variant: int, flip: bool) -> Augment:
        """The augmentation of a cached variant: drawn from the image's content hash, size and variant number (not
        the run seed, so another seed reuses the cache)."""
        concept = self._concept(idx)
        if not has_random_augments(concept):
            return Augment(flip=flip)
        rng = random.Random(f"variant-{self.items[idx].digest}-{size[0]}x{size[1]}-{variant}")
        return draw_augment(concept, rng, flip=flip)

    def variants(self, idx: int) -> tuple[tuple[bool, ...], int]:
        """(flip values, variation count) cached per image and size."""
        c = self._concept(idx)
        p = c.random_flip_probability if c.random_flip else 0.0
        flips = (False,) if p <= 0 else (True,) if p >= 1 else (False, True)
        return flips, c.image_variations if has_random_augments(c) else 1

    def latent_key(self, idx: int, size: tuple[int, int], aug: Augment) -> str:
        from trainer.data.cache import entry_key
        mask = self.items[idx].mask  # a masked image's entry holds its mask too: a new mask file, a new key
        return entry_key("latent", self.items[idx].digest, size, aug.key(), self.vae_id, self.dtype_name,
                         *([mask.cache_key()] if mask is not None else []))

    def _cached_augment(self, idx: int, size: tuple[int, int], rng: random.Random) -> Augment:
        flips, count = self.variants(idx)
        flip = flips[0] if len(flips) == 1 else rng.random() < self._concept(idx).random_flip_probability
        return self.variant_augment(idx, size, rng.randrange(count), flip)

    def load(self, planned: PlannedBatch) -> Batch:
        """Load one micro-batch: captions, loss weights, and pixels or cached latents (and text embeddings)."""
        captions, weights, augs = [], [], []
        for pos, idx in zip(planned.positions, planned.items):
            concept = self._concept(idx)
            rng = random.Random(f"{self.seed}-caption-{planned.epoch}-{pos}")
            captions.append(pick_caption(self.items[idx].captions, concept, rng))
            weights.append(0.0 if planned.padding else concept.loss_weight)
            rng = random.Random(f"{self.seed}-image-{planned.epoch}-{pos}")
            augs.append(self._cached_augment(idx, planned.size, rng) if self.latents is not None
                        else draw_augment(concept, rng))
        batch = Batch(captions, list(planned.positions), weights, padding=planned.padding)
        if self.latents is not None:
            import torch
            entries = [self.latents.load(self.latent_key(i, planned.size, a)) for i, a in zip(planned.items, augs)]
            batch.latent_mean = torch.stack([e["mean"] for e in entries])
            batch.latent_std = torch.stack([e["std"] for e in entries])
            masks = [e["mask"][0].numpy() if "mask" in e else None for e in entries]
        else:
            loaded = [load_with_mask(self.items[i].path, planned.size, a, self.items[i].mask)
                      for i, a in zip(planned.items, augs)]
            batch.pixels = np.stack([pixels for pixels, _ in loaded])
            grid = (planned.size[0] // self.latent_factor, planned.size[1] // self.latent_factor)
            masks = [None if mask is None else to_latent_grid(mask, grid) for _, mask in loaded]
        weights = batch_weights(masks, [self._concept(i) for i in planned.items])
        if weights is not None:
            import torch
            batch.mask_weights = torch.from_numpy(weights)
        if self.texts is not None and all(c in self.text_keys for c in captions):
            import torch
            batch.text_embeddings = torch.stack([self.texts.load(self.text_keys[c])["hidden"] for c in captions])
        return batch

    # ---- caches ----------------------------------------------------------------------------------------

    def latent_jobs(self) -> list[tuple[str, Path, tuple[int, int], Augment, MaskRef | None]]:
        """Every (key, path, size, augmentation, mask) that training can ask for: each image at each of its
        resolutions' buckets, in each cached variant and flip, with its mask (None without one)."""
        jobs = {}
        for idx, item in enumerate(self.items):
            if not (self.whole[item.concept_index] or self.fraction[item.concept_index]):
                continue  # never used (repeats or rate 0)
            flips, count = self.variants(idx)
            for r in self.resolutions[item.concept_index]:
                size = self.bucket_for(idx, r)
                for flip in flips:
                    for v in range(count):
                        aug = self.variant_augment(idx, size, v, flip)
                        key = self.latent_key(idx, size, aug)
                        jobs[key] = (key, item.path, size, aug, item.mask)
        return list(jobs.values())

    def prepare(self, components, device, dtype, encode_text: bool, emit, progress=None) -> None:
        """Before training: report skipped files, then fill the latent cache (training.cache_latents) and, when
        encode_text, the text cache. Afterwards iteration needs neither the VAE encoder nor (unless
        needs_text_encoder) the text encoder. progress(what, done, total), if given, follows each batch."""
        import torch
        from trainer.data.cache import TensorCache, encode_latents, encode_texts, entry_key, module_identity
        for line in self.role_summary():
            emit(ev.Log("info", line))
        for log in mask_report(self.preset, self.items):  # masked concepts: images with and without a mask
            emit(log)
        device = torch.device(device)
        self.pin_memory = device.type == "cuda"
        root = Path(self.preset.general.cache_dir).expanduser()
        self.dtype_name = str(dtype)
        self.latent_factor = latent_factor(components.vae)  # the latent grid of masks loaded with pixels
        if self.preset.training.cache_latents:
            self.vae_id = module_identity(components.vae, dtype)
            cache = TensorCache(root / "latents")
            jobs = self.latent_jobs()
            emit(ev.Status(f"Checking {len(jobs)} cached latents"))
            todo = set(cache.missing([j[0] for j in jobs]))
            reporter = _Reporter("latents", emit, progress)
            encode_latents(cache, [j for j in jobs if j[0] in todo], components.vae, device, dtype,
                           max(1, self.batch_size), self.workers, reporter)
            self.latents = cache
            self._summary(emit, "latents", "latents", len(jobs), cache, root)
        if encode_text:
            text_id = module_identity(components.text_encoder, dtype)
            strings = sorted({s for i in self.items for s in fixed_captions(i.captions, self.preset.concepts[
                i.concept_index]) if not captions_vary(self.preset.concepts[i.concept_index])})
            length = self.preset.training.max_token_length
            self.text_keys = {s: entry_key("text", s, text_id, self.dtype_name, length) for s in strings}
            cache = TensorCache(root / "text")
            todo = set(cache.missing(list(self.text_keys.values())))
            jobs = [(k, s) for s, k in self.text_keys.items() if k in todo]
            encode_texts(cache, jobs, components.tokenizer, components.text_encoder, device, 64, length,
                         _Reporter("text embeddings", emit, progress))
            self.texts = cache
            self._summary(emit, "texts", "text embeddings", len(strings), cache, root)

    def _summary(self, emit, name: str, what: str, total: int, cache, root: Path) -> None:
        """Counts in self.report (latents_total, latents_encoded, latents_rebuilt, texts_...) and a log line."""
        self.report.update({f"{name}_total": total, f"{name}_encoded": cache.written,
                            f"{name}_rebuilt": cache.rebuilt})
        damaged = f", {cache.rebuilt} damaged file(s) rebuilt" if cache.rebuilt else ""
        emit(ev.Log("info", f"Cached {what}: {cache.written} encoded, {total - cache.written} reused{damaged} "
                            f"({root})"))

    @property
    def needs_text_encoder(self) -> bool:
        """After prepare: whether batches may come without text embeddings (the text encoder trains, or caption
        augmentations make the text unpredictable), so the loop still encodes captions."""
        return self.texts is None or any(captions_vary(self.preset.concepts[ci]) for ci in self.members)

    @property
    def needs_vae_encoder(self) -> bool:
        """After prepare: whether batches come as pixels that the loop encodes with the VAE."""
        return self.latents is None


class _Reporter:
    """Progress of a cache fill: Status events at most every second (and the last), plus an optional callback."""

    def __init__(self, what: str, emit, progress):
        self.what, self.emit, self.progress, self.last = what, emit, progress, 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if done == total or now - self.last >= 1.0:
            self.last = now
            self.emit(ev.Status(f"Caching {self.what}: {done}/{total}"))
        if self.progress is not None:
            self.progress(self.what, done, total)
