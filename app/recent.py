"""Built-in presets (presets/*.json), the recently used preset files (~/.config/seachange/recent.json) and each
tool tab's last spec (~/.config/seachange/last-TOOL.json)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from trainer.fields import ConfigError, atomic_write_text
from trainer.specs import spec_from_dict, spec_to_dict

PRESETS_DIR = Path(__file__).resolve().parent.parent / "presets"
DEFAULT_PRESET = PRESETS_DIR / "demo.json"
MAX_RECENT = 8


def config_dir() -> Path:
    """Where the window keeps its own settings; SEACHANGE_CONFIG_DIR overrides (tests use it)."""
    override = os.environ.get("SEACHANGE_CONFIG_DIR")
    if override:
        return Path(override)
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "seachange"


def builtin_presets(folder: Path = PRESETS_DIR) -> dict[str, Path]:
    """name -> path of each shipped preset, demo first; empty when the folder is missing."""
    if not folder.is_dir():
        return {}
    paths = sorted(folder.glob("*.json"), key=lambda p: (p.stem != "demo", p.stem))
    return {p.stem: p for p in paths}


def is_builtin(path: str | Path, folder: Path = PRESETS_DIR) -> bool:
    try:
        return Path(path).resolve().parent == folder.resolve()
    except OSError:
        return False


class RecentFiles:
    """The last few preset files the user loaded or saved, newest first; survives a broken file."""

    def __init__(self, path: Path | None = None):
        self.path = Path(path) if path else config_dir() / "recent.json"
        self.paths: list[str] = self._read()

    def _read(self) -> list[str]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return []
        items = data.get("recent", []) if isinstance(data, dict) else []
        return [p for p in items if isinstance(p, str)][:MAX_RECENT]

    def add(self, path: str | Path) -> None:
        path = str(Path(path).expanduser().resolve())
        self.paths = [path] + [p for p in self.paths if p != path]
        self.paths = self.paths[:MAX_RECENT]
        try:
            atomic_write_text(self.path, json.dumps({"recent": self.paths}, indent=2) + "\n")
        except OSError:
            pass  # a read-only home must not break loading or saving a preset

    def existing(self) -> list[str]:
        return [p for p in self.paths if Path(p).is_file()]


class LastSpec:
    """A tool tab's settings as the user left them, kept in a file (beside the recent-presets file) so that they
    come back when the window opens again: the spec as a spec file holds it, and the fields the tab filled in from
    the preset ({field: value}; while they keep that value they go on following the preset)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._written: str | None = None

    def read(self, spec_cls: type) -> tuple[Any, dict[str, str]] | None:
        """(spec, prefilled) from the file; None when it is missing, broken, invalid or of another tool."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            spec = spec_from_dict(data["spec"])
        except (OSError, ValueError, KeyError, TypeError, ConfigError):
            return None
        if not isinstance(spec, spec_cls):
            return None
        prefilled = data.get("prefilled")
        prefilled = {k: v for k, v in prefilled.items() if isinstance(v, str)} if isinstance(prefilled, dict) else {}
        return spec, prefilled

    def write(self, spec: Any, prefilled: dict[str, str]) -> None:
        """Keep `spec` (only a valid one: the file must load again); a file that cannot be written is skipped."""
        text = json.dumps({"spec": spec_to_dict(spec), "prefilled": prefilled}, indent=2) + "\n"
        if text == self._written:
            return
        try:
            atomic_write_text(self.path, text)
        except OSError:
            return  # a read-only home must not break the tab
        self._written = text
