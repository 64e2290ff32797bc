"""The fastest training settings whose estimated GPU memory (trainer.tools.memory) fits a card. No UI here.

Settings are searched over the switches that trade speed for memory, each with a speed factor from measured
SD 1.5 steps where there are some (../benchmarks/README.md and the anchors there: gradient checkpointing costs about a
quarter of the speed, the fused back pass about a fifth at batch 1, 8-bit AdamW a few percent) and a cautious one
where not (EMA in CPU memory copies every weight to the host and averages it there each step: taken as half the
speed until a GPU measures it):

    EMA on the GPU or in CPU memory; float32 or bf16 weights (with stochastic rounding, so small updates still
    count); AdamW's state in float32 or 8 bits; the fused back pass; gradient checkpointing; the text encoder
    trained (as the preset says) or frozen, a last resort (it changes what learns: factor 0.5);
    the batch size, with gradient accumulation keeping the images per optimizer step (batch_size x
    gradient_accumulation_steps) exactly as the preset has them, so the training itself does not change.

Speed of a batch size b is taken as b / (b + 15) images per unit of time (the reference loop's measured 1 : 3.9 :
8.1 at batch 1, 4, 16 on an H200). Every candidate is checked by config.validate and estimated at its own batch
size; a switch the user turned off that only costs memory (the text encoder) is never turned on. The fit leaves
room on the card for the CUDA context and the allocator (memory.usable_gib). The smallest the preset allows (every
saver it accepts, batch 1) is measured first: if it does not fit, nothing does (NoFit). Then options are tried
fastest first; one with fewer memory savers than an option that does not fit at batch 1 is skipped unmeasured
(each saver only lowers memory).
"""
from __future__ import annotations

import copy
import itertools
import math
from dataclasses import dataclass

from trainer.config import Preset, validate
from trainer.fields import set_value
from trainer.tools.memory import GIB, MemoryEstimate, estimate_memory
from trainer.tools.vram import usable_gib

BATCH_SPEED_CONSTANT = 15


@dataclass
class Switch:
    """One setting that trades speed for memory: `states` lists (changes: dotted path -> value, speed factor,
    words) for each of its values, the preset's own first; `saver` is the words of the value that saves memory."""
    name: str
    states: list[tuple[dict, float, str]]
    saver: str


def switches(preset: Preset) -> list[Switch]:
    """The switches that apply to `preset` (the current state first in each)."""
    t, found = preset.training, []

    def two(name, path_values_off, path_values_on, on_now, factor_on, factor_off, words_on, words_off):
        on, off = (path_values_on, factor_on, words_on), (path_values_off, factor_off, words_off)
        found.append(Switch(name, [on, off] if on_now else [off, on], words_on))
    if t.ema != "off":
        two("ema", {"training.ema": "gpu"}, {"training.ema": "cpu"}, t.ema == "cpu", 0.5, 1.0,
            "EMA kept in CPU memory", "EMA on the GPU")
    if t.method == "full" and t.mixed_precision == "bf16":
        bf16_now = t.weight_dtype == "bfloat16"
        two("weights", {"training.weight_dtype": "float32"},
            {"training.weight_dtype": "bfloat16", "training.stochastic_rounding": True}, bf16_now,
            1.0 if bf16_now else 0.999, 0.999 if bf16_now else 1.0,
            "bf16 weights with stochastic rounding", "float32 weights")
    if t.optimizer in ("adamw", "adamw8bit"):
        two("optimizer", {"training.optimizer": "adamw"}, {"training.optimizer": "adamw8bit"},
            t.optimizer == "adamw8bit", 0.97, 1.0, "8-bit AdamW state", "AdamW state in float32")
    if t.method == "full":
        two("fused", {"training.fused_backward": False}, {"training.fused_backward": True}, t.fused_backward,
            0.78, 1.0, "fused back pass (each weight stepped as its gradient completes)", "no fused back pass")
    two("checkpointing", {"training.gradient_checkpointing": False}, {"training.gradient_checkpointing": True},
        t.gradient_checkpointing, 0.75, 1.0, "gradient checkpointing", "no gradient checkpointing")
    if t.method != "embedding" and t.train_text_encoder:
        frozen = "text encoder frozen (only the UNet learns)"
        found.append(Switch("text_encoder", [({}, 1.0, ""), ({"training.train_text_encoder": False}, 0.5, frozen)],
                            frozen))
    return found


def batch_speed(batch: int) -> float:
    return batch / (batch + BATCH_SPEED_CONSTANT)


@dataclass
class Fit:
    """The chosen settings: `changes` (dotted path -> value, only what differs from the preset), `described` (the
    memory savers turned on or off, in words), `notes` (what else a person should know: the batch size kept in
    images per step), their `estimate`, and the preset with them."""
    changes: dict
    described: list[str]
    notes: list[str]
    estimate: MemoryEstimate
    preset: Preset

    def to_json(self) -> dict:
        return {"changes": self.changes, "described": self.described, "notes": self.notes,
                "estimate": self.estimate.to_json()}


