"""A workspace's runs: what an earlier run left there, moving it aside when the user starts over, and which run
wrote a model file. No torch and no UI here: the window asks its questions with it before Start.

A run gets an id when it starts fresh, kept in WORKSPACE/run.json, in each backup's manifest and in every model it
writes (metadata key `seachange.run_id`). A model file is only ever replaced by the run that wrote it or a resume
of that run; a file SeaChange did not write is never replaced.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from trainer.errors import InputError
from trainer.event_log import EVENT_LOG

MANIFEST = "manifest.json"  # a backup folder counts once this file is written (trainer/train/backup.py)
RUN_FILE = "run.json"
EARLIER_DIR = "earlier"
RUN_ID_KEY = "seachange.run_id"
PRESET_KEY = "seachange.preset"
DIFFUSERS_METADATA = "seachange_metadata.json"  # trainer.model.models.METADATA_FILE (models imports torch)
# What a run writes into its workspace; all of it moves aside together when the user starts over.
RUN_PARTS = ("backup", "samples", "save", "tensorboard", "preset.json", RUN_FILE, EVENT_LOG)


@dataclass
class EarlierRun:
    """What an earlier run left in a workspace (or at the output path).

    backup, backup_step, backup_epoch: its newest complete backup (None without one); samples and saves: how
    many sample images and periodic saves; model: a SeaChange model at model.output_path, and model_run_id the
    run that wrote it (another run's when it differs from run_id, the workspace's)."""
    workspace: Path
    run_id: str | None = None
    backup: Path | None = None
    backup_step: int | None = None
    backup_epoch: int | None = None
    samples: int = 0
    saves: int = 0
    model: Path | None = None
    model_run_id: str | None = None

    @property
    def owns_model(self) -> bool:
        """Whether the model at the output path is this workspace's run's (or either id is unknown)."""
        return not (self.run_id and self.model_run_id and self.run_id != self.model_run_id)

    @property
    def in_workspace(self) -> bool:
        """Whether the workspace holds any of it (else only the model at the output path is an earlier run's)."""
        return self.backup is not None or bool(self.samples) or bool(self.saves)

    def summary(self) -> str:
        """One line for the user: 'latest backup at step 503 (epoch 4), 12 samples, 2 saves, the model X'."""
        parts = []
        if self.backup is not None:
            parts.append(f"latest backup at step {self.backup_step} (epoch {self.backup_epoch})")
        if self.samples:
            parts.append(f"{self.samples} sample image{'s' * (self.samples != 1)}")
        if self.saves:
            parts.append(f"{self.saves} save{'s' * (self.saves != 1)}")
        if self.model is not None and self.owns_model:
            parts.append(f"the model {self.model}")
        elif self.model is not None:
            parts.append(f"and at the output path the model of another run, {self.model}")
        return ", ".join(parts)


def output_file(preset) -> Path:
    """Where the final model goes: model.output_path, with .safetensors added for a single file named without a
    suffix (check_output refuses other suffixes), as trainer.model.models.save_model writes it."""
    path = Path(preset.model.output_path).expanduser()
    if preset.model.output_format == "single_file" and path.suffix.lower() != ".safetensors":
        path = path.with_name(path.name + ".safetensors")
    return path


def read_run_id(workspace: Path) -> str | None:
    """The id in WORKSPACE/run.json, or None."""
    try:
        return json.loads((Path(workspace) / RUN_FILE).read_text(encoding="utf-8"))["run_id"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_run_file(workspace: Path, run_id: str) -> None:
    """Record the run's id in WORKSPACE/run.json (atomically)."""
    from trainer.fields import atomic_write_text
    atomic_write_text(Path(workspace) / RUN_FILE, json.dumps(
        {"run_id": run_id, "started": time.strftime("%Y-%m-%dT%H:%M:%S")}, indent=2) + "\n")


def new_run_id() -> str:
    """A new run's id: 32 hex digits (uuid4)."""
    return uuid.uuid4().hex


def safetensors_header(path: Path) -> dict:
    """The JSON header of a .safetensors file (tensor names -> dtype, shape, offsets; "__metadata__"), read
    without torch or the tensors. Raises ValueError when the file has no such header, OSError when unreadable."""
    with open(path, "rb") as fh:
        size = int.from_bytes(fh.read(8), "little")
        if not 0 < size <= min(Path(path).stat().st_size - 8, 100 * 2**20):
            raise ValueError(f"{path} has no safetensors header")
        header = json.loads(fh.read(size))
    if not isinstance(header, dict):
        raise ValueError(f"{path} has no safetensors header")
    return header


def model_metadata(path: Path) -> dict | None:
    """The SeaChange metadata of a model file or diffusers folder, or None when `path` holds no SeaChange model
    (a file SeaChange did not write, or an unreadable one). Reads only the safetensors header."""
    path = Path(path)
    if path.is_dir():
        try:
            data = json.loads((path / DIFFUSERS_METADATA).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) and (path / "model_index.json").is_file() else None
    try:
        header = safetensors_header(path)
    except (OSError, ValueError):
        return None
    meta = header.get("__metadata__")
    if not isinstance(meta, dict) or not (RUN_ID_KEY in meta or PRESET_KEY in meta):
        return None
    return meta


# The names a run gives its samples and saves (sampling.sample_path, outputs.RunOutputs.save_now_path): only
# those count as an earlier run's; a user's own files in a folder of that name do not.
SAMPLE_NAME = re.compile(r"step\d{7}-epoch\d{4}-prompt\d{2}-seed\d+\.png")
SAVE_NAME = re.compile(r".*step\d{7}-epoch\d{4}(\.safetensors)?")


def _count_files(folder: Path, pattern: re.Pattern) -> int:
    if not folder.is_dir():
        return 0
    return sum(1 for p in folder.iterdir() if pattern.fullmatch(p.name))


def earlier_run(preset) -> EarlierRun | None:
    """What an earlier run left: complete backups, samples or saves in the workspace, or a SeaChange model at
    the output path. None when there is nothing (a new workspace, or one with only caches and logs)."""
    workspace = Path(preset.general.workspace_dir).expanduser()
    found = EarlierRun(workspace, read_run_id(workspace))
    backups = complete_backups(backup_root(preset))
    if backups:
        found.backup = backups[-1]
        try:
            manifest = json.loads((found.backup / MANIFEST).read_text(encoding="utf-8"))
            found.backup_step = manifest["step"]  # and the epoch as backup.Position.epoch_number counts it
            found.backup_epoch = manifest["epoch"] + (1 if manifest.get("epoch_step", 0) > 0 else 0)
        except (OSError, ValueError, KeyError):
            pass
    found.samples = _count_files(workspace / "samples", SAMPLE_NAME)
    found.saves = _count_files(workspace / "save", SAVE_NAME)
    output = output_file(preset)
    meta = model_metadata(output) if output.exists() else None
    if meta is not None:
        found.model, found.model_run_id = output, meta.get(RUN_ID_KEY)
    if found.backup is None and not found.samples and not found.saves and found.model is None:
        return None
    return found


def backup_root(preset) -> Path:
    """WORKSPACE/backup, where a run's backups go."""
    return Path(preset.general.workspace_dir).expanduser() / "backup"


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


def find_backup(preset, resume: str) -> Path:
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


def _free_name(path: Path) -> Path:
    """`path`, or path with -2, -3 ... before its suffix when taken."""
    candidate, n = path, 2
    while candidate.exists() or candidate.is_symlink():
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}") if path.suffix else path.with_name(
            f"{path.name}-{n}")
        n += 1
    return candidate


