"""Dataclass trees as documents: typed reading with dotted-path errors, versions and migrations, field metadata
for the form, dotted-path get/set for the CLI's --set and the window, atomic writes. The preset (trainer/config.py)
and the tool specs (trainer/specs.py) are built on it. No UI here."""
from __future__ import annotations

import copy
import difflib
import json
import os
import threading
import typing
from dataclasses import MISSING, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Callable


class ConfigError(ValueError):
    """A preset problem; the message starts with the dotted path of the field at fault."""


def opt(default: Any, label: str, help: str, *, min: float | None = None, max: float | None = None,
        choices: tuple[str, ...] | None = None, kind: str | None = None, factory: Any = None):
    """A preset field. Metadata drives the form (label, tooltip, widget kind), the ranges and the choices.

    kind: "path" (file or folder picker), "dir", "file", "text" (multi-line) or None (from the type).
    """
    meta = {"label": label, "help": help, "min": min, "max": max, "choices": choices, "kind": kind}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _check_type(value: Any, hint: Any, path: str) -> Any:
    """Return value (ints widened to float where a float is expected) or raise naming the path."""
    origin = typing.get_origin(hint)
    if is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected an object, got {type(value).__name__}")
        return _from_dict(hint, value, path)
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ConfigError(f"{path}: expected a list, got {type(value).__name__}")
        return [_check_type(v, item, f"{path}.{i}") for i, v in enumerate(value)]
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected a whole number, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected text, got {value!r}")
        return value
    raise ConfigError(f"{path}: unsupported field type {hint}")


def unknown_key(key: str, names) -> str:
    """The words for a key that is not one of `names`, with the likeliest one meant when one is close."""
    close = difflib.get_close_matches(str(key), sorted(names), n=1, cutoff=0.75)
    return f"unknown key; did you mean {close[0]}?" if close else "unknown key"


def _from_dict(cls, data: dict, path: str = ""):
    """Build `cls` from a dict laid over its defaults; unknown keys and wrong types name their dotted path."""
    hints = _hints(cls)
    names = {f.name for f in fields(cls)}
    for key in data:
        if key not in names:
            raise ConfigError(f"{path}{'.' if path else ''}{key}: {unknown_key(key, names)}")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _check_type(value, hints[name], f"{path}{'.' if path else ''}{name}")
    return cls(**kwargs)


def read_versioned(data: dict, what: str, version_now: int, migrations: dict) -> dict:
    """Check a file's "version", run its migrations in order and return the migrated dict without the key.
    `what` names the document in messages ("preset", "spec")."""
    if not isinstance(data, dict):
        raise ConfigError(f"{what}: expected a JSON object")
    data = copy.deepcopy(data)
    version = data.pop("version", None)
    if version is None:
        raise ConfigError(f"version: missing (a {what} file starts with {{\"version\": N, ...}})")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ConfigError(f"version: expected a positive whole number, got {version!r}")
    if version > version_now:
        raise ConfigError(f"version: this {what} is version {version}, newer than this SeaChange "
                          f"understands ({version_now}); update SeaChange")
    for v in range(version, version_now):
        data = migrations[v](data)
    return data