@dataclass
class NoFit:
    """No settings fit: `smallest` is the estimate with every memory saver that the preset allows on, at batch 1
    (None if even that is refused), `blocked` the savers config.validate refuses for this preset and why."""
    smallest: MemoryEstimate | None
    blocked: list[str]

    def to_json(self) -> dict:
        return {"smallest": self.smallest.to_json() if self.smallest else None, "blocked": self.blocked}


def _with(preset: Preset, changes: dict) -> Preset:
    candidate = copy.deepcopy(preset)
    for path, value in changes.items():
        set_value(candidate, path, value)
    return candidate


def _value(preset: Preset, path: str):
    section, name = path.split(".")
    return getattr(getattr(preset, section), name)


def fit_settings(preset: Preset, vram_gib: float, progress=None) -> Fit | NoFit:
    """The fastest settings (module docstring) whose estimated peak fits a card of `vram_gib` GiB, less what
    the CUDA context and the allocator keep (memory.usable_gib), or a NoFit saying the smallest peak reached and
    which savers the preset's other settings block. progress(words), if given, is told what is measured. Raises
    what estimate_memory raises."""
    budget = usable_gib(vram_gib) * GIB
    t = preset.training
    images = t.batch_size * t.gradient_accumulation_steps
    batches = [b for b in range(images, 0, -1) if images % b == 0]
    known = set(validate(preset))
    found_switches = switches(preset)
    options, saver_words = [], {switch.saver for switch in found_switches}
    for states in itertools.product(*(s.states for s in found_switches)):
        changes = {path: value for state in states for path, value in state[0].items()}
        factor = math.prod(state[1] for state in states)
        options.append((factor, changes, tuple(state[2] for state in states if state[2])))
    measured: dict = {}

    def candidate(changes: dict, batch: int) -> Preset:
        """The preset with `changes` at `batch`, keeping the images per optimizer step."""
        return _with(preset, {**changes, "training.batch_size": batch,
                              "training.gradient_accumulation_steps": images // batch})

    def problems(settings: Preset) -> list[str]:
        return [problem for problem in validate(settings) if problem not in known]

    def estimate(changes: dict, batch: int, words: tuple) -> MemoryEstimate | None:
        key = (tuple(sorted(changes.items())), batch)
        if key not in measured:
            settings = candidate(changes, batch)
            if problems(settings):
                measured[key] = None
            else:
                if progress:
                    progress(f"estimating batch {batch} with {', '.join(words) or 'no memory savers'}")
                measured[key] = estimate_memory(settings)
        return measured[key]

    # First the smallest the preset allows: every saver it accepts on, at batch 1. If that does not fit, nothing does.
    blocked = []
    for switch in found_switches:
        saving = next(state for state in switch.states if state[2] == switch.saver)
        refused = problems(candidate(saving[0], 1))
        if refused:
            blocked.append(f"{switch.saver}: {'; '.join(refused)}")
    allowed = [option for option in options if not problems(candidate(option[1], 1))]
    most = max(allowed, key=lambda option: len(set(option[2]) & saver_words), default=None)
    smallest = estimate(most[1], 1, most[2]) if most else None
    if smallest is None or smallest.total > budget:
        return NoFit(smallest, blocked)
    options.sort(key=lambda option: -option[0])
    best, too_big = None, []  # too_big: the savers of options that do not fit even at batch 1
    for factor, changes, words in options:
        if best is not None and factor * batch_speed(batches[0]) <= best[0]:
            break  # sorted by factor: no later option can be faster
        savers = set(words) & saver_words
        if any(savers <= failed for failed in too_big):  # fewer savers than one that does not fit: neither
            continue
        for batch in batches:
            if best is not None and factor * batch_speed(batch) <= best[0]:
                break
            found = estimate(changes, batch, words)
            if found is not None and found.total <= budget:
                best = (factor * batch_speed(batch), changes, words, batch, found)
                break
            if batch == 1 and found is not None:
                too_big.append(savers)
    _, changes, words, batch, found = best  # the smallest fits, so some option does
    return _described(preset, changes, words, batch, found)


def _described(preset: Preset, changes: dict, words: tuple, batch: int, found: MemoryEstimate) -> Fit:
    """The Fit of `changes` at `batch`: what differs from the preset, the switches turned, the batch size kept."""
    t = preset.training
    images = t.batch_size * t.gradient_accumulation_steps
    all_changes = {**changes, "training.batch_size": batch, "training.gradient_accumulation_steps": images // batch}
    differ = {path: value for path, value in all_changes.items() if _value(preset, path) != value}
    current = set(switch_words(preset))
    described = [w for w in words if w not in current]
    notes = []
    if "training.batch_size" in differ:
        notes.append(f"batch size {t.batch_size} -> {batch} with {images // batch} accumulation step"
                     f"{'s' if images // batch != 1 else ''}: still {images} images per optimizer step, so the "
                     "training is the same")
    return Fit(differ, described, notes, found, _with(preset, differ))


def switch_words(preset: Preset) -> list[str]:
    """The words of each switch's current state."""
    return [s.states[0][2] for s in switches(preset) if s.states[0][2]]
