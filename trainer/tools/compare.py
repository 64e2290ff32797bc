"""compare: labelled grids of results, from a run's sample files (rows = prompts, columns = steps or epochs) or by
generating the same prompts and seeds with several models (columns = models). No UI here."""
from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass
from pathlib import Path

from trainer import events as ev
from trainer.errors import InputError
from trainer.specs import CompareSpec
from trainer.tools.generate_data import move_model, stop_requested
from trainer.tools.grid import write_grid

SAMPLE_NAME = re.compile(r"step(\d+)-epoch(\d+)-prompt(\d+)-seed(\d+)\.png$")


def evenly(items: list, count: int) -> list:
    """`count` items spread evenly over `items`, the first and the last included (all when count is 0)."""
    if count <= 0 or count >= len(items):
        return list(items)
    if count == 1:
        return [items[-1]]
    return [items[round(i * (len(items) - 1) / (count - 1))] for i in range(count)]


def find_samples_folder(folder: str | Path) -> Path:
    folder = Path(folder).expanduser()
    if (folder / "samples").is_dir():
        folder = folder / "samples"
    if not folder.is_dir():
        raise InputError(f"samples_dir: {folder} is not a folder")
    return folder


def prompt_labels(samples: Path) -> dict[int, str]:
    """Prompt texts by index from the run's resolved preset (workspace/preset.json), when it is there."""
    try:
        preset = json.loads((samples.parent / "preset.json").read_text(encoding="utf-8"))
        return {i: p["prompt"] for i, p in enumerate(preset["sampling"]["prompts"])}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def samples_table(spec: CompareSpec):
    """(row labels, column labels, {(row, column): path}) from the sample files of a run."""
    folder = find_samples_folder(spec.samples_dir)
    found: dict[tuple[int, int], Path] = {}  # (step, prompt index) -> file
    epochs: dict[int, int] = {}  # step -> epoch
    for path in sorted(folder.glob("*.png")):
        match = SAMPLE_NAME.match(path.name)
        if match:
            step, epoch, index, _ = map(int, match.groups())
            found[(step, index)] = path
            epochs[step] = epoch
    if not found:
        raise InputError(f"samples_dir: no sample images (stepNNNNNNN-epochNNNN-promptNN-seedN.png) in {folder}")
    steps = sorted(epochs)
    if spec.columns == "epochs":  # the last sample of each epoch
        steps = [max(s for s in steps if epochs[s] == e) for e in sorted(set(epochs.values()))]
        labels = {s: f"epoch {epochs[s]} (step {s})" for s in steps}
    else:
        labels = {s: f"step {s} (epoch {epochs[s]})" for s in steps}
    steps = evenly(steps, spec.max_columns)
    indices = sorted({index for _, index in found})
    names = prompt_labels(folder)
    rows = [names.get(i, f"prompt {i}") for i in indices]
    cells = {(r, c): found[(step, index)] for r, index in enumerate(indices) for c, step in enumerate(steps)
             if (step, index) in found}
    return rows, [labels[s] for s in steps], cells


def model_label(entry) -> str:
    if entry.label.strip():
        return entry.label.strip()
    path = Path(entry.path)
    return path.stem if path.suffix else path.name


@dataclass
class ModelColumn:
    """One column of a model comparison: the model at `path` (index `model` in spec.models), with the LoRA file
    `lora` merged in at `strength` ("" for the model alone), under `label`."""
    label: str
    path: str
    model: int
    lora: str = ""
    strength: float = 0.0


def lora_label(entry, strength: float, several: bool) -> str:
    """A LoRA column's title: "NAME + LORA @ 0.5", the LoRA named by its file's stem; a strength of 0 is marked
    "(no LoRA)". An entry's own label stands alone for a single column, and replaces "NAME + LORA" for several."""
    own = entry.label.strip()
    if own and not several:
        return own
    head = own or f"{model_label(entry)} + {Path(entry.lora.strip()).stem}"
    return f"{head} @ {strength:g}" + (" (no LoRA)" if strength == 0 else "")


def model_columns(spec: CompareSpec) -> list[ModelColumn]:
    """The columns of a model comparison, in the order of spec.models: a model without a LoRA is one column; a
    model with one is a column per strength of spec.lora_strengths (when set) or one at its own lora_strength.
    At strength 0 the column is the model alone (nothing merged)."""
    columns = []
    for i, entry in enumerate(spec.models):
        lora = entry.lora.strip()
        if not lora:
            columns.append(ModelColumn(model_label(entry), entry.path, i))
            continue
        strengths = list(spec.lora_strengths) or [entry.lora_strength]
        for strength in strengths:
            columns.append(ModelColumn(lora_label(entry, strength, len(strengths) > 1), entry.path, i,
                                       lora if strength != 0 else "", strength))
    return columns


def check_models(spec: CompareSpec) -> None:
    """Raises InputError naming the field (models.N.path, models.N.lora) when a model does not exist, or a LoRA
    does not exist or is not a LoRA for SD 1.5 in kohya's layout (trainer.model.lora.read_lora_file): before any model
    loads, so a bad last column costs no time."""
    for i, entry in enumerate(spec.models):
        if not Path(entry.path).expanduser().exists():
            raise InputError(f"models.{i}.path: {entry.path or '(empty)'} does not exist")
    from trainer.model.lora import read_lora_file
    for i, entry in enumerate(spec.models):
        if entry.lora.strip():
            read_lora_file(entry.lora.strip(), f"models.{i}.lora")


