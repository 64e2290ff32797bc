"""Status the user can trust: the problem line, messages that go with their cause, a smooth time left with its
clock time, lines that never move the form, disabled buttons that look disabled, the demo build's progress and
the tool tabs' settings kept across a relaunch."""
from __future__ import annotations

import datetime
import random

import pytest
from gui_helpers import screenshot, type_into

from app.bottom_bar import DISABLED, format_eta
from app.widgets import ERROR
from trainer import events as ev


@pytest.fixture(autouse=True)
def nothing_left_running(shared_window, pump):
    """Each test ends with the shared window's (fake) run finished."""
    yield
    if shared_window.runner.running:
        shared_window.runner.session.finish("stopped")
        pump(shared_window)


def test_a_started_run_is_no_reason_not_to_start(window, sessions, pump):
    bottom = window.bottom
    assert window.start()
    pump(window)
    assert bottom.problem.cget("text") == "" and bottom.start_button.cget("text") == "Stop"
    type_into(window.form.widget_for("training.epochs"), "many")  # a bad edit during the run: for the next one
    pump(window)
    assert bottom.problem.cget("text").startswith("Before the next run: Training › Epochs")
    sessions[-1].finish("completed", step=20)
    pump(window)
    assert bottom.problem.cget("text").startswith("Can't start: Training › Epochs")
    type_into(window.form.widget_for("training.epochs"), "2")
    pump(window)
    assert bottom.problem.cget("text") == ""


def test_not_saved_goes_once_the_value_is_fixed(window, tmp_path, pump):
    message = window.bottom.message
    type_into(window.form.widget_for("training.epochs"), "many")
    window.update()
    assert not window.save_to(tmp_path / "preset.json")
    assert message.cget("text").startswith("Not saved: Training › Epochs")
    type_into(window.form.widget_for("training.learning_rate"), "0.0002")  # another field: the cause remains
    pump(window)
    assert message.cget("text").startswith("Not saved: Training › Epochs")
    type_into(window.form.widget_for("training.epochs"), "3")
    pump(window)
    assert message.cget("text") == ""
    assert window.save_to(tmp_path / "preset.json") and message.cget("text").startswith("Saved ")
    type_into(window.form.widget_for("training.epochs"), "4")  # an edit: "Saved" is past
    window.update()
    assert message.cget("text") == ""


def test_a_failed_run_is_said_until_the_next_edit_or_start(window, sessions, pump):
    message = window.bottom.message
    for clear in ("edit", "start"):
        assert window.start()
        sessions[-1].finish("failed", "Out of GPU memory: try a smaller batch size.")
        pump(window)
        assert message.cget("text").startswith("Training failed: Out of GPU memory")
        window.tabview.set("training")  # looking around is not an edit
        window.validate_now()
        assert message.cget("text").startswith("Training failed")
        if clear == "edit":
            type_into(window.form.widget_for("training.batch_size"), "2")
            window.update()
            assert message.cget("text") == ""
        else:
            assert window.start() and message.cget("text") == ""
            sessions[-1].finish("stopped", step=1)
            pump(window)


def test_the_time_left_says_so_and_when_the_run_ends():
    now = datetime.datetime(2024, 5, 6, 13, 52, 0)
    assert format_eta(754, now) == "12:34 left · done ≈ 14:05"
    assert format_eta(3 * 3600 + 5, now) == "3:00:05 left · done ≈ 16:52"
    assert format_eta(12 * 3600, now) == "12:00:00 left · done ≈ Tue 01:52"  # another day: its weekday
    assert format_eta(float("inf"), now) == format_eta(None, now) == "time left –"


