"""Binds widgets to dotted preset paths; labels, tooltips, ranges and choices all come from the field metadata."""
from __future__ import annotations

import functools
import math
import typing
from dataclasses import is_dataclass
from typing import Any, Callable

from app.widgets import (ChoiceField, LabelledField, MultilineField, NumberField, PathField, SwitchField,
                         TextField, Tooltip, bury)
from trainer.config import ConfigError, Preset, field_meta, parse_text, set_value, validate

PATH_KINDS = ("path", "dir", "file")


def _template(dotted: str) -> str:
    return ".".join("0" if part.isdigit() else part for part in dotted.split("."))


@functools.lru_cache(maxsize=None)
def _hint(template: str) -> Any:
    hint: Any = Preset
    for part in template.split("."):
        if typing.get_origin(hint) is list:
            hint = typing.get_args(hint)[0]
        if part != "0":
            hint = typing.get_type_hints(hint)[part]
    return hint


def hint_of(dotted: str) -> Any:
    """The type hint of the field at a dotted path (list indices allowed and ignored); cached."""
    return _hint(_template(dotted))


@functools.lru_cache(maxsize=None)
def _meta(template: str) -> dict:
    return field_meta(template)


def meta_of(dotted: str) -> dict:
    """trainer.config.field_meta, cached (typing.get_type_hints is slow and a form asks often)."""
    return _meta(_template(dotted))


def read(obj: Any, dotted: str) -> Any:
    """The value at a dotted path; raises ConfigError when a list index is out of range."""
    for part in dotted.split("."):
        if isinstance(obj, list):
            if int(part) >= len(obj):
                raise ConfigError(f"{dotted}: no item {part}")
            obj = obj[int(part)]
        else:
            obj = getattr(obj, part)
    return obj


def item_type(hint: Any) -> Any:
    """The item dataclass of a list-of-dataclasses hint, else None."""
    if typing.get_origin(hint) is list:
        (item,) = typing.get_args(hint)
        return item if is_dataclass(item) else None
    return None


def is_scalar(hint: Any) -> bool:
    return hint in (str, int, float, bool)


def split_problem(problem: str) -> tuple[str, str]:
    """'training.learning_rate: reason' -> ('training.learning_rate', 'reason')."""
    path, sep, reason = problem.partition(": ")
    return (path, reason) if sep else ("", problem)


def describe_problem(problem: str, preset: Preset) -> str:
    """A problem in words: 'Training › Learning rate: expected a number, got 'abc''."""
    path, reason = split_problem(problem)
    if not path:
        return reason
    parts, words = path.split("."), []
    try:
        for i, part in enumerate(parts):
            here = ".".join(parts[: i + 1])
            if part.isdigit():
                item = read(preset, here) if i == 1 else None
                name = getattr(item, "name", "")
                words[-1] = f"{words[-1].rstrip('s')} {int(part) + 1}" + (f" “{name}”" if name else "")
            elif i == 0:
                words.append(part.capitalize())
            else:
                words.append(meta_of(here).get("label") or part)
    except (ConfigError, KeyError, IndexError):
        return problem
    return f"{' › '.join(words)}: {reason}"


class Binding:
    """One widget showing one preset field. `path` is None while detached (e.g. no concept selected)."""

    def __init__(self, path: str | None, hint: Any, meta: dict, widget, labelled: LabelledField | None):
        self.path, self.hint, self.meta, self.widget, self.labelled = path, hint, meta, widget, labelled
        self.trace: str | None = None
        self.reason: str | None = None

    def set_error(self, reason: str | None) -> None:
        (self.labelled or self.widget).set_error(reason)

    def parse(self) -> Any:
        """The widget's value in the field's type; raises ConfigError (message: 'path: reason')."""
        raw = self.widget.get_raw()
        if self.hint is bool:
            return bool(raw)
        if self.hint is str:
            return raw
        value = parse_text(raw, self.hint, self.path or "value")
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{self.path}: expected a finite number, got {raw!r}")
        return value


