"""The queue tab's sweep dialog: a queue entry's sweep as lines of `dotted.path = value, value`, checked by the
engine (trainer.tools.run_queue.expand_entry) before the entry takes it."""
from __future__ import annotations

import copy
import json
from typing import Any, Callable

import customtkinter as ctk

from app.dialogs import ModalDialog
from app.form import read
from app.widgets import ERROR, MUTED
from trainer.config import Preset
from trainer.fields import ConfigError, set_value
from trainer.tools.run_queue import value_text

EXAMPLE = "training.learning_rate = 1e-6, 2e-6"


def sweep_text(sweep: dict[str, list]) -> str:
    """A sweep as the dialog shows it, a line per dotted path: `path = v1, v2` (values as run names write them),
    or `path = [JSON list]` when a value would not read back from that (a text with a comma, a list)."""
    lines = []
    for key, values in sweep.items():
        plain = all(isinstance(v, (bool, int, float)) or (isinstance(v, str) and v.strip() == v and v and
                                                           not any(c in v for c in ",[")) for v in values)
        shown = ", ".join(value_text(v) for v in values) if plain else json.dumps(values)
        lines.append(f"{key} = {shown}")
    return "\n".join(lines)


def typed_value(text: str, key: str, preset: Preset | None) -> Any:
    """One value as typed, in the field's type: the engine's own parsing (trainer.fields.set_value, as --set reads
    text) on a copy of `preset`; where that fails (an unknown path, a value of the wrong type) JSON (1e-6, true,
    "text") or else the text itself, so that the engine's check names the mistake."""
    if preset is not None:
        try:
            set_value(preset, key, text)
            return read(preset, key)
        except (ConfigError, ValueError, TypeError, AttributeError, IndexError, KeyError):
            pass
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_sweep(text: str, preset: Preset | None = None) -> dict[str, list]:
    """The dialog's text as a sweep: per non-empty line `dotted.path = v1, v2, ...` (or `= [JSON list]`), values
    typed as the field at that path wants them (typed_value; `preset` is the entry's preset, None when it cannot
    be read). An empty text is no sweep. Raises ValueError naming the line for text that is no sweep at all."""
    sweep: dict[str, list] = {}
    scratch = copy.deepcopy(preset)
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        key, sep, values = (part.strip() for part in line.partition("="))
        if not sep or not key or not values:
            raise ValueError(f"line {number}: write a dotted path, = and its values, e.g. {EXAMPLE}")
        if key in sweep:
            raise ValueError(f"line {number}: {key} is swept on an earlier line already; give all its values there")
        if values.startswith("["):
            try:
                parsed = json.loads(values)
            except ValueError as e:
                raise ValueError(f"line {number}: {values} is not a JSON list ({e})") from None
            sweep[key] = parsed if isinstance(parsed, list) else [parsed]
        else:
            parts = [part.strip() for part in values.split(",")]
            if not all(parts):
                raise ValueError(f"line {number}: an empty value between commas")
            sweep[key] = [typed_value(part, key, scratch) for part in parts]
    return sweep


class SweepDialog(ModalDialog):
    """Edit a queue entry's sweep. `check(sweep)` (the tab's) takes the parsed sweep and returns None when the
    entry took it, or the engine's refusal, which the dialog then shows in red and stays open; `preset` types the
    values (parse_sweep). OK applies, Cancel and Escape leave the entry as it was; `result` is the sweep taken."""

    def __init__(self, parent, entry_label: str, sweep: dict[str, list], preset: Preset | None,
                 check: Callable[[dict[str, list]], str | None]):
        super().__init__(parent, f"Sweep {entry_label}")
        self.preset, self.check = preset, check
        self.resizable(False, False)
        ctk.CTkLabel(self, text=f"Sweep of {entry_label}", font=ctk.CTkFont(size=15, weight="bold"),
                     anchor="w").pack(fill="x", padx=20, pady=(16, 4))
        ctk.CTkLabel(self, text=f"One setting per line, its dotted path, = and the values to try, separated by "
                                f"commas:\n{EXAMPLE}\ntraining.epochs = 5, 10\nOne run per combination; an empty "
                                "box runs the entry once.", text_color=MUTED, anchor="w", justify="left").pack(
            fill="x", padx=20, pady=(0, 6))
        self.text = ctk.CTkTextbox(self, width=560, height=120, wrap="none")
        self.text.pack(fill="x", padx=20)
        self.text.insert("1.0", sweep_text(sweep))
        self.error = ctk.CTkLabel(self, text="", text_color=ERROR, anchor="w", justify="left", wraplength=560)
        self.error.pack(fill="x", padx=20, pady=(6, 4))
        row = ctk.CTkFrame(self, fg_color="transparent")
        row.pack(fill="x", padx=20, pady=(0, 16))
        self.ok_button = ctk.CTkButton(row, text="OK", width=90, command=self.apply)
        self.ok_button.pack(side="left")
        self.cancel_button = ctk.CTkButton(row, text="Cancel", width=90, fg_color="transparent", border_width=1,
                                           command=lambda: self.answer(None))
        self.cancel_button.pack(side="right")
        self.after(20, self.text.focus_set)

    def set_text(self, text: str) -> None:
        """Replace the lines shown (as typing them would)."""
        self.text.delete("1.0", "end")
        self.text.insert("1.0", text)

    def apply(self) -> bool:
        """Parse and hand the sweep to `check`; close when it was taken (True), else say why and stay open."""
        try:
            sweep = parse_sweep(self.text.get("1.0", "end-1c"), self.preset)
        except ValueError as e:
            self.error.configure(text=str(e))
            return False
        refusal = self.check(sweep)
        if refusal:
            self.error.configure(text=f"Not taken: {refusal}")
            return False
        self.answer(sweep)
        return True
