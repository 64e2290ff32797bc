"""The tools tab: the generate-data form, a real run with the tiny model, Add as concept, spec files, and the rule
that one job at a time holds the device."""
from __future__ import annotations

import json
import typing
from dataclasses import fields

from app.widgets import ChoiceField, MultilineField, NumberField, PathField, SwitchField, TextField
from trainer import events as ev
from trainer.specs import CompareSpec, GenerateDataSpec


def type_into(widget, text: str) -> None:
    entry = getattr(widget, "entry", widget)
    entry.delete(0, "end")
    entry.insert(0, text)


def widget_class(hint, meta):
    if meta.get("choices"):
        return ChoiceField
    if hint is bool:
        return SwitchField
    if meta.get("kind") in ("path", "dir", "file"):
        return PathField
    if hint in (int, float):
        return NumberField
    return MultilineField if meta.get("kind") == "text" else TextField


def check_every_field(tab, spec_cls, skip=()) -> None:
    hints = typing.get_type_hints(spec_cls)
    for f in fields(spec_cls):
        if f.name in skip:
            continue
        bindings = tab.spec_form.bindings_for(f.name)
        assert bindings, f"{spec_cls.__name__}.{f.name} has no widget"
        assert isinstance(bindings[0].widget, widget_class(hints[f.name], f.metadata)), f.name
        assert bindings[0].labelled.label.cget("text") == f.metadata["label"]
        assert bindings[0].labelled.help_text == f.metadata["help"]


def tiny_spec(model, out, **kw) -> GenerateDataSpec:
    spec = GenerateDataSpec(base_model=str(model), output_dir=str(out), prompts=["a {red|blue} square"],
                            images_per_prompt=2, width=32, height=32, steps=2, sampler="ddim", device="cpu",
                            caption_template="gen, {prompt}")
    for key, value in kw.items():
        setattr(spec, key, value)
    return spec


def test_tools_and_results_tabs_show_every_spec_field(window):
    tools, results = window.tabs["tools"], window.tabs["results"]
    check_every_field(tools, GenerateDataSpec)
    check_every_field(results, CompareSpec, skip=("models", "prompts"))  # list editors, below
    assert results.models_editor.list_path == "models" and results.prompts_editor.list_path == "prompts"
    for title in ("tools", "results"):
        window.tabview.set(title)
        window.update()
        assert window.tabview.get() == title


def test_generator_model_follows_the_preset_until_set(window, tmp_path):
    tools = window.tabs["tools"]
    assert tools.spec.base_model == window.preset.model.base_model
    type_into(window.form.widget_for("model.base_model"), str(tmp_path))
    window.update()
    assert tools.spec.base_model == str(tmp_path)
    type_into(tools.spec_form.widget_for("base_model"), "my/own/model")
    type_into(window.form.widget_for("model.base_model"), str(tmp_path / "other"))
    window.update()
    assert tools.spec.base_model == "my/own/model"


def test_a_bad_spec_value_disables_generate_with_its_reason(window, tiny_model_dir, tmp_path):
    tools = window.tabs["tools"]
    window.tabview.set("tools")
    tools.set_spec(tiny_spec(tiny_model_dir, tmp_path / "out"))
    tools.validate_now()
    assert tools.start_button.cget("state") == "normal" and not tools.reasons
    type_into(tools.spec_form.widget_for("steps"), "many")
    window.update()
    tools.validate_now()
    assert tools.start_button.cget("state") == "disabled"
    assert "Steps: expected a whole number" in tools.problem_label.cget("text")
    window.update()
    assert tools.problem_label.winfo_ismapped()
    assert tools.start() is False and not tools.runner.running
    type_into(tools.spec_form.widget_for("steps"), "2")
    type_into(tools.spec_form.widget_for("width"), "36")
    window.update()
    tools.validate_now()
    assert "Width: must be a multiple of 8" in tools.problem_label.cget("text")
    type_into(tools.spec_form.widget_for("width"), "32")
    type_into(tools.spec_form.widget_for("base_model"), str(tmp_path / "nowhere"))
    window.update()
    tools.validate_now()
    assert "does not exist" in tools.problem_label.cget("text")
    assert tools.spec_form.bindings_for("base_model")[0].reason.endswith("does not exist")


def test_generate_data_runs_shows_images_and_adds_a_concept(window, tiny_model_dir, tmp_path, wait_for):
    tools = window.tabs["tools"]
    out = tmp_path / "squares"
    tools.set_spec(tiny_spec(tiny_model_dir, out))
    window.tabview.set("tools")
    assert tools.start(), tools.reasons
    assert tools.start_button.cget("text") == "Stop"
    wait_for(window, lambda: not tools.runner.running, "the generate-data run")
    assert tools.last_finished.outcome == "completed", tools.last_finished.message
    assert tools.count_label.cget("text") == "4 / 4"
    assert "Done" in tools.message_label.cget("text")
    assert len(tools.newest) == 4 and all(label.winfo_ismapped() for label, _ in tools.cards[:4])
    assert tools.cards[0][1].cget("text").startswith("gen, a blue square")  # newest first
    assert sorted(p.name for p in out.glob("*.txt")) == [f"00000{i}.txt" for i in range(4)]
    assert tools.add_button.winfo_ismapped()

    before = len(window.preset.concepts)
    assert tools.add_as_concept()
    concept = window.preset.concepts[-1]
    assert len(window.preset.concepts) == before + 1
    assert (concept.name, concept.path, concept.caption_source) == ("squares", str(out), "txt")
    window.validate_now()
    assert window.dirty
    concepts_tab = window.tabs["concepts"]
    assert concepts_tab.rows[-1][2].cget("text") == "squares" and concepts_tab.selected == before
    assert not tools.add_as_concept()  # already there
    assert "already a concept" in tools.message_label.cget("text")


