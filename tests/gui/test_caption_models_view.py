"""The concepts tab's "Caption with a model…" view with tiny real models (caption_helpers): a preview proposes
captions in a child process and writes nothing; Caption all in mode missing writes only the missing captions and
the concept's statistics follow; wrong model folders and a busy device are refused before anything runs; Stop,
then Resume (or closing the view while it runs) goes on where it stopped."""
from __future__ import annotations

import threading
import traceback
from dataclasses import fields
from pathlib import Path

import pytest

import app.tabs.caption_models_view as view_module
from app.widgets import ChoiceField
from app.tabs.caption_models_view import CONCEPT_FIELDS, plan_text
from caption_helpers import BLUE, BLUE_TAGS, RED, build_blip, build_tagger, image_folder
from gui_helpers import settled, type_into
from trainer.specs import CaptionSpec
from trainer.tools import captioning

RED_TAGS = BLUE_TAGS.replace("blue", "red")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The tiny tagger and BLIP. Tests ask for it before the window: the window's statistics threads import
    transformers, and a first import of it in two threads at once fails ("cannot import name …"); those of an
    earlier module's window are waited for."""
    for thread in threading.enumerate():
        if thread.name == "concept-stats":
            thread.join(60)
    root = tmp_path_factory.mktemp("caption_models")
    return {"wd": build_tagger(root / "wd"), "blip": build_blip(root / "blip")}


@pytest.fixture
def open_view(window, wait_for, monkeypatch):
    """open(folder, **fields): point the first concept at `folder`, press its "Caption with a model…" button and
    set the fields as a user would (device cpu); the view's counts are settled. Closes the view afterwards, and
    fails the test when a Tk callback raised meanwhile (Tk only prints those)."""
    tab = window.tabs["concepts"]
    opened, errors = [], []
    monkeypatch.setattr(window, "report_callback_exception", lambda *exc: errors.append(exc))

    def open_(folder: Path, **values):
        window.preset.concepts[0].path = str(folder)
        window.form.refresh()
        window.tabview.set("concepts")
        tab.select(0)
        tab.caption_models_button.invoke()
        view = tab.caption_models
        opened.append(view)
        for name, value in {"device": "cpu", **values}.items():
            widget = view.form.widget_for(name)
            widget.set(value) if isinstance(widget, ChoiceField) else type_into(widget, value)
        view.validate_now()
        wait_for(window, view.plan_settled, "the view's counts")
        wait_for(window, lambda: settled(tab, folder), "the concept's statistics")
        return view
    yield open_
    for view in opened:
        if view.winfo_exists():
            if view.runner.running:
                view.runner.stop()
                wait_for(window, lambda: not view.runner.running, "the run to stop")
            view.close_now()
    window.update()
    assert not errors, "".join(traceback.format_exception(*errors[0]))


def tag_fields(models) -> dict:
    return {"captioner": "none", "tagger": "wd", "tagger_model": str(models["wd"])}


