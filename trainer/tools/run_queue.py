"""A queue of training runs and sweeps: the QUEUE.json format, its expansion into runs (each in its own workspace, its
models named after it), the checks before anything runs, and the state beside it (QUEUE.state.json) with the pause
flag. The runner that trains the runs is trainer/tools/queue_runner.py. Torch-free: the window reads, edits and watches
queues with it. No UI here.

Files beside QUEUE.json: QUEUE.state.json (each run's status; written atomically after every change), and two lock
files, .QUEUE.json.lock (held for a moment while the state is written) and .QUEUE.json.running (held while a
runner runs the queue, so a second one is refused).
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import itertools
import json
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

from trainer.config import Preset, load_preset, preset_from_dict, preset_to_dict, validate
from trainer.errors import InputError
from trainer.fields import ConfigError, atomic_write_text, read_json_file, read_versioned, set_value

try:
    import fcntl
except ImportError:  # not POSIX: nothing is locked
    fcntl = None

VERSION = 1
MIGRATIONS: dict[int, Callable[[dict], dict]] = {}  # MIGRATIONS[n]: a version-n queue dict -> version n + 1
STATE_VERSION = 1
STATE_MIGRATIONS: dict[int, Callable[[dict], dict]] = {}
STATUSES = ("pending", "running", "completed", "failed", "stopped", "interrupted")  # interrupted: read_state's
ENTRY_KEYS = ("name", "preset", "preset_data", "set", "sweep")
DERIVED = ("general.workspace_dir", "model.output_path", "model.merged_output_path")  # set per run by place_run


# ---- the queue file -------------------------------------------------------------------------------------

@dataclass
class QueueEntry:
    """One entry of QUEUE.json: a preset, either a file (`preset`, relative to the queue file's folder) or a whole
    preset dict as preset_to_dict gives it (`preset_data`); fixed overrides by dotted path (`set`, as --set); and a
    sweep (`sweep`: per dotted path a list of values; one run per combination, the first path varying slowest)."""
    name: str
    preset: str = ""
    preset_data: dict | None = None
    set: dict[str, Any] = field(default_factory=dict)
    sweep: dict[str, list] = field(default_factory=dict)


@dataclass
class QueueFile:
    """QUEUE.json: its entries, run in their order."""
    entries: list[QueueEntry] = field(default_factory=list)


def queue_from_dict(data: Any) -> QueueFile:
    """A queue from its JSON (`{"version": 1, "entries": [...]}`): a newer version refused, older ones migrated
    (MIGRATIONS), each entry's keys and types checked. Raises InputError naming the entry and key."""
    try:
        data = read_versioned(data, "queue", VERSION, MIGRATIONS)
    except ConfigError as e:
        raise InputError(str(e)) from None
    for key in data:
        if key != "entries":
            raise InputError(f"{key}: unknown key (a queue holds \"version\" and \"entries\")")
    if not isinstance(data.get("entries"), list):
        raise InputError("entries: expected a list of entries")
    return QueueFile([_entry_from_dict(i, entry) for i, entry in enumerate(data["entries"])])


def _entry_from_dict(i: int, data: Any) -> QueueEntry:
    where = f"entries[{i}]"
    if not isinstance(data, dict):
        raise InputError(f"{where}: expected an object with a name and a preset")
    name = data.get("name")
    if not isinstance(name, str) or not safe_part(name):
        raise InputError(f"{where} name: give the entry a name (letters, digits, - and _ are kept; it names the "
                         "runs and their workspaces)")
    label = f"{where} {name!r}"
    for key in data:
        if key not in ENTRY_KEYS:
            raise InputError(f"{label} {key}: unknown key (an entry has {', '.join(ENTRY_KEYS)})")
    preset, preset_data = data.get("preset", ""), data.get("preset_data")
    if not isinstance(preset, str) or (preset_data is not None and not isinstance(preset_data, dict)):
        raise InputError(f"{label} preset: \"preset\" is a file path, \"preset_data\" a whole preset object")
    if bool(preset) == (preset_data is not None):
        raise InputError(f"{label} preset: give either \"preset\" (a preset file) or \"preset_data\" (a whole "
                         f"preset), not {'both' if preset else 'neither'}")
    overrides, sweep = data.get("set", {}), data.get("sweep", {})
    if not isinstance(overrides, dict):
        raise InputError(f"{label} set: expected an object of dotted paths and values, e.g. "
                         "{\"training.epochs\": 10}")
    if not isinstance(sweep, dict):
        raise InputError(f"{label} sweep: expected an object of dotted paths and lists of values, e.g. "
                         "{\"training.learning_rate\": [1e-06, 2e-06]}")
    for key, values in sweep.items():
        if not isinstance(values, list) or not values:
            raise InputError(f"{label} sweep {key}: expected a non-empty list of values, e.g. [1e-06, 2e-06]")
    return QueueEntry(name, preset, preset_data, dict(overrides), {k: list(v) for k, v in sweep.items()})


def queue_to_dict(queue_file: QueueFile) -> dict:
    """The JSON form of a queue (empty set and sweep left out)."""
    entries = []
    for entry in queue_file.entries:
        data: dict[str, Any] = {"name": entry.name}
        data.update({"preset": entry.preset} if entry.preset else {"preset_data": entry.preset_data})
        data.update({key: getattr(entry, key) for key in ("set", "sweep") if getattr(entry, key)})
        entries.append(data)
    return {"version": VERSION, "entries": entries}


def read_queue(path: str | Path) -> QueueFile:
    """Read QUEUE.json; InputError naming the file, entry or key at fault."""
    try:
        data = read_json_file(path, "queue")
    except ConfigError as e:
        raise InputError(str(e)) from None
    return queue_from_dict(data)


def write_queue(queue_file: QueueFile, path: str | Path) -> None:
    """Write QUEUE.json atomically (indent 2); a runner picks the change up between runs, matching runs by name."""
    atomic_write_text(path, json.dumps(queue_to_dict(queue_file), indent=2) + "\n")


# ---- expansion: entries -> runs ---------------------------------------------------------------------------

_UNSAFE = re.compile(r"[^A-Za-z0-9._=+-]+")


def safe_part(text: str, limit: int = 48) -> str:
    """`text` as (part of) a file or folder name on every system: each run of characters other than letters,
    digits and . _ = + - becomes one _, leading and trailing . _ - go; past `limit` characters it is cut and 8 hex
    digits of its SHA-1 added, so different texts stay different."""
    safe = _UNSAFE.sub("_", text).strip("._-")
    if len(safe) > limit:
        safe = f"{safe[:limit - 9]}-{hashlib.sha1(text.encode('utf-8')).hexdigest()[:8]}"
    return safe


def value_text(value: Any) -> str:
    """A sweep value as a run name shows it: floats as Python writes them (1e-06), true/false, JSON otherwise."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def key_labels(keys: list[str]) -> dict[str, str]:
    """Per dotted path, the shortest tail that tells it from the others (training.learning_rate -> learning_rate;
    concepts.0.repeats and concepts.1.repeats -> 0.repeats, 1.repeats)."""
    labels = {}
    for key in keys:
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            tail = ".".join(parts[-n:])
            if not any(other != key and (other == tail or other.endswith("." + tail)) for other in keys):
                break
        labels[key] = tail
    return labels


def run_name(entry_name: str, values: dict[str, Any]) -> str:
    """A run's name (its workspace folder, its models' suffix): the entry's name, then `label=value` per sweep
    path, joined by __, each part made file-name safe: "portrait-lr__learning_rate=1e-06__epochs=5"."""
    labels = key_labels(list(values))
    parts = [safe_part(entry_name)] + [safe_part(f"{labels[k]}={value_text(v)}") for k, v in values.items()]
    return "__".join(parts)


def suffixed(path: str, name: str, single_file: bool) -> str:
    """An output path with the run's name added: a single file's stem (out/model.safetensors ->
    out/model-NAME.safetensors; a name without suffix gets .safetensors, as the run would add it), a diffusers
    folder's name (out/model -> out/model-NAME)."""
    if not path:
        return path
    p = Path(path)
    if not single_file:
        return str(p.with_name(f"{p.name}-{name}"))
    if not p.suffix:
        return str(p.with_name(f"{p.name}-{name}.safetensors"))
    return str(p.with_name(f"{p.stem}-{name}{p.suffix}"))


