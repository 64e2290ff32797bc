"""The window builds every tab, shows every preset field with the right widget, and preset → widgets → preset."""
from __future__ import annotations

import copy
import typing
from dataclasses import fields, is_dataclass

import pytest

from app.form import PATH_KINDS, read
from app.recent import builtin_presets
from app.widgets import ChoiceField, MultilineField, NumberField, PathField, SwitchField, TextField
from trainer.config import (SECTIONS, ConceptConfig, Preset, SamplePrompt, load_preset, preset_to_dict)

TABS = {"general", "model", "concepts", "training", "sampling", "backup", "run", "queue", "tools", "results"}


def scalar_paths(obj, prefix: str):
    """Every scalar field path below obj; lists of dataclasses are walked at each index. A field of any other
    kind fails the test (it would otherwise go unchecked)."""
    hints = typing.get_type_hints(type(obj))
    for f in fields(obj):
        value, path = getattr(obj, f.name), f"{prefix}.{f.name}" if prefix else f.name
        if is_dataclass(value):
            yield from scalar_paths(value, path)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                yield from scalar_paths(item, f"{path}.{i}")
        else:
            assert hints[f.name] in (str, int, float, bool), f"{path}: a {hints[f.name]} field has no widget kind"
            yield path, hints[f.name], f.metadata


def expected_widget(hint, meta):
    if meta.get("choices"):
        return ChoiceField
    if hint is bool:
        return SwitchField
    if meta.get("kind") in PATH_KINDS:
        return PathField
    if hint in (int, float):
        return NumberField
    return MultilineField if meta.get("kind") == "text" else TextField


def test_window_has_every_tab(window):
    assert set(window.tabs) == TABS
    for title in TABS:
        window.tabview.set(title)
        window.update()
        assert window.tabview.get() == title


def test_every_field_of_every_section_has_its_widget(window, rich_preset):
    preset = rich_preset
    window.set_preset(preset, None)
    concepts_tab = window.tabs["concepts"]
    seen_sections = set()
    for path, hint, meta in scalar_paths(preset, ""):
        section = path.split(".")[0]
        seen_sections.add(section)
        if section == "concepts":
            concepts_tab.select(int(path.split(".")[1]))
        bindings = window.form.bindings_for(path)
        assert bindings, f"{path} has no widget"
        widget = bindings[0].widget
        assert isinstance(widget, expected_widget(hint, meta)), (path, type(widget))
        labelled = next((b.labelled for b in bindings if b.labelled is not None), None)
        if labelled is not None:  # list rows (sample prompts) name the field in a header and the tooltip
            assert labelled.label.cget("text") == meta["label"]
            assert labelled.help_text == meta["help"]
        if meta.get("choices"):
            assert widget.cget("values") == list(meta["choices"])
    assert seen_sections == set(SECTIONS)


def test_backup_tab_is_built_from_the_dataclass(window):
    from app.form import hint_of
    for f in fields(hint_of("backup")):
        assert window.form.bindings_for(f"backup.{f.name}"), f"backup.{f.name} has no widget"


def _round_trip(window, preset: Preset) -> Preset:
    """Show `preset`, then build a fresh preset only from what the widgets show."""
    window.set_preset(preset, None)
    window.update()
    rebuilt = Preset()
    rebuilt.concepts = [ConceptConfig() for _ in preset.concepts]
    rebuilt.sampling.prompts = [SamplePrompt() for _ in preset.sampling.prompts]
    assert window.form.collect(rebuilt) == []
    for i in range(len(preset.concepts)):
        window.tabs["concepts"].select(i)
        assert window.form.collect(rebuilt) == []
    return rebuilt


@pytest.mark.parametrize("name", sorted(builtin_presets()) or ["(none shipped)"])
def test_builtin_preset_round_trips_through_the_widgets(window, name):
    presets = builtin_presets()
    if not presets:
        pytest.skip("presets/*.json not there yet")
    preset = load_preset(presets[name])
    rebuilt = _round_trip(window, copy.deepcopy(preset))
    assert preset_to_dict(rebuilt) == preset_to_dict(preset)
    assert not window.dirty


def test_rich_preset_round_trips_through_the_widgets(window, rich_preset):
    preset = rich_preset
    rebuilt = _round_trip(window, copy.deepcopy(preset))
    assert preset_to_dict(rebuilt) == preset_to_dict(preset)
    assert preset_to_dict(window.preset) == preset_to_dict(preset)


def test_loading_fills_every_widget(window, rich_preset):
    preset = rich_preset
    window.set_preset(preset, None)
    for binding in window.form.bindings:
        if binding.path is not None:
            shown = binding.widget.get_raw()
            value = read(preset, binding.path)
            assert shown == (value if isinstance(value, bool) else
                             repr(value) if isinstance(value, float) else str(value)), binding.path
