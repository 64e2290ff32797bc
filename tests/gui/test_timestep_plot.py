"""The training tab's timestep plot: below the timestep fields of "Noise and loss", it shows the distribution they
give (the same exact probabilities the engine's draws are tested against), follows each edit and each preset
load, says why when the fields give none, and is drawn in the loss chart's dark colours."""
from __future__ import annotations

import pytest
from gui_helpers import screenshot, type_into

from app.run_widgets import CHART_BG, SMOOTH
from app.timestep_plot import TimestepPlot, timestep_probabilities
from trainer.config import validate


def plot(window) -> TimestepPlot:
    return window.tabs["training"].timestep_plot


def field(window, path: str):
    return window.form.widget_for(path)


def peak(probabilities: list[float]) -> int:
    return max(range(len(probabilities)), key=probabilities.__getitem__)


def test_the_plot_sits_below_the_timestep_fields(window):
    window.tabview.set("training")
    window.update()
    shown = plot(window)
    labelled = next(b.labelled for b in window.form.bindings_for("training.max_timestep") if b.labelled)
    assert shown.master is labelled.label.master  # the "Noise and loss" group
    assert shown.grid_info()["row"] > labelled.label.grid_info()["row"]
    assert shown.winfo_ismapped() and shown.winfo_width() > 150
    assert shown.cget("bg") == CHART_BG


def test_the_plot_follows_each_edit(window):
    window.tabview.set("training")
    window.update()
    shown = plot(window)
    assert window.preset.training.timestep_distribution == "uniform"
    assert shown.probabilities == pytest.approx([1 / 1000] * 1000)
    assert shown.message.startswith("uniform") and "mean 500" in shown.message

    field(window, "training.timestep_distribution").set("logit_normal")
    window.update()
    assert shown.probabilities == pytest.approx(timestep_probabilities("logit_normal", 0.0, 1.0, 0, 1000))
    assert 480 <= peak(shown.probabilities) <= 520 and shown.message.startswith("logit-normal(0, 1)")

    type_into(field(window, "training.timestep_logit_mean"), "1.5")  # as typed: each keystroke redraws
    window.update()
    assert peak(shown.probabilities) > 700 and "logit-normal(1.5, 1)" in shown.message

    type_into(field(window, "training.timestep_logit_std"), "0.5")
    type_into(field(window, "training.min_timestep"), "100")
    type_into(field(window, "training.max_timestep"), "600")
    window.update()
    expected = timestep_probabilities("logit_normal", 1.5, 0.5, 100, 600)
    assert shown.probabilities == pytest.approx(expected)
    assert all(p == 0 for p in shown.probabilities[:100] + shown.probabilities[600:])


def test_fields_without_a_distribution_say_why(window):
    window.tabview.set("training")
    type_into(field(window, "training.min_timestep"), "700")
    type_into(field(window, "training.max_timestep"), "700")
    window.validate_now()
    window.update()
    shown = plot(window)
    assert shown.probabilities == [] and shown.message.startswith("No distribution: the min timestep (700)")
    assert any(p.startswith("training.max_timestep:") for p in window.problems)  # and the field is red
    type_into(field(window, "training.max_timestep"), "701")
    window.update()
    assert shown.probabilities[700] == 1.0


def test_a_loaded_preset_is_plotted(window):
    preset = window.form.preset.__class__()
    preset.training.timestep_distribution = "logit_normal"
    preset.training.timestep_logit_mean = -1.0
    preset.training.timestep_logit_std = 0.7
    assert validate(preset) == []
    window.set_preset(preset, None)
    window.update()
    assert plot(window).probabilities == pytest.approx(timestep_probabilities("logit_normal", -1.0, 0.7))
    assert peak(plot(window).probabilities) < 300


def test_the_curve_is_on_screen(window, pump, screenshots):
    window.tabview.set("training")
    field(window, "training.timestep_distribution").set("logit_normal")
    shown = plot(window)
    window.update()
    scroll = shown.master
    while not hasattr(scroll, "_parent_canvas"):  # the tab's scroll area (a CTkScrollableFrame)
        scroll = scroll.master
    top = (shown.winfo_rooty() - scroll.winfo_rooty()) / scroll.winfo_height()
    scroll._parent_canvas.yview_moveto(max(0.0, top - 0.3))  # the group may lie below the fold
    area = window.tabs["training"].frame
    shot = screenshot(window, pump, screenshots, "training_timestep_plot")
    assert shot.inside(shown, area)
    assert shot.count(shown, SMOOTH, tolerance=30) > 100  # the curve
    assert shot.count(shown, CHART_BG, tolerance=6) > 0.3 * shown.winfo_width() * shown.winfo_height()