def place_run(preset: Preset, name: str) -> None:
    """Give a run its own files (in place): workspace general.workspace_dir/NAME; model.output_path and
    model.merged_output_path with NAME added (suffixed); a run that trains a word beside its model or LoRA (which
    is written next to the output as WORD.safetensors, the name prompts call it by) gets a folder NAME beside the
    output instead, holding the output under its own name and the word's file. backup.resume is cleared: the queue
    resumes its runs itself. The cache folder stays shared (the same images are cached once)."""
    general, model, training = preset.general, preset.model, preset.training
    general.workspace_dir = str(Path(general.workspace_dir) / name)
    if training.method != "embedding" and training.embedding_placeholder:
        output = Path(model.output_path)
        model.output_path = str(output.parent / name / output.name)
    else:
        model.output_path = suffixed(model.output_path, name, training.method != "full"
                                     or model.output_format == "single_file")
    model.merged_output_path = suffixed(model.merged_output_path, name, model.output_format == "single_file")
    preset.backup.resume = ""


@dataclass
class QueueRun:
    """One run of a queue: its name (also its workspace folder's), the entry it comes from (index and name), its
    sweep values by dotted path, its preset (the entry's preset with its set and sweep values and the run's own
    files applied: place_run) and the entry's preset as loaded (`base`, what differences() compares to)."""
    name: str
    entry: int
    entry_name: str
    values: dict[str, Any]
    preset: Preset
    base: Preset

    @property
    def workspace(self) -> Path:
        """The run's own workspace (general.workspace_dir/NAME, ~ expanded)."""
        return Path(self.preset.general.workspace_dir).expanduser()

    def differences(self) -> list[str]:
        """'dotted.path: before -> after' for each setting of this run that differs from the entry's preset as
        loaded (its set and sweep values, a cleared backup.resume), leaving out the paths place_run sets."""
        before, after = _flat(preset_to_dict(self.base)), _flat(preset_to_dict(self.preset))
        keys = list(after) + [k for k in before if k not in after]
        return [f"{k}: {before.get(k)!r} -> {after.get(k)!r}" for k in keys
                if before.get(k) != after.get(k) and k not in DERIVED]


