"""Backups (full training state), resume, rolling deletion and disk checks. No UI here.

A backup is a folder written under a temporary name, with manifest.json written last and the folder renamed into
place: a folder without a manifest (a kill or a full disk mid-write) is never picked up as a backup.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from trainer.config import Preset, preset_from_dict, preset_to_dict, preset_to_json
from trainer.fields import atomic_write_text
from trainer.errors import InputError

MANIFEST = "manifest.json"
STATE = "state.pt"

# Fields whose change makes a backup's state meaningless for this preset (resume is refused, naming the field).
BREAKING = (
    "model.base_model", "model.base_config", "concepts", "general.seed",
    "training.optimizer", "training.batch_size", "training.gradient_accumulation_steps", "training.resolution",
    "training.train_unet", "training.train_text_encoder", "training.ema", "training.mixed_precision",
    "training.prediction_type", "training.zero_terminal_snr", "training.lr_scheduler",
)


@dataclass
class Position:
    """Where the run stands: optimizer steps done, the epoch, and steps done inside that epoch."""
    step: int
    epoch: int
    epoch_step: int


def backup_root(preset: Preset) -> Path:
    return Path(preset.general.workspace_dir).expanduser() / "backup"


def rng_state() -> dict:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    np_state = np.random.get_state()
    state["numpy"] = [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]]
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(_tuples(state["python"]))
    torch.set_rng_state(state["torch"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(value):
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_backup(root: Path, name: str, modules: dict, state: dict, preset: Preset, position: Position,
                 pause_between_files: float = 0.0, num_processes: int = 1) -> Path:
    """Write one backup folder atomically; on any error the partial folder is removed and the error raised.
    The manifest records the process count: the position inside an epoch is counted in steps of all of them."""
    from safetensors.torch import save_file
    root.mkdir(parents=True, exist_ok=True)
    final = root / name
    tmp = root / f".{name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        files = []
        for module_name, module in modules.items():
            tensors = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
            save_file(tensors, str(tmp / f"{module_name}.safetensors"))
            files.append(f"{module_name}.safetensors")
            time.sleep(pause_between_files)
        torch.save(state, tmp / STATE)
        files.append(STATE)
        atomic_write_text(tmp / "preset.json", preset_to_json(preset))
        files.append("preset.json")
        for f in files:
            with open(tmp / f, "rb") as fh:
                os.fsync(fh.fileno())
        manifest = {"step": position.step, "epoch": position.epoch, "epoch_step": position.epoch_step,
                    "num_processes": num_processes, "files": files,
                    "written": time.strftime("%Y-%m-%dT%H:%M:%S")}
        atomic_write_text(tmp / MANIFEST, json.dumps(manifest, indent=2))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
        return final
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def complete_backups(root: Path) -> list[Path]:
    """Backup folders with a manifest, oldest first (by step)."""
    if not root.is_dir():
        return []
    found = []
    for folder in root.iterdir():
        if folder.name.startswith(".") or not (folder / MANIFEST).is_file():
            continue
        try:
            step = json.loads((folder / MANIFEST).read_text())["step"]
        except (OSError, ValueError, KeyError):
            continue
        found.append((step, folder.stat().st_mtime, folder))
    return [f for _, _, f in sorted(found)]


def prune_backups(root: Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` complete backups (0 keeps all); returns what was deleted."""
    backups = complete_backups(root)
    doomed = backups[:-keep] if keep > 0 else []
    for folder in doomed:
        shutil.rmtree(folder, ignore_errors=True)
    return doomed


def find_backup(preset: Preset, resume: str) -> Path:
    """'latest' -> the newest complete backup of this workspace; otherwise a backup folder path."""
    if resume == "latest":
        backups = complete_backups(backup_root(preset))
        if not backups:
            raise InputError(f"backup.resume: no complete backup in {backup_root(preset)} to resume from")
        return backups[-1]
    folder = Path(resume).expanduser()
    if not (folder / MANIFEST).is_file():
        raise InputError(f"backup.resume: {folder} is not a complete backup (no {MANIFEST}); "
                         "it may be unfinished or not a backup folder")
    return folder


def _flatten(data: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, path + "."))
        else:
            out[path] = value
    return out