def read_json_file(path: str | Path, what: str) -> Any:
    """Parsed JSON of a file in UTF-8 (with or without a byte-order mark, as Notepad saves it), UTF-16 or UTF-32:
    the encodings RFC 8259 section 8.1 names, told apart by json.loads from the bytes. Unreadable files, other
    bytes (an image, a file in a legacy code page) and bad JSON raise ConfigError naming the file and the place."""
    path = Path(path).expanduser()
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{what}: cannot read {path}: {e.strerror or e}") from e
    try:
        return json.loads(raw)
    except UnicodeDecodeError as e:
        if b"\x00" in raw[:4096]:  # no text holds NUL bytes (UTF-16 and UTF-32 were told apart above)
            raise ConfigError(f"{what}: {path} is not a text file (an image or other binary file?); choose the "
                              f"{what}'s .json file") from e
        raise ConfigError(f"{what}: {path} is not JSON text in UTF-8 (byte {raw[e.start]:#04x} at position "
                          f"{e.start}); save it as UTF-8") from e
    except json.JSONDecodeError as e:
        raise ConfigError(f"{what}: {path} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from e


def in_file(path: str | Path, build: Callable[[], Any]) -> Any:
    """build() (what is made of the data read from the file `path`), with the file named at the end of a
    ConfigError it raises ("training.lerning_rate: unknown key (in /x/preset.json)")."""
    try:
        return build()
    except ConfigError as e:
        raise ConfigError(f"{e} (in {Path(path).expanduser()})") from e


_UMASK_LOCK = threading.Lock()


def process_umask() -> int:
    """The process's file-creation mask (e.g. 0o022), read without changing it where the system allows:
    Linux's /proc/self/status "Umask:" line (kernel 4.7+); elsewhere os.umask is set to 0o077 (so a file
    another thread creates meanwhile is, at worst, more private) and restored at once, under a lock."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o077)
        os.umask(mask)
    return mask


def umask_mode(directory: bool = False) -> int:
    """The mode the user's umask gives a new file (0o666 less the mask: 0o644 with umask 022, 0o600 with 077),
    or a new folder with directory=True (0o777 less the mask)."""
    return (0o777 if directory else 0o666) & ~process_umask()


def give_umask_mode(path: str | Path) -> None:
    """Set a file SeaChange created (or every file and folder under a folder it created) to the umask's mode.
    Needed where a library creates files 0600 whatever the umask (safetensors' save_file, tempfile.mkstemp),
    so that a ComfyUI or A1111 server running as another user can read what SeaChange writes."""
    path = Path(path)
    file_mode, dir_mode = umask_mode(), umask_mode(directory=True)
    if not path.is_dir():
        os.chmod(path, file_mode)
        return
    os.chmod(path, dir_mode)
    for folder, dirs, files in os.walk(path):
        for name in dirs:
            os.chmod(os.path.join(folder, name), dir_mode)
        for name in files:
            os.chmod(os.path.join(folder, name), file_mode)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write via a temporary file in the same folder, fsync, then rename over the target. A new file gets the
    umask's mode; a file that is already there keeps its own permissions."""
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        mode = path.stat().st_mode & 0o7777 if path.is_file() else umask_mode()
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write UTF-8 text via a temporary file in the same folder, fsync, then rename over the target (see
    atomic_write_bytes: a new file gets the umask's mode, a file already there keeps its own)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def field_problems(obj, path: str) -> list[str]:
    problems = []
    for f in fields(obj):
        value = getattr(obj, f.name)
        p = f"{path}.{f.name}" if path else f.name
        meta = f.metadata
        if is_dataclass(value):
            problems += field_problems(value, p)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if is_dataclass(item):
                    problems += field_problems(item, f"{p}.{i}")
        else:
            if meta.get("choices") and value not in meta["choices"]:
                problems.append(f"{p}: {value!r} is not one of {', '.join(meta['choices'])}")
            if meta.get("min") is not None and value < meta["min"]:
                problems.append(f"{p}: {value} is below the minimum {meta['min']}")
            if meta.get("max") is not None and value > meta["max"]:
                problems.append(f"{p}: {value} is above the maximum {meta['max']}")
    return problems


def _walk(preset: Any, dotted: str):
    """Return (parent object, attribute name or list index, type hint) for a dotted path in a preset (or any
    dataclass tree, such as a tool spec)."""
    parts = dotted.split(".")
    obj, hint = preset, type(preset)
    for i, part in enumerate(parts):
        here = ".".join(parts[: i + 1])
        if isinstance(obj, list):
            if not part.isdigit() or int(part) >= len(obj):
                raise ConfigError(f"{here}: no item {part} (the list has {len(obj)})")
            parent, key, hint = obj, int(part), typing.get_args(hint)[0]
        elif is_dataclass(obj):
            hints = _hints(type(obj))
            if part not in hints:
                raise ConfigError(f"{here}: {unknown_key(part, hints)}")
            parent, key, hint = obj, part, hints[part]
        else:
            raise ConfigError(f"{here}: unknown key")
        obj = parent[key] if isinstance(parent, list) else getattr(parent, key)
    return parent, key, hint


def field_meta(dotted: str, root: Any) -> dict:
    """The metadata (label, help, min, max, choices, kind) of a field by dotted path; list indices allowed."""
    cls, meta = root, {}
    for part in dotted.split("."):
        if part.isdigit():
            continue
        f = {f.name: f for f in fields(cls)}[part]
        meta, hint = f.metadata, _hints(cls)[part]
        cls = typing.get_args(hint)[0] if typing.get_origin(hint) is list else hint
    return dict(meta)


def parse_text(text: str, hint: Any, path: str) -> Any:
    """Parse a value typed as text (CLI, entry widget) into the field's type."""
    if hint is str:
        return text
    if hint is bool:
        low = text.strip().lower()
        if low in ("true", "1", "yes", "on"):
            return True
        if low in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"{path}: expected true or false, got {text!r}")
    if hint is int:
        try:
            return int(text.strip())
        except ValueError:
            raise ConfigError(f"{path}: expected a whole number, got {text!r}") from None
    if hint is float:
        try:
            return float(text.strip())
        except ValueError:
            raise ConfigError(f"{path}: expected a number, got {text!r}") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise ConfigError(f"{path}: expected JSON for this field, got {text!r}") from None
    return _check_type(value, hint, path)


def set_value(preset: Any, dotted: str, value: Any) -> None:
    """Set one field (value already typed, or text to parse); type-checked, not range-validated."""
    parent, key, hint = _walk(preset, dotted)
    value = parse_text(value, hint, dotted) if isinstance(value, str) and hint is not str else \
        _check_type(value, hint, dotted)
    if isinstance(parent, list):
        parent[key] = value
    else:
        setattr(parent, key, value)


def apply_overrides(preset: Any, overrides: list[str], check: typing.Callable) -> Any:
    """Apply CLI `key=value` overrides to a copy of a preset or a tool spec and check it with `check` (its
    validate), the same way as a file."""
    preset = copy.deepcopy(preset)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item}: expected key=value, e.g. training.learning_rate=2e-6")
        key, text = item.split("=", 1)
        set_value(preset, key.strip(), text)
    problems = check(preset)
    if problems:
        raise ConfigError(problems[0])
    return preset


def default_of(cls, name: str) -> Any:
    f = {f.name: f for f in fields(cls)}[name]
    return f.default_factory() if f.default is MISSING else f.default
