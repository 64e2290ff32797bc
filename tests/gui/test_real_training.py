"""Real short trainings of the tiny demo model, started from the window: completed, with samples, twice (the
second starts over: the first run's model and samples are moved aside, not overwritten)."""
from __future__ import annotations

import importlib.util
import time

import pytest

from app.recent import DEFAULT_PRESET
from trainer.config import load_preset
from trainer.fields import set_value


@pytest.mark.skipif(importlib.util.find_spec("trainer.train.loop") is None, reason="trainer/train/loop.py is not there yet")
@pytest.mark.skipif(not DEFAULT_PRESET.exists(), reason="presets/demo.json is not there yet")
def test_window_trains_the_demo_and_shows_samples(make_window, tmp_path):
    from app.window import default_session_factory
    preset = load_preset(DEFAULT_PRESET)
    for key, value in {  # like `--set key=value` on the command line
        "general.demo_dir": str(tmp_path / "demo"), "model.base_model": str(tmp_path / "demo" / "model"),
        "concepts.0.path": str(tmp_path / "demo" / "images"), "general.workspace_dir": str(tmp_path / "ws"),
        "general.cache_dir": str(tmp_path / "ws" / "cache"), "general.tensorboard": "false",
        "model.output_path": str(tmp_path / "ws" / "model.safetensors"), "training.max_steps": "4",
        "training.batch_size": "2", "sampling.every": "2", "sampling.unit": "steps",
        "sampling.before_training": "false",
    }.items():
        set_value(preset, key, value)
    for prompt in preset.sampling.prompts:
        prompt.steps = 2
    window = make_window(preset=preset, session_factory=default_session_factory, lazy=False)
    finished = run_to_the_end(window)
    assert finished.outcome == "completed", finished.message
    assert "completed" in window.bottom.message.cget("text")
    gallery = window.run_tab.gallery
    assert gallery.samples and gallery.shown
    assert window.run_tab.chart.steps[-1] == 4
    assert window.bottom.start_button.cget("state") == "normal"

    # a second run in the same process (accelerate keeps process-wide state) also completes
    window.form.widget_for("training.max_steps").delete(0, "end")
    window.form.widget_for("training.max_steps").insert(0, "2")
    window.form.widget_for("sampling.unit").set("never")
    window.update()
    window.dialogs.choose_answers = ["Start over"]  # the first run's files are there: Start asks
    second = run_to_the_end(window)
    assert second.outcome == "completed", second.message
    assert window.run_tab.chart.steps[-1] == 2 and not window.run_tab.gallery.samples
    (_, _, options), = window.dialogs.chosen()
    assert options[-1] == "Start over"
    earlier = [p for p in (tmp_path / "ws" / "earlier").iterdir()]
    assert len(earlier) == 1 and (earlier[0] / "model.safetensors").is_file()  # the first model, kept
    assert len(list((earlier[0] / "samples").glob("*.png"))) >= 2
    assert (tmp_path / "ws" / "model.safetensors").is_file()


def run_to_the_end(window, limit_s: float = 600):
    """Start a run from the window and turn the Tk loop by hand until it finishes."""
    assert window.start(), window.problems
    deadline = time.monotonic() + limit_s
    while window.runner.running and time.monotonic() < deadline:
        window.update()
        time.sleep(0.01)
    assert not window.runner.running, f"the run did not finish within {limit_s} s"
    return window.runner.last_finished