def compare_presets(saved: Preset, current: Preset) -> list[str]:
    """Raise InputError for a change that breaks resume; return the harmless changes (dotted paths)."""
    old, new = _flatten(preset_to_dict(saved)), _flatten(preset_to_dict(current))
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    for key in changed:
        if any(key == b or key.startswith(b + ".") for b in BREAKING):
            raise InputError(f"{key}: changed since the backup ({old.get(key)!r} -> {new.get(key)!r}); "
                             "resuming would not continue the same training. Undo the change or start fresh")
    return changed


def read_backup(folder: Path, current: Preset, num_processes: int = 1) -> tuple[dict, dict, Position, list[str]]:
    """Load (module tensors by name, state, position, harmless changes) after checking the preset and the
    process count (an epoch's steps, and so the position inside it, depend on how many processes share it)."""
    from safetensors.torch import load_file
    manifest = json.loads((folder / MANIFEST).read_text())
    written_by = manifest.get("num_processes", 1)
    if written_by != num_processes:
        how = (f"accelerate launch --multi_gpu --num_processes {written_by} -m trainer train ..." if written_by > 1
               else "python -m trainer train ...")
        raise InputError(f"backup.resume: {folder} was written by a run on {written_by} process(es) and this run "
                         f"has {num_processes}; each optimizer step holds a batch from every process, so the "
                         f"position inside the epoch would not match. Resume with the same count: {how}")
    saved = preset_from_dict(json.loads((folder / "preset.json").read_text()))
    harmless = compare_presets(saved, current)
    tensors = {f[: -len(".safetensors")]: load_file(str(folder / f)) for f in manifest["files"]
               if f.endswith(".safetensors")}
    state = torch.load(folder / STATE, weights_only=True)
    return tensors, state, Position(manifest["step"], manifest["epoch"], manifest["epoch_step"]), harmless


# ---- disk and folder checks before anything heavy loads -------------------------------------------------

def _safetensors_params(path: Path) -> int:
    with open(path, "rb") as fh:
        size = int.from_bytes(fh.read(8), "little")
        if not 0 < size <= min(path.stat().st_size - 8, 100 * 2**20):
            raise ValueError(f"{path} has no safetensors header")
        header = json.loads(fh.read(size))
    total = 0
    for key, info in header.items():
        if key != "__metadata__":
            total += int(np.prod(info["shape"])) if info["shape"] else 1
    return total


def estimate_params(base_model: str) -> int:
    """Parameters of the base model from safetensors headers (no tensors loaded); file size / 2 otherwise."""
    path = Path(base_model).expanduser()
    files = [path] if path.is_file() else list(path.rglob("*.safetensors")) + list(path.rglob("*.bin"))
    total = 0
    for f in files:
        try:
            total += _safetensors_params(f) if f.suffix == ".safetensors" else f.stat().st_size // 2
        except (OSError, ValueError, KeyError):
            total += f.stat().st_size // 2
    return total


def check_folders_and_disk(preset: Preset) -> None:
    """Output and workspace writable, and room for one save and one backup; InputError otherwise."""
    bytes_out = {"float16": 2, "bfloat16": 2, "float32": 4}[preset.model.output_dtype]
    params = estimate_params(preset.model.base_model)
    needs = {"workspace": params * 4 * 3, "output": params * bytes_out}  # backup: weights + 2 optimizer moments
    workspace = Path(preset.general.workspace_dir).expanduser()
    output_parent = Path(preset.model.output_path).expanduser().parent
    for label, folder, key in (("general.workspace_dir", workspace, "workspace"),
                               ("model.output_path", output_parent, "output")):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            probe = folder / f".seachange-write-test-{os.getpid()}"
            probe.write_bytes(b"ok")
            probe.unlink()
        except OSError as e:
            raise InputError(f"{label}: cannot write to {folder}: {e.strerror or e}") from e
        free = shutil.disk_usage(folder).free
        if free < needs[key]:
            raise InputError(f"{label}: only {free / 2**30:.1f} GiB free in {folder}; about "
                             f"{needs[key] / 2**30:.1f} GiB is needed for a {'backup' if key == 'workspace' else 'save'}")
