"""The sample images runs already wrote, by step and prompt, and several runs side by side (a sweep's runs: columns
the runs, rows the sample prompts) at one step. Torch-free: the window's results tab reads it. No UI here.

The files are WORKSPACE/samples/stepNNNNNNN-epochNNNN-promptNN-seedN.png, as trainer.train.sampling.sample_path names
them (trainer.tools.compare.SAMPLE_NAME reads the same names for its grid of one run's steps).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from trainer.tools.compare import SAMPLE_NAME


def workspace_samples(workspace: str | Path) -> dict[int, dict[int, Path]]:
    """The sample images in WORKSPACE/samples: {step: {prompt index: file}}, steps in increasing order. A prompt
    sampled with several seeds at one step keeps the file whose name sorts last. Empty when the folder is missing
    or holds no sample images (other files are ignored)."""
    folder = Path(workspace).expanduser() / "samples"
    found: dict[int, dict[int, Path]] = {}
    if not folder.is_dir():
        return found
    for path in sorted(folder.glob("*.png")):
        match = SAMPLE_NAME.match(path.name)
        if match:
            step, _, index, _ = map(int, match.groups())
            found.setdefault(step, {})[index] = path
    return dict(sorted(found.items()))


def sample_prompts(workspace: str | Path) -> dict[int, str]:
    """The sample prompts' texts by index, from the run's resolved preset (WORKSPACE/preset.json, which every run
    writes); empty when it is missing or unreadable."""
    try:
        preset = json.loads((Path(workspace).expanduser() / "preset.json").read_text(encoding="utf-8"))
        return {i: str(p["prompt"]) for i, p in enumerate(preset["sampling"]["prompts"])}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


@dataclass
class SideBySide:
    """Runs side by side: `rows` (one label per sample prompt, its text), `columns` (one label per run: its label
    and the step shown), `cells` {(row, column): image file} (a run without a sample there leaves its cell out),
    `steps` every step at which any of the runs wrote samples (what a step picker offers), `shown` the step shown
    per column (None: the run has no sample at the step asked for, or none at all)."""
    rows: list[str] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)
    cells: dict[tuple[int, int], Path] = field(default_factory=dict)
    steps: list[int] = field(default_factory=list)
    shown: list[int | None] = field(default_factory=list)


def side_by_side(runs: list[tuple[str, str | Path]], step: int | None = None) -> SideBySide:
    """Lay out `runs` ((label, workspace) pairs, a column each, in their order) with their sample images: a row per
    sample prompt index any of them sampled (labelled with its text from the first run's preset.json that names
    it, else "prompt N"), each column at `step` (None: each run at its own last step with samples). A column's
    label is the run's label and, on a second line, the step it shows, or why it shows nothing."""
    samples = [workspace_samples(workspace) for _, workspace in runs]
    indices = sorted({index for found in samples for at_step in found.values() for index in at_step})
    texts: dict[int, str] = {}
    for _, workspace in runs:
        for index, text in sample_prompts(workspace).items():
            texts.setdefault(index, text)
    grid = SideBySide(rows=[texts.get(i) or f"prompt {i}" for i in indices],
                      steps=sorted({s for found in samples for s in found}))
    for column, ((label, _), found) in enumerate(zip(runs, samples)):
        at = (max(found) if found else None) if step is None else (step if step in found else None)
        grid.shown.append(at)
        if at is None:
            why = "no samples yet" if not found else f"no samples at step {step}"
            grid.columns.append(f"{label}\n({why})")
            continue
        grid.columns.append(f"{label}\nstep {at}")
        for row, index in enumerate(indices):
            if index in found[at]:
                grid.cells[(row, column)] = found[at][index]
    return grid