def move_earlier_run(preset, earlier: EarlierRun) -> list[str]:
    """Start over: move the earlier run's files out of the way, never deleting them. Its workspace parts
    (backups, samples, saves, TensorBoard, preset, run id, record of events) go to
    WORKSPACE/earlier/<date-time>/; its model goes there too when it lies in the workspace, else it is renamed
    beside itself (NAME.earlier-<date-time>).
    Returns one line per move, for the log."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    workspace = earlier.workspace
    archive = _free_name(workspace / EARLIER_DIR / stamp)
    moves = []

    def move(src: Path, dest: Path) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dest) if not dest.exists() else shutil.move(str(src), str(_free_name(dest)))
        moves.append(f"{src} -> {dest}")
    for part in RUN_PARTS:
        if (workspace / part).exists():
            move(workspace / part, archive / part)
    if earlier.model is not None and earlier.model.exists():
        model = earlier.model
        try:
            inside = model.resolve().relative_to(workspace.resolve())
        except ValueError:
            inside = None
        if inside is not None:
            dest = archive / inside
        else:
            dest = _free_name(model.with_name(f"{model.stem}.earlier-{stamp}{model.suffix}"))
        sidecar = model.with_suffix(".yaml")  # an A1111 config beside a single file belongs to that model
        move(model, dest)
        if model.suffix and sidecar.is_file():
            move(sidecar, dest.with_suffix(".yaml"))
    return moves


def check_output(preset, run_id: str | None, resuming: bool) -> None:
    """Refuse (InputError naming the field) an output the run may not replace: something SeaChange did not write
    (a user's file, a folder of other files), a file where a folder goes or the other way round, or a model
    another run wrote. An output of this run (same id), or of an unknown run when resuming a backup that
    predates run ids, may be replaced. Checked: model.output_path (a LoRA or an embedding is one .safetensors
    file), a LoRA run's model.merged_output_path, and the file of a word trained beside a model or LoRA."""
    model, training = preset.model, preset.training
    single = "single_file" if training.method != "full" else model.output_format
    targets = [("model.output_path", model.output_path, single)]
    if training.method == "lora" and model.merged_output_path:
        targets.append(("model.merged_output_path", model.merged_output_path, model.output_format))
    if training.method != "embedding" and training.embedding_placeholder:
        beside = Path(model.output_path).expanduser().parent / f"{training.embedding_placeholder}.safetensors"
        targets.append(("training.embedding_placeholder", str(beside), "single_file"))
    for field, path, fmt in targets:
        _check_target(field, Path(path).expanduser(), fmt, preset, run_id, resuming)


def _check_target(field: str, given: Path, fmt: str, preset, run_id: str | None, resuming: bool) -> None:
    output = given if fmt != "single_file" or given.suffix.lower() == ".safetensors" else \
        given.with_name(given.name + ".safetensors")
    where = f"{field}: {output}"
    base = Path(preset.model.base_model).expanduser().resolve()
    if base in (given.resolve(), output.resolve()):
        raise InputError(f"{field}: {given} is the base model; write the result to another path")
    if fmt == "single_file" and given != output and (given.suffix or given.exists()):
        what = "a folder" if given.is_dir() else "a file" if given.exists() else f"named {given.suffix}"
        raise InputError(f"{field}: {given} is {what}, and a single file is written there; give a name ending in "
                         ".safetensors (or choose output format diffusers for a folder)")
    if not output.exists():
        return
    if fmt == "single_file" and output.is_dir():
        raise InputError(f"{where} is a folder, and a single .safetensors file is written there; choose a file name "
                         "(or output format diffusers)")
    if fmt == "diffusers" and not output.is_dir():
        raise InputError(f"{where} is a file, and the output format diffusers writes a folder; choose a folder "
                         "name (or output format single_file)")
    if output.is_dir() and not any(output.iterdir()):
        return  # an empty folder takes the model
    meta = model_metadata(output)
    if meta is None:
        what = "a folder of other files" if output.is_dir() else "a file"
        raise InputError(f"{where} is {what} that SeaChange did not write; SeaChange never replaces it. Choose "
                         "another output path, or move it away")
    owner = meta.get(RUN_ID_KEY)
    if owner and owner == run_id or (resuming and not owner):
        return
    raise InputError(f"{where} holds the model of another run; SeaChange replaces a model only for the run that "
                     "wrote it. Choose another output path, or start over (--fresh, or Start over in the window) "
                     "to move it aside", refusal="earlier_run")


def claim_workspace(preset, resume: str | None, fresh: bool, emit,
                    main_process: bool = True) -> tuple[str, Path | None]:
    """Before anything heavy: decide which run this is and make sure it overwrites nothing of another run.

    Resuming (resume 'latest' or a backup folder) continues that backup's run. Otherwise an earlier run's files
    in the workspace (or its model at the output path) refuse the start (InputError, refusal "earlier_run")
    unless `fresh`: then they are moved aside (move_earlier_run; the main process does it, the others only
    check). Then the output path is checked (check_output). Returns (run id, the backup folder or None);
    the main process records the id in WORKSPACE/run.json."""
    from trainer import events as ev
    workspace = Path(preset.general.workspace_dir).expanduser()
    folder = find_backup(preset, resume) if resume else None
    if folder is not None:
        try:
            manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            manifest = {}
        run_id = manifest.get("run_id") or read_run_id(workspace) or new_run_id()
        here = read_run_id(workspace)
        if here and here != run_id and earlier_run(preset) is not None:
            raise InputError(
                f"backup.resume: {folder} belongs to another run than the one in {workspace}; resuming it here "
                "would mix the two runs' samples and backups (and prune the other's). Resume it in its own "
                f"workspace (general.workspace_dir: the folder that holds its backup/ folder), or in a new one",
                refusal="earlier_run")
    else:
        earlier = earlier_run(preset)
        if earlier is not None and not fresh:
            raise InputError(_earlier_run_message(workspace, earlier), refusal="earlier_run")
        if earlier is not None and main_process:
            for line in move_earlier_run(preset, earlier):  # a warning: said even with --quiet
                emit(ev.Log("warning", f"Starting over; moved the earlier run's {line}"))
        run_id = new_run_id()
    check_output(preset, run_id, resuming=folder is not None)
    if main_process and read_run_id(workspace) != run_id:
        workspace.mkdir(parents=True, exist_ok=True)
        write_run_file(workspace, run_id)
    return run_id, folder


def _earlier_run_message(workspace: Path, earlier: EarlierRun) -> str:
    """Why a start without --resume or --fresh is refused, and what each choice does."""
    if not earlier.in_workspace:
        return (f"model.output_path: {earlier.model} holds the model of an earlier run, and SeaChange replaces a model "
                "only for the run that wrote it. Choose another output path, or start over (--fresh: that model "
                f"is kept, renamed beside itself to {earlier.model.stem}.earlier-<date-time>{earlier.model.suffix}; "
                "Start over in the window)")
    how = "--resume latest" if earlier.backup is not None else "--resume PATH (a backup of that run)"
    return (f"general.workspace_dir: {workspace} holds an earlier run ({earlier.summary()}). Continue it ({how}), "
            f"or start over (--fresh: its files are kept, moved to {workspace / EARLIER_DIR}/), or choose another "
            "workspace. The window asks which")
