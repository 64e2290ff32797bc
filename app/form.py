"""Binds widgets to dotted paths of a dataclass tree (the preset, or a tool spec); labels, tooltips, ranges and
choices all come from the field metadata."""
from __future__ import annotations

import functools
import math
import re
import typing
from dataclasses import is_dataclass
from typing import Any, Callable

from app.widgets import (ChoiceField, LabelledField, MultilineField, NumberField, PathField, SwitchField,
                         TextField, Tooltip, bury)
from trainer.config import Preset, validate
from trainer.fields import ConfigError, field_meta, parse_text, set_value

PATH_KINDS = ("path", "dir", "file")


def _template(dotted: str) -> str:
    return ".".join("0" if part.isdigit() else part for part in dotted.split("."))


@functools.lru_cache(maxsize=None)
def _hint(template: str, root: type) -> Any:
    hint: Any = root
    for part in template.split("."):
        if typing.get_origin(hint) is list:
            hint = typing.get_args(hint)[0]
        if part != "0":
            hint = typing.get_type_hints(hint)[part]
    return hint


def hint_of(dotted: str, root: type = Preset) -> Any:
    """The type hint of the field at a dotted path below `root` (list indices allowed and ignored); cached."""
    return _hint(_template(dotted), root)


@functools.lru_cache(maxsize=None)
def _meta(template: str, root: type) -> dict:
    return field_meta(template, root)


def meta_of(dotted: str, root: type = Preset) -> dict:
    """trainer.fields.field_meta, cached (typing.get_type_hints is slow and a form asks often)."""
    return _meta(_template(dotted), root)


def scalar_list_item(hint: Any) -> Any:
    """str, int or float for a list-of-scalars hint (one field edited as text), else None."""
    if typing.get_origin(hint) is list:
        (item,) = typing.get_args(hint)
        return item if item in (str, int, float) else None
    return None


def as_text(value: Any, hint: Any) -> Any:
    """What a widget shows for a value: a list of strings one per line, a list of numbers comma-separated;
    scalars unchanged (the widget formats them)."""
    item = scalar_list_item(hint)
    if item is str:
        return "\n".join(value)
    if item is not None:
        return ", ".join(map(str, value))
    return value


def parse_list(raw: str, item: Any, path: str) -> list:
    """The text of a list-of-scalars field back into the list (blank lines or entries are dropped)."""
    if item is str:
        return [line.strip() for line in raw.splitlines() if line.strip()]
    values = []
    for part in (p for p in re.split(r"[,\s]+", raw.strip()) if p):
        try:
            values.append(item(part))
        except ValueError:
            kind = "whole numbers" if item is int else "numbers"
            raise ConfigError(f"{path}: expected {kind} separated by commas, got {part!r}") from None
    return values


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


def describe_problem(problem: str, preset: Any) -> str:
    """A problem in words: 'Training › Learning rate: expected a number, got 'abc''. `preset` is the tree the
    path starts at (the preset or a tool spec)."""
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
            else:  # a preset's sections have no label: their name is the tab's
                words.append(meta_of(here, type(preset)).get("label") or part.capitalize())
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
        item = scalar_list_item(self.hint)
        if item is not None:
            return parse_list(raw, item, self.path or "value")
        value = parse_text(raw, self.hint, self.path or "value")
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{self.path}: expected a finite number, got {raw!r}")
        return value


class Form:
    """A dataclass tree and every widget bound to it: the window's preset, or a tool tab's spec. Edits land in
    the tree at once; text that does not parse stays in `parse_errors` (the tree keeps its last good value)
    until it is fixed. `validator(tree, check_paths=...)` lists the tree's problems (default: the preset's)."""

    def __init__(self, preset: Any, on_change: Callable[[str], None],
                 browse: Callable[[str, str, str], str | None] | None = None,
                 validator: Callable[..., list[str]] | None = None):
        self.preset = preset  # the bound tree (named for the window's form, the first and biggest user)
        self.root = type(preset)
        self.validator = validator or validate
        self.on_change = on_change
        self.browse = browse or (lambda kind, path, current: None)
        self.bindings: list[Binding] = []
        self.parse_errors: dict[str, str] = {}
        self._silent = 0

    def hint_of(self, dotted: str) -> Any:
        return hint_of(dotted, self.root)

    def meta_of(self, dotted: str) -> dict:
        return meta_of(dotted, self.root)

    # ---- making widgets ------------------------------------------------------------------------------

    def make_widget(self, parent, path: str, compact: bool = False, width: int | None = None):
        """The right widget for the field at `path`: switch, option menu, path picker, number or text entry."""
        hint, meta = self.hint_of(path), self.meta_of(path)
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
        meta = self.meta_of(path)
        widget = self.make_widget(group, path)
        stretch = isinstance(widget, (PathField, TextField, MultilineField)) and not isinstance(widget, NumberField)
        labelled = LabelledField(group, group.take_row(), meta.get("label") or path, meta.get("help") or "",
                                 widget, stretch=stretch)
        return self._bind(path, widget, labelled)

    def bare(self, parent, path: str, width: int | None = None, multiline: bool = False) -> Binding:
        """A compact widget without a label (list rows); its tooltip names the field and gives the help.
        `multiline`: a text field as a box of wrapped lines (a long prompt)."""
        widget = (MultilineField(parent, width=width or 320) if multiline
                  else self.make_widget(parent, path, compact=True, width=width))
        binding = self._bind(path, widget, None)
        Tooltip(widget, lambda: self._bare_tip(binding))
        return binding

    def _bare_tip(self, binding: Binding) -> str:
        text = f"{binding.meta.get('label')}: {binding.meta.get('help')}"
        return text + (f"\n\n⚠ {binding.reason}" if binding.reason else "")

    def _bind(self, path: str, widget, labelled) -> Binding:
        binding = Binding(path, self.hint_of(path), self.meta_of(path), widget, labelled)
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

    def load(self, preset: Any) -> None:
        """Show a new tree (of the same class) in every widget."""
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
            binding.widget.show(as_text(value, binding.hint))
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

    def collect(self, into: Any) -> list[str]:
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
        return list(self.parse_errors.values()) + self.validator(self.preset, check_paths=check_paths)

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

