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
from trainer.errors import InputError, plain_text
from trainer.fields import atomic_write_text, give_umask_mode
from trainer.train.runs import MANIFEST, complete_backups, safetensors_header

STATE = "state.pt"

# Fields whose change makes a backup's state meaningless for this preset (resume is refused, naming the field).
BREAKING = (
    "model.base_model", "model.base_config", "model.load_ema", "concepts", "general.seed",
    "training.optimizer", "training.batch_size", "training.gradient_accumulation_steps", "training.resolution",
    "training.train_unet", "training.train_text_encoder", "training.ema", "training.mixed_precision",
    "training.prediction_type", "training.zero_terminal_snr", "training.lr_scheduler",
    "training.max_token_length", "training.method", "training.lora_type", "training.lora_rank",
    "training.lora_alpha", "training.lora_conv_rank", "training.lora_conv_alpha", "model.lora_weights",
    "training.embedding_placeholder", "training.embedding_vectors",
    # the optimizer's own settings: a backup's optimizer state keeps the ones it was written with
    "training.betas", "training.eps", "training.prodigy_d_coef", "training.prodigy_d0", "training.schedulefree_r",
    "training.schedulefree_weight_lr_power", "training.ademamix_alpha", "training.ademamix_t_alpha_beta3",
)


@dataclass
class Position:
    """Where the run stands: optimizer steps done, the epoch (0-based) the next step belongs to, and steps done
    inside that epoch. After an epoch's last step it stands at the next epoch's beginning (epoch + 1, 0)."""
    step: int
    epoch: int
    epoch_step: int

    @property
    def epoch_number(self) -> int:
        """The 1-based number of the epoch the last step done belongs to (0 before any step): the number every
        file name, sample and message shows ("epoch 3" from the third epoch's first step to its last)."""
        return self.epoch + 1 if self.epoch_step > 0 else self.epoch


class TrainingState:
    """Everything a backup keeps beside the trained weights, as one state_dict: the optimizer (accelerate's
    wrapper, or the optimizer itself), the LR schedule, the fp16 grad scaler (None without one), the EMA (None
    when off), the RNGs of python, numpy, torch and CUDA, the loss bookkeeping (progress.LossTracker) and the
    validation loss's history (validation.Validation, None without one)."""

    def __init__(self, optimizer, lr_scheduler, scaler, ema, losses, validation=None):
        self.optimizer, self.lr_scheduler, self.scaler, self.ema, self.losses = (optimizer, lr_scheduler, scaler,
                                                                                  ema, losses)
        self.validation = validation

    def state_dict(self) -> dict:
        """{"optimizer", "lr_scheduler", "scaler", "ema", "rng", "losses", "validation"}: what torch.save writes
        as state.pt."""
        return {"optimizer": self.optimizer.state_dict(), "lr_scheduler": self.lr_scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "ema": self.ema.state_dict() if self.ema else None, "rng": rng_state(),
                "losses": self.losses.state_dict(),
                "validation": self.validation.state_dict() if self.validation is not None else None}

    def load_state_dict(self, state: dict) -> None:
        """Restore what state_dict() gave (torch.load of a backup's state.pt); RNGs included.

        The learning rates and weight decay stay the preset's: compare_presets lets them change on resume, and
        the backup's optimizer param_groups and LambdaLR base_lrs would silently bring the old ones back. The
        schedule goes on from the backup's step with the preset's rates (base_lr * lambda(step))."""
        chosen = [{k: g[k] for k in ("initial_lr", "weight_decay") if k in g} for g in self.optimizer.param_groups]
        base_lrs = list(self.lr_scheduler.base_lrs)
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        step = self.lr_scheduler.last_epoch
        lrs = [base * factor(step) for factor, base in zip(self.lr_scheduler.lr_lambdas, base_lrs)]
        for group, preset_values, lr in zip(self.optimizer.param_groups, chosen, lrs):  # new dicts once loaded
            group.update(preset_values, lr=lr)
        self.lr_scheduler.base_lrs, self.lr_scheduler._last_lr = base_lrs, lrs
        if state["scaler"] is not None and self.scaler is not None:
            self.scaler.load_state_dict(state["scaler"])
        if self.ema and state["ema"]:
            self.ema.load_state_dict(state["ema"])
        set_rng_state(state["rng"])
        self.losses.load_state_dict(state.get("losses", state))  # older backups kept the two values at the top
        if self.validation is not None and state.get("validation"):
            self.validation.load_state_dict(state["validation"])