def test_a_failed_run_shows_its_message_and_the_window_stays_usable(window, tmp_path, wait_for):
    tools = window.tabs["tools"]
    not_a_model = tmp_path / "empty"
    not_a_model.mkdir()
    tools.set_spec(tiny_spec(not_a_model, tmp_path / "out"))
    window.tabview.set("tools")
    assert tools.start(), tools.reasons
    wait_for(window, lambda: not tools.runner.running, "the failing run")
    assert tools.last_finished.outcome == "failed"
    assert tools.message_label.cget("text").startswith("Failed: ")
    assert tools.message_label.winfo_ismapped()
    assert tools.start_button.cget("state") == "normal" and tools.start_button.cget("text") == "Generate"
    window.validate_now()
    assert window.bottom.start_button.cget("state") == "normal"


def test_one_device_job_at_a_time(window, sessions, fake_session, tiny_model_dir, tmp_path, pump):
    tools, results = window.tabs["tools"], window.tabs["results"]
    tools.set_spec(tiny_spec(tiny_model_dir, tmp_path / "out"))
    assert window.start()  # a (fake) training
    tools.validate_now()
    assert tools.start_button.cget("state") == "disabled"
    assert "A training is running" in tools.problem_label.cget("text")
    assert tools.start() is False
    sessions[-1].finish("completed")
    pump(window)
    assert tools.start_button.cget("state") == "normal"

    tools.runner.session_factory = fake_session  # a fake generate-data session
    assert tools.start()
    assert window.start() is False
    window.validate_now()
    assert "Data generation is running" in window.bottom.problem.cget("text")
    results.spec.source = "models"
    results.validate_now()
    assert any("Data generation is running" in r for r in results.reasons)
    results.spec.source = "samples"  # reading sample files needs no device
    results.validate_now()
    assert not any("running" in r for r in results.reasons)
    tools.stop()
    pump(window)
    assert not tools.runner.running and tools.last_finished.outcome == "stopped"
    assert "Stopped" in tools.message_label.cget("text")
    window.validate_now()
    assert window.bottom.start_button.cget("state") == "normal"


def test_spec_files_save_and_load(window, tiny_model_dir, tmp_path):
    tools = window.tabs["tools"]
    spec = tiny_spec(tiny_model_dir, tmp_path / "out", total_images=7, caption_strip="blurry")
    tools.set_spec(spec)
    path = tmp_path / "spec.json"
    window.dialogs.save_path = str(path)
    tools.save_dialog()
    assert json.loads(path.read_text())["kind"] == "generate_data"
    tools.set_spec(GenerateDataSpec())
    window.dialogs.open_path = str(path)
    tools.load_dialog()
    assert tools.spec == spec
    assert tools.spec_form.widget_for("prompts").get_raw() == "a {red|blue} square"
    assert tools.spec_form.widget_for("total_images").get_raw() == "7"
    assert ("open spec", "generate-data") in window.dialogs.asked

    results = window.tabs["results"]
    assert not results.load_spec(path)  # a generate-data spec is not a comparison
    assert "generate_data" in results.message_label.cget("text")
    (tmp_path / "bad.json").write_text('{"version": 1, "kind": "generate_data", "stepz": 3}')
    assert not tools.load_spec(tmp_path / "bad.json")
    assert "stepz" in tools.message_label.cget("text") and tools.spec == spec

    type_into(tools.spec_form.widget_for("cfg_scale"), "loud")
    window.update()
    assert not tools.save_spec(tmp_path / "other.json")
    assert "Not saved: CFG scale" in tools.message_label.cget("text")
    assert not (tmp_path / "other.json").exists()


def test_closing_the_window_during_a_tool_run_stops_it_first(make_window, fake_session, tiny_model_dir, tmp_path,
                                                             pump):
    window = make_window(lazy=False)
    tools = window.tabs["tools"]
    tools.set_spec(tiny_spec(tiny_model_dir, tmp_path / "out"))
    tools.runner.session_factory = fake_session
    assert tools.start()
    session = tools.runner.session
    window.on_close()
    assert window.dialogs.asked[-1][1] == "Stop and close?"
    assert "Data generation is running" in window.dialogs.asked[-1][2]
    assert session.sent == [ev.STOP]
    pump(window, 0.3)
    assert window.closed