def test_the_time_left_is_smooth_over_the_run(window, sessions, pump):
    """Steps of 0.5 to 1.5 s, a 30 s first step (compiling) and a 20 s sample every 50 steps: from a quarter into
    the run the time left is near the truth and moves steadily down, where the steps left over the speed of
    the last 10 s jump about; the bottom bar shows it as time left with the clock time."""
    from trainer.train.progress import LossTracker, StepLoss
    clock, rng, emitted, ended_at = [0.0], random.Random(0), [], []
    total = 400
    tracker = LossTracker(total, 1, 0, False, emitted.append, lambda *a: None, clock=lambda: clock[0])
    tracker.start()
    for step in range(1, total + 1):
        clock[0] += 30.0 if step == 1 else rng.uniform(0.5, 1.5)
        if step % 50 == 0:
            clock[0] += 20.0
        tracker.add(StepLoss(step, 0, step, total, 1e-4, 0.5))
        tracker.report()
        ended_at.append(clock[0])
    etas = [e.eta_s for e in emitted if isinstance(e, ev.Progress)]
    assert len(etas) == total and etas[0] == float("inf") and etas[-1] == 0  # one step is no measure yet
    for i in range(total // 4, total - 1):
        truth = clock[0] - ended_at[i]
        if i < total // 2:  # later, one sample more or less is a large share of what is left
            assert abs(etas[i] - truth) < 0.15 * truth, (i + 1, etas[i], truth)
        assert etas[i + 1] - etas[i] < 0.12 * etas[i], (i + 1, etas[i], etas[i + 1])
    windowed = [(total - e.step) / e.it_per_s for e in emitted if isinstance(e, ev.Progress)]
    assert max(windowed[i + 1] / windowed[i] for i in range(total // 4, total - 2)) > 2  # what the test rules out
    assert window.start()
    session, shown = sessions[-1], []
    for event in emitted[200:210]:
        session.events.put(event)
        pump(window, 0.05)
        shown.append(window.bottom.eta_label.cget("text"))
    assert all(" left · done ≈ " in text for text in shown), shown
    minutes = [int(text.split(":")[0]) for text in shown]
    assert max(minutes) - min(minutes) <= 1, shown


def geometry(*widgets) -> list[tuple[int, int, int]]:
    return [(w.winfo_rooty(), w.winfo_height(), w.winfo_width()) for w in widgets]


def test_lines_that_come_and_go_never_move_the_form(window, tmp_path, pump):
    """The problem and message lines keep their place and height, empty or not, however long the text, and so
    does a field's reason line: the fields under the mouse stay where they are."""
    window.tabview.set("training")
    pump(window)
    bottom, field = window.bottom, window.form.widget_for("training.learning_rate")  # another group than epochs
    below = window.form.widget_for("training.max_steps")  # under epochs, in its group
    before = geometry(bottom, window.tabview, field, below)
    type_into(window.form.widget_for("training.epochs"), "many")
    window.save_to(tmp_path / "x.json")
    bottom.show_message("Training failed: " + "a very long reason, " * 40, "error")
    pump(window)
    assert bottom.problem.cget("text") and bottom.message.cget("text").endswith("…")
    assert bottom.message_line.text.endswith("reason, ")  # whole in the tooltip
    assert window.form.bindings_for("training.epochs")[0].labelled._error_label.winfo_ismapped()
    assert geometry(bottom, window.tabview, field, below) == before
    type_into(window.form.widget_for("training.epochs"), "3")
    pump(window)
    assert bottom.problem.cget("text") == "" and bottom.message.cget("text") == ""
    assert geometry(bottom, window.tabview, field, below) == before

    tools = window.tabs["tools"]
    window.tabview.set("tools")
    pump(window)
    steps = tools.spec_form.widget_for("steps")
    before = geometry(tools.paned, steps)
    type_into(steps, "many")
    tools.save_spec(tmp_path / "spec.json")
    pump(window)
    assert "Steps" in tools.problem_label.cget("text") and tools.message_label.cget("text").startswith("Not saved")
    assert geometry(tools.paned, steps) == before
    type_into(steps, "20")
    pump(window)
    assert "Steps" not in tools.problem_label.cget("text") and tools.message_label.cget("text") == ""  # it goes
    assert geometry(tools.paned, steps) == before


@pytest.mark.parametrize("tab, path, bad, below, says", [
    ("training", "training.learning_rate", "fast", "training.weight_decay", "expected a number, got 'fast'"),
    ("model", "model.base_model", "nowhere", "model.base_config", "nowhere does not exist")])
def test_a_fields_reason_moves_nothing_below_it(window, pump, screenshots, tab, path, bad, below, says):
    """A bad value's reason shows in red beside its field (a number: within the field's row) or in the line kept
    under it (a field as wide as its group: a path); the field below it in the same group stays where it is,
    and the reason covers none of it."""
    window.tabview.set(tab)
    field, under = window.form.widget_for(path), window.form.widget_for(below)
    pump(window)
    labelled, good, before = window.form.bindings_for(path)[0].labelled, field.get_raw(), geometry(under)
    type_into(field, bad)
    shot = screenshot(window, pump, screenshots, f"status_reason_{tab}")
    reason = labelled._error_label
    assert reason.winfo_ismapped() and reason.cget("text") == says
    assert shot.count(reason, ERROR, 60) > 20, "the reason is not shown in red"
    assert geometry(under) == before
    assert reason.winfo_rooty() + reason.winfo_height() <= under.winfo_rooty(), "the reason covers the field below"
    group = field.master
    assert reason.winfo_rootx() + reason.winfo_width() <= group.winfo_rootx() + group.winfo_width()
    type_into(field, good)
    pump(window)
    assert not reason.winfo_ismapped() and geometry(under) == before


def test_disabled_run_commands_look_disabled(window, sessions, pump, screenshots):
    bottom = window.bottom
    blue = bottom.command_colour[1]  # the theme's dark-mode button colour
    shot = screenshot(window, pump, screenshots, "status_idle")
    for button in bottom.command_buttons.values():
        assert button.cget("state") == "disabled"
        assert shot.count(button, DISABLED, 6) > 1000 and shot.count(button, blue, 6) < 50, button.cget("text")
    assert window.start()
    shot = screenshot(window, pump, screenshots, "status_running")
    for button in bottom.command_buttons.values():
        assert shot.count(button, blue, 6) > 1000 and shot.count(button, DISABLED, 6) < 50, button.cget("text")
    sessions[-1].finish("stopped", step=2)
    pump(window)
    shot = screenshot(window, pump, screenshots, "status_stopped")
    assert shot.count(next(iter(bottom.command_buttons.values())), DISABLED, 6) > 1000


def test_the_demo_build_says_what_it_does_in_the_bottom_bar(window, sessions, pump, screenshots):
    assert window.start()
    q, bottom = sessions[-1].events, window.bottom
    q.put(ev.Log("info", "Building the demo in demo: captioned images of coloured shapes, and a tiny SD 1.5-shaped "
                         "model whose VAE is fitted to them for 50 s"))
    q.put(ev.Status("Demo 2/3: fitting its VAE, 23 of 50 s (46%)"))
    shot = screenshot(window, pump, screenshots, "status_demo_build")
    assert bottom.status_label.cget("text") == "Demo 2/3: fitting its VAE, 23 of 50 s (46%)"  # whole, not cut
    assert shot.colours(bottom.status_label) > 4
    assert "Building the demo in demo" in window.run_tab.log.text()
    bars = geometry(bottom.step_bar, bottom.start_button)
    q.put(ev.Status("Caching latents of 48 images in /a/rather/long/workspace/path/that/goes/on/and/on/and/on/and/"
                    "on/and/on/and/on/and/on/and/on/and/on/and/on/cache"))
    pump(window)
    assert bottom.status_label.cget("text").endswith("…") and bottom.status.text.endswith("/cache")
    assert geometry(bottom.step_bar, bottom.start_button) == bars  # a long status moves neither bars nor buttons


def test_the_tool_tabs_settings_come_back_after_a_relaunch(make_window, tmp_path, pump):
    window = make_window(lazy=False)
    tools, results = window.tabs["tools"], window.tabs["results"]
    assert tools.spec.base_model == window.preset.model.base_model  # filled in from the preset
    type_into(tools.spec_form.widget_for("steps"), "7")
    tools.spec_form.widget_for("prompts").show("a {red|blue} circle")  # as typed: the form hears it
    type_into(results.spec_form.widget_for("cell_size"), "96")
    pump(window)
    type_into(tools.spec_form.widget_for("width"), "33")  # not valid: the last valid spec is what is kept
    window.close_now()

    again = make_window(lazy=False)
    tools, results = again.tabs["tools"], again.tabs["results"]
    assert tools.spec.steps == 7 and tools.spec.prompts == ["a {red|blue} circle"] and tools.spec.width != 33
    assert tools.spec_form.widget_for("steps").get_raw() == "7"
    assert results.spec.cell_size == 96
    other = tmp_path / "other-model"
    type_into(again.form.widget_for("model.base_model"), str(other))  # still filled in from the preset
    again.update()
    assert tools.spec.base_model == str(other)