def _flat(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict) or (isinstance(data, list) and data and all(isinstance(v, dict) for v in data)):
        items = data.items() if isinstance(data, dict) else enumerate(data)
        return {k: v for key, value in items for k, v in _flat(value, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): data}


def expand_queue(queue_file: QueueFile, folder: str | Path, check_paths: bool = True) -> list[QueueRun]:
    """Every run of the queue, in order, checked: each entry's preset exists and loads, every dotted path exists
    and each value type-checks, every run's preset validates (config.validate; check_paths: its files exist too),
    run names are unique, and there is at least one run. The first problem is raised as InputError naming the
    entry, where it lies (preset, set or sweep) and the field: "entries[1] 'portrait-lr' sweep
    training.learnig_rate: unknown key". `folder`: the queue file's folder, which preset paths are relative to."""
    if not queue_file.entries:
        raise InputError("entries: the queue is empty; add at least one entry")
    runs: list[QueueRun] = []
    seen: dict[str, str] = {}
    for i in range(len(queue_file.entries)):
        runs += expand_entry(queue_file, i, folder, check_paths, seen)
    return runs


def expand_entry(queue_file: QueueFile, index: int, folder: str | Path, check_paths: bool = True,
                 seen: dict[str, str] | None = None) -> list[QueueRun]:
    """The runs of entry `index` alone, checked as expand_queue checks each (the window checks an entry it edits
    with it): InputError naming the entry by its place in the file. `seen` (run name -> the label of the entry
    it came from) collects the names across entries; a run named as one in it is refused."""
    seen = {} if seen is None else seen
    entry = queue_file.entries[index]
    label = f"entries[{index}] {entry.name!r}"
    loaded = _entry_preset(entry, Path(folder), label)
    fixed = _with_values(loaded, entry.set, f"{label} set")
    runs: list[QueueRun] = []
    for combination in itertools.product(*entry.sweep.values()):
        values = dict(zip(entry.sweep, combination))
        name = run_name(entry.name, values)
        base = _with_values(fixed, values, f"{label} sweep", f" (run {name})")
        preset = copy.deepcopy(base)
        place_run(preset, name)
        problems = validate(preset, check_paths=check_paths)
        if problems:
            raise InputError(_problem_text(problems[0], label, entry, name))
        if name in seen:
            raise InputError(f"{label}: a second run named {name!r} (the first is of {seen[name]}); runs need "
                             "different names: rename an entry, or remove a repeated sweep value")
        seen[name] = label
        runs.append(QueueRun(name, index, entry.name, values, preset, loaded))
    return runs