def model_rows(spec: CompareSpec) -> list:
    """One SamplePrompt per row: every prompt with every seed of spec.seeds (or its own seed)."""
    rows = []
    for prompt in spec.prompts:
        for seed in spec.seeds or [prompt.seed]:
            row = copy.deepcopy(prompt)
            row.seed = seed
            rows.append(row)
    return rows


def cell_folder(spec: CompareSpec) -> Path:
    out = Path(spec.output_png).expanduser()
    return out.with_name(f"{out.stem}_cells")


def cell_size(spec: CompareSpec, first: Path | None) -> tuple[int, int]:
    if spec.cell_size:
        return spec.cell_size, spec.cell_size
    if first is None:
        return 256, 256
    from PIL import Image
    with Image.open(first) as im:
        return im.size


def check_output(spec: CompareSpec) -> None:
    """Raises InputError (naming the file) when spec.output_png exists and spec.replace_output is off: an
    earlier grid is never written over unasked."""
    out = Path(spec.output_png).expanduser()
    if out.exists() and not spec.replace_output:
        raise InputError(f"output_png: {out} already exists: choose another file, or turn on replace_output "
                         "to write over it")


def compare(spec: CompareSpec, emit, commands=None) -> ev.RunFinished:
    """Build the grid the spec asks for, streaming cells as events, and export it to spec.output_png. Raises
    InputError before any work when the output exists and spec.replace_output is off (check_output)."""
    check_output(spec)
    if spec.source == "samples":
        rows, columns, cells = samples_table(spec)
        emit(ev.GridStarted(tuple(rows), tuple(columns), spec.output_png))
        for n, ((r, c), path) in enumerate(sorted(cells.items()), 1):
            emit(ev.GridCell(str(path), r, c, n, len(cells)))
    else:
        rows, columns, cells = generate_cells(spec, emit, commands)
        if cells is None:
            return ev.RunFinished("stopped", "stopped; the images made so far are in " + str(cell_folder(spec)))
    emit(ev.Status(f"Writing {spec.output_png}"))
    first = next(iter(cells.values()), None)
    out = write_grid(spec.output_png, rows, columns, lambda r, c: cells.get((r, c)), cell_size(spec, first))
    return ev.RunFinished("completed", f"grid of {len(rows)} x {len(columns)} written to {out}", str(out))


def generate_cells(spec: CompareSpec, emit, commands):
    """Generate every row's prompt in every column (model_columns: column by column, each model loaded once per
    column and its LoRA, if any, merged in at the column's strength); returns the table, or None for the cells
    when stopped. Raises InputError naming the field for a missing model or a missing or wrong LoRA before
    anything loads (check_models), and for a LoRA whose layers the model lacks when it is merged."""
    import torch

    from trainer.model.lora import apply_lora_file
    from trainer.model.models import load_model
    from trainer.specs import resolve_device, resolve_dtype
    from trainer.train.sampling import generate, make_pipeline, make_sampler
    check_models(spec)
    rows = model_rows(spec)
    labels = [f"{p.prompt} (seed {p.seed})" for p in rows]
    plan = model_columns(spec)
    columns = [column.label for column in plan]
    emit(ev.GridStarted(tuple(labels), tuple(columns), spec.output_png))
    folder = cell_folder(spec)
    folder.mkdir(parents=True, exist_ok=True)
    device = resolve_device(spec.device)
    dtype = resolve_dtype(spec.dtype, device)
    cells, total = {}, len(rows) * len(columns)
    for c, column in enumerate(plan):
        emit(ev.Status(f"Loading {columns[c]} ({column.path})"))
        model = load_model(column.path, spec.base_config or None)
        if model.weights_note:
            emit(ev.Log("info", f"{columns[c]}: loaded the {model.weights_note}"))
        if column.lora:
            emit(ev.Status(f"Merging {Path(column.lora).name} at strength {column.strength:g} into {columns[c]}"))
            apply_lora_file(model, column.lora, column.strength, what=f"models.{column.model}.lora")
        move_model(model, device, dtype)
        pipe = make_pipeline(model.unet, model.vae, model.text_encoder, model.tokenizer,
                             model.noise_scheduler.config, rows[0].sampler)
        for r, prompt in enumerate(rows):
            if stop_requested(commands):
                return labels, columns, None
            pipe.scheduler = make_sampler(prompt.sampler, model.noise_scheduler.config)
            path = folder / f"col{c:03d}-row{r:04d}.png"
            tmp = path.with_name(f".{path.name}.tmp")
            generate(pipe, prompt, device).save(tmp, format="PNG")
            tmp.replace(path)
            cells[(r, c)] = path
            emit(ev.GridCell(str(path), r, c, len(cells), total))
        del pipe, model
        if device == "cuda":
            torch.cuda.empty_cache()
    return labels, columns, cells