def rng_state() -> dict:
    """The states of python's, numpy's, torch's and (when there is one) CUDA's random generators."""
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    np_state = np.random.get_state()
    state["numpy"] = [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]]
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what rng_state() gave (CUDA's only where there is a GPU)."""
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


def write_backup(root: Path, name: str, weights: dict[str, dict], state: dict, preset: Preset, position: Position,
                 num_processes: int = 1, run_id: str = "", dataset: dict | None = None) -> Path:
    """Write one backup folder atomically; on any error the partial folder is removed and the error raised.
    The manifest records the process count (the position inside an epoch is counted in steps of all of them)
    and the run's id; dataset.json the images trained on (inputs.dataset_record), checked on resume."""
    from safetensors.torch import save_file
    root.mkdir(parents=True, exist_ok=True)
    final = root / name
    tmp = root / f".{name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        files = []
        for part, part_tensors in weights.items():  # {"unet": {name: tensor}, ...}: PART.safetensors each
            tensors = {k: v.detach().contiguous().cpu() for k, v in part_tensors.items()}
            save_file(tensors, str(tmp / f"{part}.safetensors"))
            files.append(f"{part}.safetensors")
        torch.save(state, tmp / STATE)
        files.append(STATE)
        atomic_write_text(tmp / "preset.json", preset_to_json(preset))
        files.append("preset.json")
        if dataset is not None:
            atomic_write_text(tmp / DATASET, json.dumps(dataset, indent=0))
            files.append(DATASET)
        for f in files:
            with open(tmp / f, "rb") as fh:
                os.fsync(fh.fileno())
        manifest = {"step": position.step, "epoch": position.epoch, "epoch_step": position.epoch_step,
                    "num_processes": num_processes, "run_id": run_id, "files": files,
                    "written": time.strftime("%Y-%m-%dT%H:%M:%S")}
        atomic_write_text(tmp / MANIFEST, json.dumps(manifest, indent=2))
        give_umask_mode(tmp)  # save_file creates 0600 whatever the umask
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
        return final
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def prune_backups(root: Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` complete backups (0 keeps all); returns what was deleted."""
    backups = complete_backups(root)
    doomed = backups[:-keep] if keep > 0 else []
    for folder in doomed:
        shutil.rmtree(folder, ignore_errors=True)
    return doomed


def _flatten(data: dict | list, prefix: str = "") -> dict:
    """{dotted path: value} of a preset dict, into lists of objects too (concepts.0.missing_caption)."""
    out = {}
    for key, value in (enumerate(data) if isinstance(data, list) else data.items()):
        path = f"{prefix}{key}"
        if isinstance(value, dict) or (isinstance(value, list) and value and isinstance(value[0], dict)):
            out.update(_flatten(value, path + "."))
        else:
            out[path] = value
    return out


def compare_presets(saved: Preset, current: Preset) -> list[str]:
    """Raise InputError for a change that breaks resume; return the harmless changes, each as its dotted path and
    its values then and now ("training.learning_rate (0.001 -> 0.0005)")."""
    saved_dict, current_dict = preset_to_dict(saved), preset_to_dict(current)
    if len(saved_dict["concepts"]) != len(current_dict["concepts"]):
        before, now = len(saved_dict["concepts"]), len(current_dict["concepts"])
        raise InputError(f"concepts: {'added' if now > before else 'removed'} since the backup ({before} concept(s) "
                         f"then, {now} now); resuming would not continue the same training. Undo the change or "
                         "start over (--fresh, or Start over in the window)")
    old, new = _flatten(saved_dict), _flatten(current_dict)
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    for key in changed:
        if key == "training.ema" and {old[key], new[key]} <= {"cpu", "gpu"}:
            continue  # the average moves between CPU and GPU memory; its state is the same
        if any(key == b or key.startswith(b + ".") for b in BREAKING):
            raise InputError(f"{key}: changed since the backup ({old.get(key)!r} -> {new.get(key)!r}); "
                             "resuming would not continue the same training. Undo the change or start over "
                             "(--fresh, or Start over in the window)")
    return [f"{key} ({_short(old.get(key))} -> {_short(new.get(key))})" for key in changed]


def _short(value) -> str:
    """A value for the log, cut to 60 characters (a changed prompt list stays one line)."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


DATASET = "dataset.json"


def check_backup(folder: Path, current: Preset, num_processes: int, dataset: dict,
                 allow_changed_data: bool) -> tuple[Position, list[str], list[str]]:
    """Before anything heavy loads: may this run continue from the backup in `folder`? Returns (position,
    harmless preset changes, what changed in the data: lines for the log, empty when nothing did).

    Raises InputError when the process count differs (an epoch's steps, and so the position inside it, depend
    on how many processes share it), when a preset change breaks resume (compare_presets), and, unless
    allow_changed_data, when the concepts' files changed since the backup (`dataset`: inputs.dataset_record of
    the images now; refusal "data_changed")."""
    from trainer.data.inputs import dataset_changes
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        saved = preset_from_dict(json.loads((folder / "preset.json").read_text()))
        recorded = json.loads((folder / DATASET).read_text(encoding="utf-8")) if (folder / DATASET).is_file() \
            else None
    except (OSError, ValueError) as error:  # ConfigError is a ValueError too
        raise InputError(f"backup.resume: {folder} is damaged ({str(error).splitlines()[0]}); resume from another "
                         "backup (--resume PATH) or start over") from error
    written_by = manifest.get("num_processes", 1)
    if written_by != num_processes:
        how = (f"accelerate launch --multi_gpu --num_processes {written_by} -m trainer train ..." if written_by > 1
               else "python -m trainer train ...")
        raise InputError(f"backup.resume: {folder} was written by a run on {written_by} process(es) and this run "
                         f"has {num_processes}; each optimizer step holds a batch from every process, so the "
                         f"position inside the epoch would not match. Resume with the same count: {how}")
    harmless = compare_presets(saved, current)
    position = Position(manifest["step"], manifest["epoch"], manifest["epoch_step"])
    if recorded is None:
        return position, harmless, [f"{folder} does not record its images (written by an older SeaChange), so "
                                    "changes to the data since then cannot be checked"]
    changes = dataset_changes(recorded, dataset)
    if not changes:
        return position, harmless, []
    lines = [f"{kind}: {len(paths)} ({', '.join(Path(p).name for p in paths[:5])}"
             f"{f' and {len(paths) - 5} more' if len(paths) > 5 else ''})" for kind, paths in changes.items()]
    text = "; ".join(lines)
    if not allow_changed_data:
        raise InputError(f"backup.resume: the concepts' files changed since {folder.name} was written ({text}). "
                         "Resuming with other data does not continue the same training: from here on the data "
                         "order differs from an uninterrupted run. Undo the changes, start over, or resume anyway "
                         "(--allow-changed-data, or 'Resume with the changed data' in the window)",
                         refusal="data_changed")
    return position, harmless, [f"Resuming with changed data ({text}); from here on the data order differs from "
                                "an uninterrupted run"]


def load_backup(folder: Path) -> tuple[dict, dict]:
    """(module tensors by name, training state) of a backup that check_backup accepted; InputError naming the
    file when one is damaged (truncated, overwritten)."""
    from safetensors.torch import load_file
    manifest = json.loads((folder / MANIFEST).read_text())
    name = STATE
    try:
        tensors = {}
        for name in (f for f in manifest["files"] if f.endswith(".safetensors")):
            tensors[name[: -len(".safetensors")]] = load_file(str(folder / name))
        name = STATE
        return tensors, torch.load(folder / STATE, weights_only=True)
    except Exception as error:  # noqa: BLE001 - safetensors, pickle and zip errors alike mean a damaged file
        raise InputError(f"backup.resume: {folder / name} is damaged and cannot be read "
                         f"({plain_text(str(error)).splitlines()[0] if str(error) else type(error).__name__}); "
                         "resume from another backup (--resume PATH) or start over") from error


# ---- disk and folder checks before anything heavy loads -------------------------------------------------

def _safetensors_params(path: Path) -> int:
    header = safetensors_header(path)
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


RUN_FOLDERS = ("samples", "save", "backup", "tensorboard")  # what a run writes inside its workspace


def _check_writable(label: str, folder: Path) -> None:
    """Create `folder` if needed and write a probe file in it; InputError naming `label` otherwise."""
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{label}: {folder} is a file, but the run writes a folder there; move the file away")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".seachange-write-test-{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as e:
        raise InputError(f"{label}: cannot write to {folder}: {e.strerror or e}") from e


def check_folders_and_disk(preset: Preset) -> None:
    """Every folder the run writes (workspace and its samples, saves, backups, TensorBoard; the output's
    folder) writable, and room for one save and one backup; InputError otherwise. The output itself is
    checked by trainer.train.runs.check_output."""
    bytes_out = {"float16": 2, "bfloat16": 2, "float32": 4}[preset.model.output_dtype]
    params = estimate_params(preset.model.base_model)
    needs = {"workspace": params * 4 * 3, "output": params * bytes_out}  # backup: weights + 2 optimizer moments
    workspace = Path(preset.general.workspace_dir).expanduser()
    output_parent = Path(preset.model.output_path).expanduser().parent
    for label, folder, key in (("general.workspace_dir", workspace, "workspace"),
                               ("model.output_path", output_parent, "output")):
        _check_writable(label, folder)
        free = shutil.disk_usage(folder).free
        if free < needs[key]:
            what = "backup" if key == "workspace" else "save"
            raise InputError(f"{label}: only {free / 2**30:.1f} GiB free in {folder}; about "
                             f"{needs[key] / 2**30:.1f} GiB is needed for a {what}")
    for name in RUN_FOLDERS:
        if (workspace / name).exists():
            _check_writable("general.workspace_dir", workspace / name)