def check_queue(path: str | Path) -> list[QueueRun]:
    """Read QUEUE.json and expand it (expand_queue, files checked); InputError at the first problem."""
    path = Path(path).expanduser().absolute()
    return expand_queue(read_queue(path), path.parent)


def _entry_preset(entry: QueueEntry, folder: Path, label: str) -> Preset:
    if entry.preset_data is not None:
        try:
            return preset_from_dict(entry.preset_data)
        except ConfigError as e:
            raise InputError(f"{label} preset_data {e}") from None
    path = Path(entry.preset).expanduser()
    path = path if path.is_absolute() else folder / path
    if not path.is_file():
        raise InputError(f"{label} preset: {path} does not exist (a preset path is relative to the queue file's "
                         "folder)")
    try:
        return load_preset(path)
    except ConfigError as e:
        raise InputError(f"{label} preset {entry.preset}: {e}") from None


def _with_values(preset: Preset, values: dict[str, Any], where: str, note: str = "") -> Preset:
    preset = copy.deepcopy(preset)
    for key, value in values.items():
        try:
            set_value(preset, key, value)
        except ConfigError as e:
            raise InputError(f"{where} {e}{note}") from None
    return preset


def _problem_text(problem: str, label: str, entry: QueueEntry, name: str) -> str:
    """A validation problem ('dotted.path: reason') said with the entry and where its field was set."""
    path = problem.split(":", 1)[0]

    def touches(keys) -> bool:
        return any(path == k or path.startswith(k + ".") or k.startswith(path + ".") for k in keys)
    where = "sweep" if touches(entry.sweep) else "set" if touches(entry.set) else "preset"
    return f"{label} {where} {problem} (run {name})"


# ---- the state beside the queue ---------------------------------------------------------------------------

@dataclass
class RunState:
    """A run's record in QUEUE.state.json: status (STATUSES), the message it ended with, its smoothed training loss
    at its last step and its last validation loss (None before any), the model it wrote, its workspace and run id
    (trainer.train.runs: set once the run has claimed its workspace), when it first started and last ended (local time,
    ISO 8601)."""
    status: str = "pending"
    message: str = ""
    final_loss: float | None = None
    validation_loss: float | None = None
    model: str = ""
    workspace: str = ""
    run_id: str = ""
    started: str = ""
    finished: str = ""
    settings: str = ""  # run_settings() when it last started: a completed run whose settings changed is said so