class Form:
    """The window's preset and every widget bound to it. Edits land in the preset at once; text that does
    not parse stays in `parse_errors` (the preset keeps its last good value) until it is fixed."""

    def __init__(self, preset: Preset, on_change: Callable[[str], None],
                 browse: Callable[[str, str, str], str | None] | None = None):
        self.preset = preset
        self.on_change = on_change
        self.browse = browse or (lambda kind, path, current: None)
        self.bindings: list[Binding] = []
        self.parse_errors: dict[str, str] = {}
        self._silent = 0

    # ---- making widgets ------------------------------------------------------------------------------

    def make_widget(self, parent, path: str, compact: bool = False, width: int | None = None):
        """The right widget for the field at `path`: switch, option menu, path picker, number or text entry."""
        hint, meta = hint_of(path), meta_of(path)
        kind = meta.get("kind")
        if meta.get("choices"):
            longest = max(len(c) for c in meta["choices"])
            return ChoiceField(parent, meta["choices"], width=width or max(120 if compact else 170, 8 * longest + 44))
        if hint is bool:
            return SwitchField(parent)
        if kind in PATH_KINDS:
            name = path.rsplit(".", 1)[-1]
            return PathField(parent, lambda current: self.browse(kind, name, current), width=width or 250)
        if hint in (int, float):
            return NumberField(parent, width=width or (72 if compact else 110))
        if kind == "text" and not compact:
            return MultilineField(parent, width=width or 320)
        return TextField(parent, width=width or (200 if compact else 250))

    def field(self, group, path: str) -> Binding:
        """A labelled field in the next row of a Group (label and tooltip from the metadata)."""
        meta = meta_of(path)
        widget = self.make_widget(group, path)
        stretch = isinstance(widget, (PathField, TextField, MultilineField)) and not isinstance(widget, NumberField)
        labelled = LabelledField(group, group.take_row(), meta.get("label") or path, meta.get("help") or "",
                                 widget, stretch=stretch)
        return self._bind(path, widget, labelled)

    def bare(self, parent, path: str, width: int | None = None) -> Binding:
        """A compact widget without a label (list rows); its tooltip names the field and gives the help."""
        widget = self.make_widget(parent, path, compact=True, width=width)
        binding = self._bind(path, widget, None)
        Tooltip(widget, lambda: self._bare_tip(binding))
        return binding

    def _bare_tip(self, binding: Binding) -> str:
        text = f"{binding.meta.get('label')}: {binding.meta.get('help')}"
        return text + (f"\n\n⚠ {binding.reason}" if binding.reason else "")

    def _bind(self, path: str, widget, labelled) -> Binding:
        binding = Binding(path, hint_of(path), meta_of(path), widget, labelled)
        self.bindings.append(binding)
        self._show(binding)
        binding.trace = widget.var.trace_add("write", lambda *_: self._edited(binding))
        return binding

    # ---- finding, re-pointing, dropping ----------------------------------------------------------------

    def bindings_for(self, path: str) -> list[Binding]:
        return [b for b in self.bindings if b.path == path]

    def widget_for(self, path: str):
        """The (first) widget showing `path`; tests drive it with insert()/set()/toggle()."""
        found = self.bindings_for(path)
        if not found:
            raise KeyError(f"no widget shows {path}")
        return found[0].widget

    def retarget(self, binding: Binding, path: str | None) -> None:
        """Point a widget at another field (the concept editor); text that did not parse is dropped."""
        if binding.path is not None:
            self.parse_errors.pop(binding.path, None)
        binding.path = path
        self._show(binding)

    def drop(self, bindings: list[Binding]) -> None:
        """Forget these bindings (their widgets are being destroyed)."""
        gone = {id(b) for b in bindings}
        for b in bindings:
            b.widget.var.trace_remove("write", b.trace)
            bury(b)
        self.bindings = [b for b in self.bindings if id(b) not in gone]

    def unbind(self, prefix: str) -> None:
        """Forget bindings under `prefix` (their widgets are being destroyed)."""
        keep = []
        for b in self.bindings:
            if b.path is not None and (b.path == prefix or b.path.startswith(prefix + ".")):
                b.widget.var.trace_remove("write", b.trace)
                bury(b)
            else:
                keep.append(b)
        self.bindings = keep
        self.parse_errors = {p: e for p, e in self.parse_errors.items()
                             if not (p == prefix or p.startswith(prefix + "."))}

    # ---- preset <-> widgets ------------------------------------------------------------------------------

    def load(self, preset: Preset) -> None:
        """Show a new preset in every widget."""
        self.preset = preset
        self.parse_errors.clear()
        self.refresh()

    def refresh(self, prefix: str = "") -> None:
        for b in self.bindings:
            if b.path is not None and b.path.startswith(prefix):
                self._show(b)

    def _show(self, binding: Binding) -> None:
        if binding.path is None:
            return
        try:
            value = read(self.preset, binding.path)
        except ConfigError:
            return
        self._silent += 1
        try:
            binding.widget.show(value)
        finally:
            self._silent -= 1
        self.parse_errors.pop(binding.path, None)

    def _edited(self, binding: Binding) -> None:
        if self._silent or binding.path is None:
            return
        path = binding.path
        try:
            set_value(self.preset, path, binding.parse())
            self.parse_errors.pop(path, None)
        except ConfigError as e:
            self.parse_errors[path] = str(e)
        for other in self.bindings_for(path):
            if other is not binding and path not in self.parse_errors:
                self._show(other)
        self.on_change(path)

    def collect(self, into: Preset) -> list[str]:
        """Write what every bound widget shows into `into`; returns the texts that do not parse."""
        errors = []
        for b in self.bindings:
            if b.path is None:
                continue
            try:
                set_value(into, b.path, b.parse())
            except ConfigError as e:
                errors.append(str(e))
        return errors

    # ---- validation -----------------------------------------------------------------------------------

    def problems(self, check_paths: bool = True) -> list[str]:
        """Unparsed text first, then everything validate() finds (missing paths too when check_paths)."""
        return list(self.parse_errors.values()) + validate(self.preset, check_paths=check_paths)

    def mark(self, problems: list[str]) -> None:
        """Show each problem on the widget of its path (red border, reason line, tooltip)."""
        reasons: dict[str, str] = {}
        for problem in problems:
            path, reason = split_problem(problem)
            reasons.setdefault(path, reason)
        for b in self.bindings:
            reason = reasons.get(b.path) if b.path else None
            if reason != b.reason:  # only touch widgets whose state changes: a CTk redraw is not free
                b.reason = reason
                b.set_error(reason)

