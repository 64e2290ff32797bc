"""The queue tab: entries added from the window's settings and from a preset file, a sweep refused with the engine's
message and accepted, reordering and removing (the file rewritten), one device job at a time, a real tiny two-run
queue stopped and continued, and its runs' samples side by side in the results tab."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from tiny_presets import make_preset

from app.queue_dialogs import parse_sweep, sweep_text
from trainer.config import Preset, preset_to_dict, save_preset
from trainer.tools.run_queue import read_queue
from trainer.tools.run_samples import side_by_side, workspace_samples
from trainer.train.runs import complete_backups


def tiny_preset(tmp_path: Path, model_dir, concept_dir, steps: int = 2) -> Preset:
    """The tiny model on CPU for `steps` steps, sampling one 32 px prompt (one denoising step) at every step."""
    return make_preset(tmp_path, model_dir, concept_dir, training={"max_steps": steps}, sampling={
        "unit": "steps", "every": 1, "before_training": False,
        "prompts": [{"prompt": "a red square", "seed": 3, "steps": 1, "width": 32, "height": 32,
                     "cfg_scale": 1.0, "sampler": "ddim"}]})


@pytest.fixture
def queue_tab(window, tmp_path, tiny_model_dir, color_concept):
    """The queue tab on tmp_path/queue.json (no file yet), the window showing the tiny preset as "tiny.json"."""
    tab = window.tabs["queue"]
    assert not tab.runner.running, "a previous test left the queue running"
    tab.runner.session_factory = tab.make_session
    tab.message_line.show("")
    window.set_preset(tiny_preset(tmp_path, tiny_model_dir, color_concept), tmp_path / "tiny.json")
    tab.set_path(tmp_path / "queue.json")
    window.tabview.set("queue")
    window.update()
    return tab


def names(path: Path) -> list[str]:
    return [entry.name for entry in read_queue(path).entries]


def test_entries_are_added_swept_reordered_and_removed(queue_tab, window, tmp_path, make_window):
    tab, path = queue_tab, tmp_path / "queue.json"
    assert tab.reasons == ["the queue is empty: add the current settings or a preset file"]
    assert tab.start_button.cget("state") == "disabled" and not tab.start()
    assert tab.buttons["Sweep…"].cget("state") == "disabled"  # nothing selected

    tab.buttons["Add current settings"].invoke()
    tab.buttons["Add current settings"].invoke()
    assert names(path) == ["tiny-1", "tiny-2"]
    assert read_queue(path).entries[0].preset_data == preset_to_dict(window.preset)
    assert tab.list.tree.get_children() == ("e0", "e1") and tab.list.tree.item("e1", "text") == "tiny-2"
    assert tab.list.tree.set("e0", "status") == "pending"
    assert tab.reasons == [] and tab.start_button.cget("state") == "normal"
    assert tab.selected_entry() == 1  # the entry just added

    # A sweep is checked by the engine: a mistake is refused naming the entry and the field, the file unchanged.
    dialog = tab.open_sweep_dialog(0)
    try:
        dialog.set_text("training.lerning_rate = 1e-6, 2e-6")
        assert not dialog.apply()
        assert "entries[0] 'tiny-1' sweep training.lerning_rate: unknown key" in dialog.error.cget("text")
        dialog.set_text("training.learning_rate = 1e-6, fast")
        assert not dialog.apply()
        assert "entries[0] 'tiny-1' sweep training.learning_rate: expected a number, got 'fast'" in \
            dialog.error.cget("text")
        assert read_queue(path).entries[0].sweep == {}
        dialog.set_text("training.learning_rate 1e-6")
        assert not dialog.apply() and dialog.error.cget("text").startswith("line 1: write a dotted path")
        dialog.set_text("training.learning_rate = 1e-6, 2e-6\n\n")
        assert dialog.apply()  # taken: the dialog closes
    finally:
        if dialog.winfo_exists():
            dialog.answer(None)
    assert read_queue(path).entries[0].sweep == {"training.learning_rate": [1e-6, 2e-6]}
    runs = tab.list.tree.get_children("e0")
    assert [tab.list.tree.item(r, "text") for r in runs] == ["tiny-1__learning_rate=1e-06",
                                                             "tiny-1__learning_rate=2e-06"]
    assert [tab.list.tree.set(r, "settings") for r in runs] == ["learning_rate=1e-06", "learning_rate=2e-06"]
    assert tab.list.tree.set("e0", "status") == "0 of 2 completed"
    assert "sweep learning_rate: 1e-06, 2e-06" in tab.list.tree.set("e0", "settings")
    assert tab.set_sweep(1, {"training.epochs": [0]}).startswith("entries[1] 'tiny-2' sweep training.epochs: 0 is "
                                                                 "below the minimum 1")

    # Reorder and remove: the file is rewritten, the selection follows the entry.
    tab.list.select_entry(1)
    tab.buttons["Up"].invoke()
    assert names(path) == ["tiny-2", "tiny-1"] and tab.selected_entry() == 0
    tab.buttons["Up"].invoke()  # the first cannot go higher
    assert names(path) == ["tiny-2", "tiny-1"]
    tab.buttons["Down"].invoke()
    assert names(path) == ["tiny-1", "tiny-2"] and tab.selected_entry() == 1
    tab.buttons["Remove"].invoke()
    assert names(path) == ["tiny-1"] and window.dialogs.asked[-1][1] == "Remove entry"

    # A preset file is added relative to the queue's folder.
    save_preset(window.preset, tmp_path / "presets" / "tiny.json")
    window.dialogs.open_path = str(tmp_path / "presets" / "tiny.json")
    tab.buttons["Add preset file…"].invoke()
    entry = read_queue(path).entries[1]
    assert (entry.name, entry.preset, entry.preset_data) == ("tiny-2", "presets/tiny.json", None)
    assert not tab.reasons

    # A mistake made in the file elsewhere is named in the tab, with the entry and field; Start stays off.
    data = json.loads(path.read_text())
    data["entries"][1]["set"] = {"training.learning_rate": -1}
    path.write_text(json.dumps(data))
    tab.refresh()
    assert tab.reasons == ["queue.json: entries[1] 'tiny-2' set training.learning_rate: -1.0 is below the minimum "
                           "0.0 (run tiny-2)"]
    assert "Can't start the queue: queue.json: entries[1] 'tiny-2' set" in tab.problem_line.label.cget("text")
    assert tab.start_button.cget("state") == "disabled" and not tab.start()
    path.write_text("{ not json")  # a file that does not read is never written over by an edit
    tab.refresh()
    assert tab.reasons and not tab.add_current() and path.read_text() == "{ not json"

    # The queue file is remembered for the next window.
    assert make_window(recent=window.recent).tabs["queue"].path == path


def test_one_device_job_at_a_time(queue_tab, window, fake_session, sessions, wait_for):
    tab = queue_tab
    assert tab.add_current()
    assert window.start(fresh=True)  # a (fake) training holds the device
    wait_for(window, lambda: tab.reasons[:1] == ["A training is running; wait for it or stop it"], "the refusal")
    assert not tab.start() and tab.start_button.cget("state") == "disabled"
    sessions[-1].finish("completed")
    wait_for(window, lambda: not tab.reasons, "the queue's Start to come back")

    tab.runner.session_factory = fake_session
    assert tab.start() and tab.runner.running
    assert tab.stop_button.cget("state") == "normal" and tab.start_button.cget("state") == "disabled"
    assert sessions[-1].preset == str((tab.path).absolute())  # the session runs the queue file
    wait_for(window, lambda: "The queue is running" in window.bottom.problem.cget("text"), "the bottom bar's reason")
    assert not window.start(fresh=True) and not window.runner.running
    assert any("The queue is running" in reason for reason in window.tabs["tools"].validate_now())
    tab.stop()  # the fake session answers with a stopped RunFinished
    wait_for(window, lambda: not tab.runner.running, "the queue to stop")
    assert tab.last_finished.outcome == "stopped" and "stop" in tab.message_line.label.cget("text").lower()
    wait_for(window, lambda: not window.validate_now(), "the window's Start to come back")


def test_a_real_queue_stops_continues_and_its_runs_compare_side_by_side(queue_tab, window, wait_for, tmp_path,
                                                                         tiny_model_dir, color_concept):
    tab = queue_tab
    assert tab.add_current()
    assert tab.set_sweep(0, {"training.learning_rate": [1e-3, 2e-3]}) is None
    first, second = "tiny-1__learning_rate=0.001", "tiny-1__learning_rate=0.002"

    # Stop while the first run starts: it stops at its first step with a backup; the second waits.
    assert tab.start()
    wait_for(window, lambda: getattr(tab.records.get(first), "status", "") == "running", "the first run")
    tab.stop()
    wait_for(window, lambda: not tab.runner.running, "the queue to stop", 240)
    assert tab.last_finished.outcome == "stopped", tab.last_finished.message
    assert [tab.records[n].status for n in (first, second)] == ["stopped", "pending"]
    assert tab.list.tree.set(tab.list.run_items[first], "status") == "stopped"
    assert complete_backups(Path(tab.records[first].workspace) / "backup")

    # Start again: the first run continues from its backup, then the second trains; both complete.
    assert tab.start()
    wait_for(window, lambda: not tab.runner.running, "the queue to finish", 400)
    assert tab.last_finished.outcome == "completed", tab.last_finished.message
    for name in (first, second):
        record, item = tab.records[name], tab.list.run_items[name]
        assert record.status == "completed" and isinstance(record.final_loss, float)
        assert Path(record.model).is_file()
        assert tab.list.tree.set(item, "status") == "completed"
        assert tab.list.tree.set(item, "loss") == f"{record.final_loss:.4g}"
        assert tab.list.tree.set(item, "model") == record.model
        assert tab.list.cut_text(item, "model") == record.model and tab.list.cut_text(item, "loss") == ""
    assert tab.list.tree.set("e0", "status") == "2 of 2 completed"
    assert window.run_tab.chart.steps[-1] == 2  # the run tab showed the runs as they trained
    tab.list.tree.see(tab.list.run_items[second])  # hovering the cut model path shows it whole
    window.update()
    x, y, width, height = tab.list.tree.bbox(tab.list.run_items[second], "model")
    tab.list.tree.event_generate("<Motion>", warp=True, x=x + width // 2, y=y + height // 2)
    wait_for(window, lambda: tab.list.tip._label is not None and tab.list.tip._tip.winfo_viewable()
             and tab.list.tip._label.cget("text") == tab.records[second].model, "the model path's tip", 5)
    log = window.run_tab.log.text()  # each run's end said once, the queue's once
    assert log.count("completed after 2 steps") == 2 and "Queue: Queue" not in log and "Queue done" in log
    bar = window.bottom  # followed the runs, then says how the queue ended
    assert bar.step_label.cget("text") == "step –" and bar.status.text == "Queue done."
    assert bar.message_line.text.startswith("Queue") and "Training completed" not in bar.message_line.text

    # The sweep's runs side by side in the results tab: a column per run, its last samples.
    tab.list.select_entry(0)
    tab.buttons["Compare samples"].invoke()
    results = window.tabs["results"]
    assert window.tabview.get() == "results"
    grid = results.grid_view
    assert grid.column_labels == ["learning_rate = 0.001\nstep 2", "learning_rate = 0.002\nstep 2"]
    assert grid.row_labels == ["a red square"]
    for column, name in enumerate((first, second)):
        cell = Path(grid.paths[(0, column)])
        assert cell.parent == Path(tab.records[name].workspace) / "samples"
        assert cell.name.startswith("step0000002-")
    assert set(grid.photos) == {(0, 0), (0, 1)}
    assert results.sweep_picker.step_box.cget("values") == ["last", "1", "2"]
    results.sweep_picker.step_box.set("1")
    results.sweep_picker.show_button.invoke()
    assert grid.column_labels == ["learning_rate = 0.001\nstep 1", "learning_rate = 0.002\nstep 1"]
    assert all(Path(grid.paths[(0, c)]).name.startswith("step0000001-") for c in (0, 1))
    results.sweep_picker.step_box.set("7")
    results.sweep_picker.show_button.invoke()
    assert grid.column_labels == ["learning_rate = 0.001\n(no samples at step 7)",
                                  "learning_rate = 0.002\n(no samples at step 7)"] and not grid.paths
    results.sweep_picker.step_box.set("last")
    results.sweep_picker.entry_menu.set("all entries")
    results.sweep_picker.show_button.invoke()
    assert grid.column_labels == ["tiny-1\nlearning_rate = 0.001\nstep 2", "tiny-1\nlearning_rate = 0.002\nstep 2"]


# ---- the pieces beside the window -----------------------------------------------------------------------------

def test_sweep_text_types_values_as_the_fields_want_them():
    preset = Preset()
    sweep = parse_sweep("training.learning_rate = 1e-6, 2e-6\ntraining.resolution = 512, 640\n"
                        "training.train_text_encoder = true, false\nsampling.prompts.0.prompt = [\"a, b\", \"c\"]",
                        preset)
    assert sweep == {"training.learning_rate": [1e-6, 2e-6], "training.resolution": ["512", "640"],
                     "training.train_text_encoder": [True, False], "sampling.prompts.0.prompt": ["a, b", "c"]}
    assert parse_sweep(sweep_text(sweep), preset) == sweep  # what the dialog shows reads back the same
    assert parse_sweep("training.lerning_rate = 1e-6, x", preset) == {"training.lerning_rate": [1e-6, "x"]}
    with pytest.raises(ValueError, match="line 2: an empty value"):
        parse_sweep("training.epochs = 1\ntraining.learning_rate = 1,,2", preset)


def test_side_by_side_lays_out_the_runs_samples_by_prompt_at_a_step(tmp_path):
    def sample(workspace: Path, step: int, prompt: int) -> None:
        (workspace / "samples").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(workspace / "samples" / f"step{step:07d}-epoch0001-prompt{prompt:02d}-seed1.png")
    a, b, empty = tmp_path / "a", tmp_path / "b", tmp_path / "none"
    for step in (5, 10):
        sample(a, step, 0)
        sample(a, step, 1)
    sample(b, 5, 1)
    (a / "preset.json").write_text(json.dumps({"sampling": {"prompts": [{"prompt": "a cat"}, {"prompt": "a dog"}]}}))
    (a / "samples" / "notes.png").write_text("not a sample")
    assert list(workspace_samples(a)) == [5, 10] and set(workspace_samples(a)[5]) == {0, 1}
    grid = side_by_side([("A", a), ("B", b), ("C", empty)])
    assert grid.rows == ["a cat", "a dog"] and grid.steps == [5, 10] and grid.shown == [10, 5, None]
    assert grid.columns == ["A\nstep 10", "B\nstep 5", "C\n(no samples yet)"]
    assert set(grid.cells) == {(0, 0), (1, 0), (1, 1)} and grid.cells[(1, 1)].parent == b / "samples"
    grid = side_by_side([("A", a), ("B", b)], step=10)
    assert grid.columns == ["A\nstep 10", "B\n(no samples at step 10)"] and set(grid.cells) == {(0, 0), (1, 0)}