@dataclass
class QueueState:
    """QUEUE.state.json: the runs' records by run name (so entries may be added, removed and reordered), and the
    flag the window sets to pause the queue after its current run."""
    runs: dict[str, RunState] = field(default_factory=dict)
    pause_after_current: bool = False


def state_path(queue_path: str | Path) -> Path:
    """QUEUE.state.json beside QUEUE.json."""
    path = Path(queue_path).expanduser()
    return path.with_name(f"{path.stem}.state.json")


def read_state(queue_path: str | Path) -> QueueState:
    """The queue's state (empty when there is none yet); InputError when the file is damaged."""
    path = state_path(queue_path)
    if not path.exists():
        return QueueState()
    try:
        data = read_versioned(read_json_file(path, "queue state"), "queue state", STATE_VERSION, STATE_MIGRATIONS)
        known = {f.name for f in fields(RunState)}
        runs = {name: RunState(**{k: v for k, v in record.items() if k in known})
                for name, record in data.get("runs", {}).items()}
        if any(run.status not in STATUSES for run in runs.values()):
            raise ConfigError(f"runs: a status is not one of {', '.join(STATUSES)}")
        if any(run.status == "running" for run in runs.values()) and not queue_running(queue_path):
            for run in runs.values():  # its runner ended without a word (killed, aborted, a crash)
                if run.status == "running":
                    run.status, run.message = "interrupted", "the queue ended during this run; it continues " \
                                                             "from its last backup"
        return QueueState(runs, bool(data.get("pause_after_current", False)))
    except (ConfigError, AttributeError, TypeError) as e:
        raise InputError(f"{path}: damaged ({e}); it records which runs are done. Repair it, or delete it to run "
                         "every run anew (runs whose workspace holds an earlier run are then refused)") from None


def write_state(queue_path: Path, state: QueueState) -> None:
    """Write QUEUE.state.json atomically (hold state_lock around a read and this write)."""
    data = {"version": STATE_VERSION, "pause_after_current": state.pause_after_current,
            "runs": {name: asdict(run) for name, run in state.runs.items()}}
    atomic_write_text(state_path(queue_path), json.dumps(data, indent=2) + "\n")


@contextlib.contextmanager
def _lock(path: Path, wait: bool = True):
    """Hold an exclusive fcntl.flock on `path` (created if missing; two opens exclude each other within one
    process too). Without `wait`, BlockingIOError when another holds it. Without fcntl nothing is locked."""
    if fcntl is None:
        yield
        return
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def state_lock(queue_path: str | Path):
    """The lock held while the state is read and written back (.QUEUE.json.lock)."""
    queue_path = Path(queue_path).expanduser()
    return _lock(queue_path.with_name(f".{queue_path.name}.lock"))


def running_lock(queue_path: str | Path):
    """The lock a runner holds while it runs the queue (.QUEUE.json.running); BlockingIOError when held."""
    queue_path = Path(queue_path).expanduser()
    return _lock(queue_path.with_name(f".{queue_path.name}.running"), wait=False)


def queue_running(queue_path: str | Path) -> bool:
    """Whether a runner holds this queue now (running_lock); False where nothing can be locked."""
    try:
        with running_lock(queue_path):
            return False
    except BlockingIOError:
        return True
    except OSError:
        return False


def run_settings(run: QueueRun) -> str:
    """A fingerprint of a run's resolved settings (its preset as JSON)."""
    from trainer.config import preset_to_json
    return hashlib.sha1(preset_to_json(run.preset).encode()).hexdigest()[:16]


def set_pause(queue_path: str | Path, pause: bool = True) -> None:
    """Set (or clear) "pause after the current run": a running queue reads it after each run, then stops before
    the next and clears it. Safe while a runner writes the state (both hold the state lock)."""
    with state_lock(queue_path):
        state = read_state(queue_path)
        state.pause_after_current = pause
        write_state(Path(queue_path).expanduser(), state)