def files(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def wait_finished(window, wait_for, view, timeout_s=120.0):
    wait_for(window, lambda: not view.runner.running and view.runner.last_finished is not None, "the run's end",
             timeout_s)
    return view.runner.last_finished


def test_preview_proposes_captions_in_a_child_process_and_writes_nothing(models, window, open_view, wait_for,
                                                                         tmp_path):
    folder = image_folder(tmp_path / "pics", {**{n: BLUE for n in "abcde"}, **{n: RED for n in "fg"}},
                          {"a": "mnstr, the artist's own words\n", "b": "mnstr, more\n"})
    window.preset.training.embedding_placeholder = "mnstr"  # the word the preset trains: new captions start with it
    view = open_view(folder, captioner="blip", captioner_model=str(models["blip"]), tagger="wd",
                     tagger_model=str(models["wd"]))
    assert view.spec.image_dir == str(folder) and view.spec.prefix == "mnstr"
    assert view.trigger_note.cget("text").startswith("Prefix “mnstr”: the word this preset trains")
    view.form.widget_for("mode").set("append")  # appended to captions that hold it already: no prefix then
    assert view.spec.prefix == "" and view.trigger_note.cget("text") == ""
    view.form.widget_for("mode").set("missing")
    assert view.spec.prefix == "mnstr"
    wait_for(window, view.plan_settled, "the view's counts")
    assert view.plan_label.cget("text") == "5 image(s) without a caption will get one; 2 keep theirs."
    assert not view.reasons and view.download_label.cget("text") == ""  # both models are folders here
    before = files(folder)
    view.preview_button.invoke()
    assert view.runner.running and view.preview_button.cget("text") == "Stop"
    assert view.caption_button.cget("state") == "disabled"
    tools = window.tabs["tools"]  # a device job: nothing else that loads a model may start beside it
    assert "Captioning is running; wait for it or stop it" in tools.validate_now()
    assert window.device_busy() == "Captioning is running" and not window.start()
    finished = wait_finished(window, wait_for, view)
    assert finished.outcome == "completed", finished.message
    assert view.message_line.label.cget("text") == "Done: 4 caption(s) proposed; nothing was written"
    assert [Path(p).stem for p, _, _ in view.cards] == ["c", "d", "e", "f"]
    for (path, caption, skipped), (image, text) in zip(view.cards, view.card_widgets):
        tags = RED_TAGS if Path(path).stem == "f" else BLUE_TAGS
        assert caption.startswith("mnstr, ") and caption.endswith(f", {tags}") and not skipped, caption
        assert image.cget("image") is not None and text.cget("text") == caption
    from trainer.tools.captioning import Journal, journal_folder
    journal = Journal(journal_folder(view.spec), folder).path
    assert files(folder) == before and not journal.exists()  # a preview keeps no journal either
    viewer = view.open_card(3)  # a thumbnail full size, its proposal below
    assert viewer.item.path == view.cards[3][0] and view.cards[3][1] in viewer.item.details
    viewer.close()
    assert view.caption_button.cget("state") == "normal" and window.device_busy() is None
    assert not any("Captioning" in reason for reason in tools.validate_now())


def test_caption_all_in_mode_missing_writes_only_missing_captions_and_the_stats_follow(models, window, open_view,
                                                                                      wait_for, tmp_path,
                                                                                      monkeypatch):
    monkeypatch.setattr(view_module, "SESSION_IN_CHILD", False)  # the job in a thread of this process: faster
    folder = image_folder(tmp_path / "pics", {"a": BLUE, "b": RED, "c": BLUE, "d": RED, "e": BLUE},
                          {"a": "by hand\n", "b": "a red square, by hand\n", "e": ""})
    tab = window.tabs["concepts"]
    view = open_view(folder, **tag_fields(models))
    assert view.spec.prefix == ""  # the preset trains no new word
    assert tab.stats_panel.shown["without_caption"] == 3
    assert view.plan_label.cget("text") == "3 image(s) without a caption will get one; 2 keep theirs."
    kept = {n: (folder / f"{n}.txt").stat().st_mtime_ns for n in "ab"}
    view.caption_button.invoke()
    assert view.caption_button.cget("text") == "Stop"
    finished = wait_finished(window, wait_for, view)
    assert finished.outcome == "completed", finished.message
    assert [(folder / f"{n}.txt").read_text() for n in "abcde"] == \
        ["by hand\n", "a red square, by hand\n", f"{BLUE_TAGS}\n", f"{RED_TAGS}\n", f"{BLUE_TAGS}\n"]
    assert {n: (folder / f"{n}.txt").stat().st_mtime_ns for n in "ab"} == kept
    assert [Path(p).stem for p, _, _ in view.cards] == ["e", "d", "c"]  # newest first
    assert view.count_label.cget("text") == "3 / 3" and view.caption_button.cget("text") == "Caption all"
    wait_for(window, lambda: settled(tab, folder) and tab.stats_panel.shown["without_caption"] == 0,
             "the concept's statistics to count the new captions")
    wait_for(window, view.plan_settled, "the view's counts")
    assert view.plan_label.cget("text") == "Nothing to caption: all 5 image(s) keep their captions as they are."
    assert view.caption_button.cget("state") == view.preview_button.cget("state") == "disabled"
    view.form.widget_for("mode").set("all")
    wait_for(window, view.plan_settled, "the counts for mode all")
    assert view.caption_button.cget("state") == "normal"
    assert view.warning_label.cget("text").startswith("⚠ Mode all replaces 5 existing caption(s)")
    window.dialogs.confirm_answer = False  # "Replace captions?" No: nothing starts
    assert not view.caption_all() and view.runner.session is None
    kind, title, message = window.dialogs.asked[-1]
    assert (kind, title) == ("confirm", "Replace captions?") and "5 existing" in message


def test_wrong_models_and_a_busy_device_are_refused_before_anything_runs(models, window, open_view, wait_for,
                                                                         tmp_path):
    folder = image_folder(tmp_path / "pics", {"a": BLUE})
    view = open_view(folder, captioner="blip", captioner_model=str(models["wd"]), tagger="none")
    for f in fields(CaptionSpec):  # the form: every field but the concept's two, as its metadata says
        bindings = view.form.bindings_for(f.name)
        assert bool(bindings) == (f.name not in CONCEPT_FIELDS), f.name  # those follow the concept
        if bindings:
            labelled = bindings[0].labelled
            assert (labelled.label.cget("text"), labelled.help_text) == (f.metadata["label"], f.metadata["help"])
    window.form.widget_for("concepts.0.include_subdirectories").toggle()  # edited in the concepts tab: followed
    window.update()
    assert view.spec.include_subfolders and "with its subfolders" in view.heading.cget("text")
    binding = view.form.bindings_for("captioner_model")[0]
    assert binding.reason and "has no config.json: it is not a transformers model folder" in binding.reason
    shown = view.problem_line.text
    assert shown.startswith("Can't start: Captioner model: ") and "has no config.json" in shown
    assert view.caption_button.cget("state") == "disabled" and view.preview_button.cget("state") == "disabled"
    assert not view.caption_all() and not view.preview() and view.runner.session is None
    view.form.widget_for("captioner").set("none")
    view.form.widget_for("tagger").set("wd")
    type_into(view.form.widget_for("tagger_model"), str(models["blip"]))
    assert "has no model.onnx or selected_tags.csv" in " ".join(view.validate_now())
    view.form.widget_for("tagger").set("none")
    assert any("nothing to do: choose a captioner, a tagger" in r for r in view.validate_now())
    view.form.widget_for("tagger").set("wd")
    type_into(view.form.widget_for("tagger_model"), str(tmp_path / "no" / "such" / "folder"))
    assert any("is not a folder here, nor a Hugging Face repo id" in r for r in view.validate_now())
    type_into(view.form.widget_for("tagger_model"), "someone/wd-tagger")  # a repo id: fetched when it runs
    assert not view.validate_now()
    note = view.download_label.cget("text")
    assert "someone/wd-tagger is not a folder here: downloaded once from Hugging Face into" in note
    type_into(view.form.widget_for("tagger_model"), str(models["wd"]))
    assert not view.validate_now() and view.download_label.cget("text") == ""
    assert window.start()  # a training holds the device (a fake session)
    wait_for(window, lambda: view.reasons, "the view to hear of the training")
    assert view.reasons == ["A training is running; wait for it or stop it"]
    assert view.caption_button.cget("state") == "disabled" and not view.caption_all()
    window.runner.session.finish("stopped")
    wait_for(window, lambda: not window.runner.running and not view.reasons, "the device to be free again")
    assert view.caption_button.cget("state") == "normal"


def test_stop_then_resume_and_closing_while_running_go_on_where_they_stopped(models, window, open_view, wait_for,
                                                                             tmp_path, monkeypatch):
    monkeypatch.setattr(view_module, "SESSION_IN_CHILD", False)
    real_describe, calls, gates = captioning.Models.describe, [], {2: threading.Event(), 4: threading.Event()}

    def held(models_, images):  # the 2nd and 4th batches wait until the test lets them go
        calls.append(len(images))
        if len(calls) in gates:
            assert gates[len(calls)].wait(60)
        return real_describe(models_, images)
    monkeypatch.setattr(captioning.Models, "describe", held)
    names = "abcde"
    folder = image_folder(tmp_path / "pics", {n: BLUE for n in names})
    tab = window.tabs["concepts"]
    view = open_view(folder, batch_size="1", **tag_fields(models))
    view.caption_button.invoke()
    wait_for(window, lambda: view.count_label.cget("text") == "1 / 5", "the first caption")
    view.caption_button.invoke()  # Stop: honoured before the next batch, after the one under way
    assert view.caption_button.cget("text") == "Stopping…"
    gates[2].set()
    finished = wait_finished(window, wait_for, view)
    assert finished.outcome == "stopped" and "2 captions written" in finished.message
    assert [(folder / f"{n}.txt").exists() for n in names] == [True, True, False, False, False]
    assert view.caption_button.cget("text") == "Resume"
    wait_for(window, lambda: settled(tab, folder) and tab.stats_panel.shown["without_caption"] == 3,
             "the statistics after the stop")
    view.caption_button.invoke()  # Resume: the images captioned stay as they are
    wait_for(window, lambda: view.count_label.cget("text") == "1 / 3", "the resumed run's first caption")
    view.close()  # closing while it runs: asked, stopped, closed once it has stopped
    assert window.dialogs.asked[-1][:2] == ("confirm", "Stop captioning?") and view.winfo_exists()
    gates[4].set()
    wait_for(window, lambda: not view.winfo_exists() and view.runner not in window.tool_runners,
             "the view to close after its run stopped")
    assert [(folder / f"{n}.txt").exists() for n in names] == [True] * 4 + [False]
    view = open_view(folder, batch_size="1", **tag_fields(models))
    assert view.plan_label.cget("text") == "1 image(s) without a caption will get one; 4 keep theirs."
    view.caption_button.invoke()
    assert wait_finished(window, wait_for, view).outcome == "completed"
    assert [Path(p).stem for p, _, _ in view.cards] == ["e"] and calls == [1] * 5
    assert [(folder / f"{n}.txt").read_text() for n in names] == [f"{BLUE_TAGS}\n"] * 5


def test_the_counts_in_words():
    counts = {"todo": 5, "with_caption": 3, "kept": 1, "notes": []}
    assert plan_text(counts, "missing")[0] == "2 image(s) without a caption will get one; 1 keep theirs."
    text, warning = plan_text(counts, "all")
    assert text == "5 image(s) will be captioned: 3 caption(s) replaced, 2 new; 1 left as they are."
    assert warning.startswith("⚠ Mode all replaces 3 existing caption(s)")
    assert plan_text(counts, "append") == ("3 caption(s) get the new text after each line, 2 image(s) without one "
                                           "get it alone; 1 left as they are.", "")
    assert plan_text({"error": "x is not a folder"}, "missing") == ("", "")


def test_closing_the_window_while_captioning_stops_the_run_first(models, make_window, wait_for, tmp_path,
                                                                  monkeypatch):
    monkeypatch.setattr(view_module, "SESSION_IN_CHILD", False)
    gate, real_describe = threading.Event(), captioning.Models.describe

    def held(models_, images):
        assert gate.wait(60)
        return real_describe(models_, images)
    monkeypatch.setattr(captioning.Models, "describe", held)
    folder = image_folder(tmp_path / "pics", {n: BLUE for n in "ab"})
    window = make_window()
    window.preset.concepts[0].path = str(folder)
    window.form.refresh()
    tab = window.tabs["concepts"]
    tab.select(0)
    view = tab.open_caption_models()
    for name, value in {**tag_fields(models), "device": "cpu", "batch_size": "1"}.items():
        widget = view.form.widget_for(name)
        widget.set(value) if isinstance(widget, ChoiceField) else type_into(widget, value)
    assert view.caption_all() and view.runner in window.tool_runners
    window.on_close()  # asked, then it stops the run and closes once the run has stopped
    assert window.dialogs.asked[-1][1] == "Stop and close?" and "Captioning is running" in window.dialogs.asked[-1][2]
    assert not window.closed
    gate.set()
    wait_for(window, lambda: window.closed, "the window to close after the run stopped")
    assert (folder / "a.txt").read_text() == f"{BLUE_TAGS}\n" and not (folder / "b.txt").exists()
