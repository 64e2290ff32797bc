"""Real inputs in the window: a missing concept folder blocks Start; Start asks where an earlier run left files; a
resume on changed data asks; the statistics name unreadable, long and missing captions; messages stay plain."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import save_file

from gui_helpers import screenshot, settled, type_into, wait_for
from app.run_questions import CHANGED_TITLE, EARLIER_TITLE
from app.widgets import ERROR, WARNING
from trainer import events as ev
from trainer.config import ConceptConfig


# ---- helpers -------------------------------------------------------------------------------------------------

@pytest.fixture(autouse=True)
def nothing_left_running(window, pump):
    """Each test here leaves the shared window with no run going (a refusal's question may start another)."""
    yield
    window.dialogs.choose_answers = []
    for _ in range(5):
        if window.runner.running:
            window.runner.session.finish("stopped")
        pump(window, 0.1)
    assert not window.runner.running


def earlier_run_files(workspace: Path, step: int | None = 8, epoch: int = 2, samples: int = 3,
                      model: Path | None = None, run_id: str = "run-one") -> None:
    """What a stopped run leaves: a complete backup (manifest with step and epoch), sample images, and its model
    (safetensors metadata naming the run)."""
    workspace.mkdir(parents=True, exist_ok=True)
    if step is not None:
        backup = workspace / "backup" / f"step-{step}"
        backup.mkdir(parents=True)
        (backup / "manifest.json").write_text(json.dumps({"step": step, "epoch": epoch, "epoch_step": 0,
                                                          "run_id": run_id, "files": []}))
    (workspace / "samples").mkdir(exist_ok=True)
    for i in range(samples):
        name = f"step{step or 0:07d}-epoch{epoch:04d}-prompt{i:02d}-seed{i}.png"  # trainer.train.sampling.sample_path
        Image.new("RGB", (16, 16), "red").save(workspace / "samples" / name)
    if model is not None:
        model.parent.mkdir(parents=True, exist_ok=True)
        save_file({"w": np.zeros(2, np.float32)}, str(model), metadata={"seachange.run_id": run_id})


def image_folder(folder: Path, names=("one", "two")) -> Path:
    folder.mkdir(parents=True)
    for name in names:
        Image.new("RGB", (64, 64), "blue").save(folder / f"{name}.png")
        (folder / f"{name}.txt").write_text(f"a blue {name}\n")
    return folder


def add_concept(window, path: Path):
    tab = window.tabs["concepts"]
    window.tabview.set("concepts")
    tab.add_button.invoke()
    type_into(window.form.widget_for(f"concepts.{tab.selected}.name"), "my photos")
    type_into(window.form.widget_for(f"concepts.{tab.selected}.path"), str(path))
    window.update()
    window.validate_now()
    return tab


# ---- a concept folder that does not exist ---------------------------------------------------------------------

def test_a_missing_concept_folder_is_marked_and_blocks_start(window, sessions, tmp_path):
    assert window.preset.general.demo_dir, "the demo preset keeps its demo folder: only its own parts may be missing"
    folder = tmp_path / "photos"
    tab = add_concept(window, folder)
    index = tab.selected
    binding = window.form.bindings_for(f"concepts.{index}.path")[0]
    assert binding.reason and "does not exist" in binding.reason and str(folder) in binding.reason
    assert binding.widget.entry.cget("border_color") == ERROR
    assert binding.labelled._error_label.winfo_ismapped()
    button = tab.rows[index][2]
    assert button.cget("text_color") == ERROR
    assert "does not exist" in "\n".join(tab.problem_reasons[index])
    assert tab.rows[0][2].cget("text_color") != ERROR  # the demo's own concept is built at Start: no mistake
    assert window.bottom.start_button.cget("state") == "disabled"
    assert "does not exist" in window.bottom.problem.cget("text")
    assert window.start() is False and sessions == []
    wait_for(window, lambda: settled(tab, folder), "the statistics")
    text = tab.stats.cget("text")
    assert f"{folder} does not exist" in text and "demo" not in text
    assert tab.stats.cget("text_color") == ERROR

    image_folder(folder)  # the user makes the folder, then comes back to the window
    window.event_generate("<FocusIn>")
    wait_for(window, lambda: settled(tab, folder) and tab.stats_panel.shown["usable"] == 2, "the new statistics")
    assert binding.reason is None and button.cget("text_color") != ERROR
    assert window.bottom.start_button.cget("state") == "normal"
    assert tab.stats.cget("text") == "2 of 2 images usable"


def test_rescan_sees_a_folder_that_appeared(window, tmp_path):
    folder = tmp_path / "later"
    tab = add_concept(window, folder)
    wait_for(window, lambda: settled(tab, folder), "the statistics")
    assert window.bottom.start_button.cget("state") == "disabled"
    image_folder(folder, names=("a",))
    tab.stats_panel.rescan_button.invoke()
    wait_for(window, lambda: settled(tab, folder) and tab.stats_panel.shown["usable"] == 1, "the rescan")
    window.update()
    assert window.bottom.start_button.cget("state") == "normal"


# ---- an earlier run in the workspace --------------------------------------------------------------------------

def test_start_asks_and_continues_an_earlier_run(window, sessions):
    workspace = Path(window.preset.general.workspace_dir)
    earlier_run_files(workspace, step=8, epoch=2, model=Path(window.preset.model.output_path))
    window.dialogs.choose_answers = ["Continue"]
    assert window.start()
    (title, message, options), = window.dialogs.chosen()
    assert title == EARLIER_TITLE
    assert options == ["Continue from step 8 (epoch 2)", "Start over"]
    assert "step 8 (epoch 2)" in message and "3 sample images" in message
    assert f"{workspace / 'earlier'}" in message and "deletes nothing" in message
    assert "samples, backups, saves and model move to" in message
    assert sessions[-1].resume == "latest" and not sessions[-1].fresh and not sessions[-1].allow_changed_data


def test_start_over_and_cancel(window, sessions, tmp_path):
    workspace = Path(window.preset.general.workspace_dir)
    outside = tmp_path / "models" / "mine.safetensors"  # the model lies outside the workspace
    window.preset.model.output_path = str(outside)
    earlier_run_files(workspace, step=None, samples=2, model=outside)
    window.dialogs.choose_answers = [None]
    assert window.start() is False and sessions == []
    assert "Not started" in window.bottom.message.cget("text")
    (_, message, options), = window.dialogs.chosen()
    assert options == ["Start over"]  # no backup: nothing to continue
    assert "its model is renamed beside itself to mine.earlier-<date-time>.safetensors" in message
    window.dialogs.choose_answers = ["Start over"]
    assert window.start()
    assert sessions[-1].fresh and sessions[-1].resume is None


def test_a_preset_that_says_resume_is_not_asked(window, sessions):
    earlier_run_files(Path(window.preset.general.workspace_dir))
    window.preset.backup.resume = "latest"  # the preset itself continues the run
    assert window.start()
    assert window.dialogs.chosen() == [] and sessions[-1].resume is None and not sessions[-1].fresh


def test_start_after_stop_in_the_same_workspace_asks_first(window, sessions, pump):
    assert window.start()  # a new workspace: no question
    assert window.dialogs.chosen() == [] and not sessions[-1].fresh and sessions[-1].resume is None
    earlier_run_files(Path(window.preset.general.workspace_dir), step=5, epoch=1)  # what the run wrote
    window.stop()
    pump(window)
    assert not window.runner.running
    window.dialogs.choose_answers = [None]
    assert window.start() is False
    assert len(sessions) == 1, "a second run began over the first one's files"
    assert window.dialogs.chosen()[0][2][0] == "Continue from step 5 (epoch 1)"


def test_a_run_refused_for_an_earlier_run_asks_then_starts_over(window, sessions, pump):
    assert window.start()
    model = Path(window.preset.model.output_path)
    earlier_run_files(model.parent, step=None, samples=0, model=model, run_id="someone-else")
    refusal = (f"model.output_path: {model} holds the model of another run; SeaChange replaces a model only for "
               "the run that wrote it")
    window.dialogs.choose_answers = ["Start over"]
    sessions[-1].finish("failed", refusal, bad_input=True, refusal="earlier_run")
    wait_for(window, lambda: len(sessions) == 2, "the second start")
    (_, message, options), = window.dialogs.chosen()
    assert "holds the model of another run" in message and options == ["Start over"]
    assert sessions[-1].fresh
    sessions[-1].finish("failed", refusal, bad_input=True, refusal="earlier_run")  # refused again: no loop
    pump(window, 0.3)
    assert len(sessions) == 2 and len(window.dialogs.chosen()) == 1
    assert "Training not started" in window.bottom.message.cget("text")


# ---- resuming on changed data ---------------------------------------------------------------------------------

CHANGED = ("backup.resume: the concepts' files changed since step-8 was written (removed: 1 (two.png); captions "
           "edited: 1 (one.txt)). Resuming with other data does not continue the same training")


def refuse_for_changed_data(window, sessions, answer) -> None:
    """Start, Continue, and the engine refuses the resume because the data changed; `answer` the question."""
    earlier_run_files(Path(window.preset.general.workspace_dir))
    window.dialogs.choose_answers = ["Continue", answer]
    assert window.start()
    sessions[-1].finish("failed", CHANGED, bad_input=True, refusal="data_changed")


def test_a_resume_refused_for_changed_data_asks_and_resumes(window, sessions, pump):
    refuse_for_changed_data(window, sessions, "Resume with the changed data")
    wait_for(window, lambda: len(sessions) == 2, "the resume on the changed data")
    title, message, options = window.dialogs.chosen()[1]
    assert title == CHANGED_TITLE and options == ["Resume with the changed data", "Start over"]
    assert message.startswith("The concepts' files changed since step-8")
    assert "removed: 1 (two.png)" in message and "captions edited: 1 (one.txt)" in message
    assert "from there on, the data order differs from an uninterrupted run" in message
    assert sessions[-1].resume == "latest" and sessions[-1].allow_changed_data and not sessions[-1].fresh


def test_starting_over_on_changed_data(window, sessions, pump):
    refuse_for_changed_data(window, sessions, "Start over")
    wait_for(window, lambda: len(sessions) == 2, "the fresh start")
    assert sessions[-1].fresh and not sessions[-1].resume and not sessions[-1].allow_changed_data


def test_cancelling_the_changed_data_question_leaves_the_message(window, sessions, pump):
    refuse_for_changed_data(window, sessions, None)
    pump(window, 0.3)
    assert len(sessions) == 1 and len(window.dialogs.chosen()) == 2
    message = window.bottom.message
    assert "Training not started: backup.resume:" in message.cget("text")
    assert "removed: 1 (two.png)" in message.cget("text")
    assert message.cget("text_color") == WARNING


# ---- messages --------------------------------------------------------------------------------------------------

def test_input_errors_show_plain_messages_without_traceback(window, sessions, pump, tmp_path):
    (tmp_path / "samples").mkdir()
    sample = tmp_path / "samples" / "0-10.png"
    Image.new("RGB", (16, 16)).save(sample)
    assert window.start()
    sessions[-1].events.put(ev.SampleReady(str(sample), 0, "p", 10, 0))
    sessions[-1].events.put(ev.Progress(10, 20, 0, 1, 10, 20, 0.5, 0.5, 1e-4, 1.0, 1.0))
    sessions[-1].finish("stopped", step=10)
    pump(window)
    assert window.start()  # the next run is refused at once: the earlier chart and samples stay
    sessions[-1].events.put(ev.Log("warning", "\x1b[33mcareful\x1b[0m"))
    sessions[-1].finish("failed", "\x1b[31mmodel.base_model: x.ckpt is not a model file\x1b[0m", bad_input=True)
    pump(window)
    text = window.bottom.message.cget("text")
    assert text == "Training not started: model.base_model: x.ckpt is not a model file"
    log = window.run_tab.log.text()
    assert "\x1b" not in log and "careful" in log and "Traceback" not in log
    assert window.run_tab.chart.steps == [10] and window.run_tab.gallery.shown


# ---- points 1-3: the statistics name unreadable, long and missing captions -------------------------------------

def caption_concept(folder: Path) -> Path:
    """Images with a good caption, a 104-token caption, no caption, a caption file that is not text, and a
    caption in Windows-1252."""
    folder.mkdir()
    for name in ("good", "long", "bare", "binary", "legacy"):
        Image.new("RGB", (64, 64), "green").save(folder / f"{name}.png")
    (folder / "legacy.txt").write_bytes("a green square in a café, naïve crème brûlée style, déjà vu, à la "
                                        "carte, façade, garçon".encode("cp1252"))
    (folder / "good.txt").write_text("a green square\n")
    (folder / "long.txt").write_text(" ".join(["green"] * 103) + " sks\n")
    (folder / "binary.txt").write_bytes(b"\x00\x01\x02\x03\x04 caption\x05\x06\x07\x08")
    return folder


def test_statistics_name_unreadable_long_and_missing_captions(window, tmp_path):
    folder = caption_concept(tmp_path / "greens")
    tab = add_concept(window, folder)
    type_into(window.form.widget_for(f"concepts.{tab.selected}.caption"), "a green thing")
    wait_for(window, lambda: settled(tab, folder) and tab.stats_panel.shown["without_caption"] == 1
             and tab.stats_panel.missing.winfo_ismapped(), "the statistics")
    panel = tab.stats_panel
    assert "without a caption" in panel.summary.cget("text")
    missing = panel.missing.cget("text")
    assert "bare.png" in missing and "trains on the concept caption “a green thing”" in missing
    long = panel.long.cget("text")
    assert "1 caption longer than 75 tokens, cut at the limit: long.png (104 tokens)" in long
    assert "150 or 225" in long
    assert "1 caption file in a legacy code page, read as detected: legacy.txt (cp1252)" in long
    assert panel.problems_box.winfo_ismapped()
    problems = panel.problems_box.get("1.0", "end")
    assert "binary.txt" in problems and "cannot" in problems
    assert "binary.png" not in (panel.skipped_box.get("1.0", "end") if panel.skipped_box.winfo_ismapped() else "")
    window.form.widget_for(f"concepts.{tab.selected}.missing_caption").set("refuse")
    wait_for(window, lambda: settled(tab, folder) and panel.shown.get("missing_caption") == "refuse",
             "the statistics with refuse")
    assert "stops the run before training" in panel.missing.cget("text")
    assert panel.missing.cget("text_color") == ERROR
    wait_for(window, lambda: all(c.winfo_ismapped() for _, c in tab.thumb_cards[:4]), "the thumbnails")
    thumbs = {p.name: card[1].cget("text") for p, card in zip(tab.shown_images, tab.thumb_cards)}
    assert thumbs["binary.png"] == "(skipped: its caption file cannot be read)"
    assert thumbs["good.png"] == "a green square" and thumbs["long.png"].endswith("…")
    window.form.widget_for("training.max_token_length").delete(0, "end")
    window.form.widget_for("training.max_token_length").insert(0, "150")
    wait_for(window, lambda: settled(tab, folder) and panel.shown["long_captions"]["limit"] == 150,
             "the statistics at 150 tokens")
    assert "longer than" not in panel.long.cget("text") and "legacy.txt" in panel.long.cget("text")


def test_missing_caption_actions_in_words(window):
    from app.tabs.concept_stats import long_text, missing_text
    concept = ConceptConfig(path="/data/cats", caption="")
    stats = {"path": "/data/cats", "without_caption": 7, "without_caption_examples":
             [f"/data/cats/{i}.png" for i in range(5)], "missing_caption": "skip"}
    text = missing_text(stats, concept)
    assert text.startswith("7 images without a caption") and "0.png, 1.png, 2.png and 4 more" in text
    assert "are skipped" in text
    assert "file names" in missing_text(dict(stats, missing_caption="filename"), concept)
    assert "empty caption" in missing_text(dict(stats, missing_caption="concept_caption"), concept)
    assert missing_text(dict(stats, without_caption=0), concept) == ""
    long = {"path": "/data/cats", "long_captions": {"limit": 225, "count": 2, "examples": [
        {"path": "/data/cats/a.png", "tokens": 240}]}}
    assert long_text(long) == "2 captions longer than 225 tokens, cut at the limit: a.png (240 tokens)."


def test_missing_caption_setting_shows_for_txt_captions_only(window, tmp_path):
    tab = add_concept(window, image_folder(tmp_path / "x"))
    binding = window.form.bindings_for(f"concepts.{tab.selected}.missing_caption")[0]
    window.update()
    assert binding.widget.winfo_ismapped()
    window.form.widget_for(f"concepts.{tab.selected}.caption_source").set("filename")
    window.update()
    assert not binding.widget.winfo_ismapped()


def test_max_token_length_is_a_training_setting(window):
    window.tabview.set("training")
    field = window.form.widget_for("training.max_token_length")
    field.delete(0, "end")
    field.insert(0, "100")
    window.update()
    binding = window.form.bindings_for("training.max_token_length")[0]
    assert binding.reason and "75, 150 or 225" in binding.reason
    assert window.bottom.start_button.cget("state") == "disabled"
    field.delete(0, "end")
    field.insert(0, "225")
    window.update()
    assert binding.reason is None and window.preset.training.max_token_length == 225


# ---- the dialog ---------------------------------------------------------------------------------------------

def test_choice_dialog_answers_cancels_and_blocks_until_answered(window):
    from app.dialogs import ChoiceDialog, Dialogs
    dialog = ChoiceDialog(window, "Question", "Which one?", ["First", "Second"])
    window.update()
    dialog.buttons["Second"].invoke()
    assert dialog.result == "Second" and not dialog.winfo_exists()
    dialog = ChoiceDialog(window, "Question", "Which one?", ["First"])
    window.update()
    dialog.focus_force()
    window.update()
    dialog.event_generate("<Escape>")
    window.update()
    assert dialog.result is None and not dialog.winfo_exists()
    opened = []

    def answer():
        opened.append(next(w for w in window.winfo_children() if isinstance(w, ChoiceDialog)))
        opened[0].buttons["First"].invoke()
    window.after(300, answer)
    assert Dialogs(window).choose("Question", "line\n" * 40, ["First"]) == "First"
    assert "more lines" in opened[0].message.cget("text")


# ---- screenshots ------------------------------------------------------------------------------------------------

def test_screenshots_of_the_new_states(window, pump, tmp_path, screenshots):
    """Screenshots real_inputs_*.png: a missing concept folder, the caption findings, both questions."""
    from app.dialogs import ChoiceDialog
    from app.run_questions import changed_data_message, earlier_run_message
    from trainer.train.runs import earlier_run
    tab = add_concept(window, tmp_path / "my_photos")
    wait_for(window, lambda: settled(tab, tmp_path / "my_photos"), "the statistics")
    shot = screenshot(window, pump, screenshots, "real_inputs_missing_folder")
    path_field = window.form.widget_for(f"concepts.{tab.selected}.path")
    assert shot.count(path_field, ERROR, 30) > 100, "the missing folder's entry has no red border"
    assert shot.count(window.bottom.problem, WARNING, 60) > 20, "the bottom bar does not say why Start is off"
    folder = caption_concept(tmp_path / "greens")
    for i in range(6):
        Image.new("RGB", (64, 96), "green").save(folder / f"more_{i}.png")
        (folder / f"more_{i}.txt").write_bytes("un café noir, très naïf".encode("utf-16-le") if i < 2 else
                                               f"a green shape {i}".encode())
    type_into(path_field, str(folder))
    wait_for(window, lambda: settled(tab, folder), "the statistics")
    shot = screenshot(window, pump, screenshots, "real_inputs_caption_findings")
    panel = tab.stats_panel
    assert shot.count(panel.missing, WARNING, 60) > 20 and shot.count(panel.long, WARNING, 60) > 20
    assert shot.colours(panel.summary) > 4
    workspace = Path(window.preset.general.workspace_dir)
    earlier_run_files(workspace, step=503, epoch=4, samples=12, model=Path(window.preset.model.output_path))
    found = earlier_run(window.preset)
    shoot_dialog(ChoiceDialog(window, EARLIER_TITLE, earlier_run_message(found, workspace),
                              ["Continue from step 503 (epoch 4)", "Start over"]),
                 pump, screenshots, "real_inputs_dialog_earlier_run")
    shoot_dialog(ChoiceDialog(window, CHANGED_TITLE, changed_data_message(CHANGED),
                              ["Resume with the changed data", "Start over"]),
                 pump, screenshots, "real_inputs_dialog_changed_data")


def shoot_dialog(dialog, pump, screenshots, name: str) -> None:
    """Screenshot a question (its message and every button shown), then cancel it."""
    try:
        shot = screenshot(dialog, pump, screenshots, name)
        assert shot.colours(dialog.message) > 10, f"{name}: no message"
        assert all(shot.colours(button) > 4 for button in (*dialog.buttons.values(), dialog.cancel_button))
    finally:
        dialog.answer(None)
