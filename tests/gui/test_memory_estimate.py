"""The training tab's GPU-memory line with the real `python -m trainer memory` child on the tiny model: an estimate
after load, a new one after an edit (and the cached one at once when the edit is undone), a preset problem's
reason instead of a number, and "Fit to my GPU" applying the engine's changes through the form."""
from __future__ import annotations

import re

import pytest
from gui_helpers import type_into
from tiny_presets import make_preset

from app.form import read
from app.memory_line import CARD_SIZES

RESOLUTION = "256"  # big enough that the tiny model's activations, and so its estimate, grow with the batch


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """The presets' folders: one for the module, so that a test finds the estimates an earlier one made."""
    return tmp_path_factory.mktemp("memory")


def show_tiny(window, folder, tiny_model_dir, color_concept, batch_size: int):
    """Show a tiny-model preset (CPU, `batch_size`) in the training tab; returns its memory line."""
    preset = make_preset(folder, tiny_model_dir, color_concept,
                         training={"batch_size": batch_size, "resolution": RESOLUTION})
    window.set_preset(preset, None)
    window.tabview.set("training")
    window.update()
    return window.tabs["training"].memory_line


def estimated(window, line, wait_for) -> float:
    """Wait until the line shows an estimate; returns it in GiB."""
    wait_for(window, lambda: line.job is None and "about" in line.label.cget("text"), "an estimate", 60)
    number, unit = re.search(r"about ([\d.]+) (GiB|MiB)", line.label.cget("text")).groups()
    return float(number) / (1024 if unit == "MiB" else 1)


def test_the_line_estimates_after_load_and_after_an_edit(window, folder, tiny_model_dir, color_concept, wait_for):
    line = show_tiny(window, folder, tiny_model_dir, color_concept, batch_size=2)
    wait_for(window, lambda: line.job is not None, "showing the tab to start an estimate", 10)
    assert line.label.cget("text") == "GPU memory: estimating…"
    small = estimated(window, line, wait_for)
    assert small > 0
    shown = line.label.cget("text")

    type_into(window.form.widget_for("training.batch_size"), "8")
    window.update()
    assert line._after is not None, "an edit does not schedule an estimate"
    wait_for(window, lambda: line.job is not None, "the estimate of batch size 8 to start", 10)
    assert line.label.cget("text") == "GPU memory: estimating…"
    assert estimated(window, line, wait_for) > small

    type_into(window.form.widget_for("training.batch_size"), "2")  # back: the cached estimate, at once
    window.update()
    assert line.job is None and line._after is None and line.label.cget("text") == shown


def test_a_preset_problem_shows_its_reason_instead(window, tmp_path, tiny_model_dir, color_concept, wait_for):
    line = show_tiny(window, tmp_path, tiny_model_dir, color_concept, batch_size=2)
    type_into(window.form.widget_for("training.learning_rate"), "fast")
    line.refresh()  # no need to wait for the debounce
    text = line.label.cget("text")
    assert line.job is None, "an estimate started on a preset with a problem"
    assert text.startswith("GPU memory: not estimated") and "Learning rate" in text, text

    # a problem only the engine finds (a model folder that holds no model): its one-line reason, no traceback
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    type_into(window.form.widget_for("training.learning_rate"), "0.001")
    type_into(window.form.widget_for("model.base_model"), str(empty))
    line.refresh()
    assert line.job is not None
    wait_for(window, lambda: line.job is None, "the engine's answer", 60)
    text = line.label.cget("text")
    assert text.startswith("GPU memory: could not estimate: ") and "\n" not in text, text
    assert "Traceback" not in text and ("base_model" in text or str(empty) in text), text

    # no model chosen yet: the engine sizes SD 1.5, and the line says so
    type_into(window.form.widget_for("model.base_model"), "")
    line.refresh()
    assert line.job is not None, "no estimate started without a base model"
    line.stop_job()
    line.show({"total_gib": 2.5})
    assert line.label.cget("text").startswith("GPU memory (SD 1.5, no base model chosen yet): about 2.5 GiB")


def test_fit_to_my_gpu_applies_the_engines_changes(window, folder, tiny_model_dir, color_concept, wait_for):
    line = show_tiny(window, folder, tiny_model_dir, color_concept, batch_size=2)  # the first test's presets
    line.refresh()
    two = estimated(window, line, wait_for)
    show_tiny(window, folder, tiny_model_dir, color_concept, batch_size=8)  # loaded: no unsaved change yet
    line.refresh()
    eight = estimated(window, line, wait_for)
    assert eight > two
    from trainer.tools.vram import HEADROOM_GIB, HEADROOM_SHARE, usable_gib
    card = ((two + eight) / 2 + HEADROOM_GIB) / (1 - HEADROOM_SHARE)  # usable: batch 8 does not fit, batch 2 does

    line.detected = None  # no card here and none typed: Fit asks for its size first (here: cancelled)
    type_into(line.vram_entry, "")
    line.vram_changed()
    window.dialogs.choose_answers = [None]
    line.fit_button.invoke()
    (_, _, options), = window.dialogs.chosen()
    assert options == [f"{size} GiB" for size in CARD_SIZES] and line.job is None
    window.dialogs.__init__()

    type_into(line.vram_entry, f"{card:.6f}")
    line.vram_changed()
    assert line.label.cget("text").endswith("(does not fit)")

    line.fit_button.invoke()  # Fit, then Cancel: the search is called off, nothing is asked
    assert line.job is not None and line.fit_button.cget("text") == "Cancel"
    line.fit_button.invoke()
    assert line.job is None and line.fit_button.cget("text") == "Fit to my GPU" and not window.dialogs.chosen()

    window.dialogs.choose_answers = ["Apply"]
    before = dict(vars(window.preset.training))
    assert not window.dirty
    line.fit_button.invoke()
    assert line.fit_button.cget("text") == "Cancel"  # a search can be called off while it runs
    wait_for(window, lambda: line.job is None, "the Fit's answer", 60)
    assert line.fit_button.cget("text") == "Fit to my GPU"
    (title, message, options), = window.dialogs.chosen()
    assert title == "Fit to my GPU" and options == ["Apply"], message
    changes = line.proposal["changes"]
    assert all(window.form.meta_of(path)["label"] in message for path in changes), message  # in the form's words
    assert changes and all(read(window.preset, path) == value for path, value in changes.items())
    for path, value in changes.items():  # the widgets show the new values: the change went through the form
        binding = window.form.bindings_for(path)[0]
        assert binding.widget.get_raw() == (value if isinstance(value, bool) else str(value)), path
    assert dict(vars(window.preset.training)) != before and window.dirty
    window.update()
    assert line.label.cget("text").endswith("(fits)"), line.label.cget("text")
    assert estimated(window, line, wait_for) <= usable_gib(card)
    type_into(line.vram_entry, "")  # the entry is kept in the settings the other test modules' windows read
    line.vram_changed()
