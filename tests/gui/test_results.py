"""The results tab: a grid from a run's sample files, a grid of two real tiny models, and the spec form's helpers."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gui_helpers import screenshot
from PIL import Image

from trainer import events as ev
from trainer.config import SamplePrompt
from trainer.specs import CompareModel, CompareSpec


@pytest.fixture(scope="module")
def second_model(tmp_path_factory):
    from trainer.tools.demo import build_tiny_components, save_diffusers_folder
    return save_diffusers_folder(build_tiny_components(seed=1), tmp_path_factory.mktemp("tiny1") / "model")


def fake_samples(workspace: Path) -> Path:
    """Sample files of two prompts at steps 10, 20, 30 (epochs 0, 0, 1) in workspace/samples."""
    folder = workspace / "samples"
    folder.mkdir(parents=True)
    for step, epoch in ((10, 0), (20, 0), (30, 1)):
        for prompt, colour in ((0, "red"), (1, "blue")):
            Image.new("RGB", (48, 48), colour).save(folder / f"step{step:07d}-epoch{epoch:04d}-prompt{prompt:02d}"
                                                             f"-seed{prompt + 1}.png")
    return workspace


def run(window, tab, wait_for):
    assert tab.start(), tab.reasons
    wait_for(window, lambda: not tab.runner.running, "the comparison")
    return tab.last_finished


def test_samples_of_a_run_fill_the_grid_and_export_it(window, tmp_path, wait_for):
    results = window.tabs["results"]
    window.tabview.set("results")
    out = tmp_path / "grid.png"
    results.set_spec(CompareSpec(source="samples", samples_dir=str(fake_samples(tmp_path / "ws")),
                                 output_png=str(out), cell_size=64))
    finished = run(window, results, wait_for)
    assert finished.outcome == "completed", finished.message
    grid = results.grid_view
    assert grid.row_labels == ["prompt 0", "prompt 1"]
    assert grid.column_labels == ["step 10 (epoch 0)", "step 20 (epoch 0)", "step 30 (epoch 1)"]
    assert set(grid.photos) == {(r, c) for r in range(2) for c in range(3)}
    assert grid.paths[(1, 2)].endswith("step0000030-epoch0001-prompt01-seed2.png")
    assert out.exists() and Image.open(out).size[0] > 3 * 64
    assert results.count_label.cget("text") == "6 / 6"
    assert str(out) in results.message_label.cget("text") and "exported to" in grid.title.cget("text")
    top = grid.open_cell(0, 1)
    assert top is not None and "step 20" in top.title()
    top.close()

    results.spec_form.widget_for("columns").set("epochs")
    window.update()
    window.dialogs.choose_answers = ["Replace"]  # the grid of the first run is there
    finished = run(window, results, wait_for)
    assert finished.outcome == "completed"
    assert grid.column_labels == ["epoch 0 (step 20)", "epoch 1 (step 30)"]


def test_a_samples_comparison_may_run_during_a_training(window, sessions, tmp_path, wait_for, pump):
    results = window.tabs["results"]
    results.set_spec(CompareSpec(samples_dir=str(fake_samples(tmp_path / "ws")), output_png=str(tmp_path / "g.png")))
    assert window.start()
    try:
        assert run(window, results, wait_for).outcome == "completed"
    finally:
        sessions[-1].finish("stopped")
        pump(window)


def test_two_models_fill_every_cell(window, tiny_model_dir, second_model, tmp_path, wait_for):
    results = window.tabs["results"]
    window.tabview.set("results")
    prompt = SamplePrompt(prompt="a red square", steps=2, width=32, height=32, sampler="ddim", cfg_scale=1.0)
    spec = CompareSpec(source="models", models=[CompareModel(str(tiny_model_dir), "first"),
                                                CompareModel(str(second_model), "")],
                       prompts=[prompt], seeds=[1, 2], output_png=str(tmp_path / "models.png"), cell_size=32,
                       device="cpu")
    results.set_spec(spec)
    window.update()
    assert results.models_group.winfo_ismapped()
    assert results.spec_form.widget_for("seeds").get_raw() == "1, 2"
    finished = run(window, results, wait_for)
    assert finished.outcome == "completed", finished.message
    grid = results.grid_view
    assert grid.column_labels == ["first", "model"]
    assert grid.row_labels == ["a red square (seed 1)", "a red square (seed 2)"]
    assert set(grid.photos) == {(0, 0), (0, 1), (1, 0), (1, 1)}
    assert (tmp_path / "models.png").exists()


def test_models_form_helpers_and_source_switch(window, tmp_path):
    results = window.tabs["results"]
    window.tabview.set("results")
    window.update()
    samples_row = results.field_rows["samples_dir"].labelled
    assert samples_row.label.winfo_ismapped() and not results.models_group.winfo_ismapped()
    results.spec_form.widget_for("source").set("models")
    window.update()
    assert results.spec.source == "models"
    assert not samples_row.label.winfo_ismapped() and results.models_group.winfo_ismapped()
    assert results.field_rows["device"].labelled.label.winfo_ismapped()

    results.add_model("base")
    results.add_model("trained")
    assert [(m.path, m.label) for m in results.spec.models] == [
        (window.preset.model.base_model, "base"), (window.preset.model.output_path, "trained")]
    assert results.spec_form.widget_for("models.1.path").get_raw() == window.preset.model.output_path
    results.copy_prompts()
    assert results.spec.prompts == window.preset.sampling.prompts
    assert results.spec.prompts is not window.preset.sampling.prompts
    assert len(results.prompts_editor.rows) == len(window.preset.sampling.prompts)

    seeds = results.spec_form.widget_for("seeds")
    seeds.delete(0, "end")
    seeds.insert(0, "3, 4,5")
    window.update()
    assert results.spec.seeds == [3, 4, 5]
    seeds.insert("end", ", x")
    window.update()
    results.validate_now()
    assert results.spec.seeds == [3, 4, 5]
    assert any("Seeds: expected whole numbers" in r for r in results.reasons)
    assert results.start_button.cget("state") == "disabled"


def test_run_folder_and_export_follow_the_workspace(window, tmp_path):
    results = window.tabs["results"]
    workspace = window.preset.general.workspace_dir
    assert results.spec.samples_dir == workspace
    assert results.spec.output_png == str(Path(workspace) / "compare.png")
    entry = window.form.widget_for("general.workspace_dir").entry
    entry.delete(0, "end")
    entry.insert(0, str(tmp_path / "ws2"))
    window.update()
    assert results.spec.samples_dir == str(tmp_path / "ws2")


def test_thumbnail_size_scales_the_images_and_the_grid_takes_the_height(window, fake_session, tmp_path, pump,
                                                                       screenshots):
    results = window.tabs["results"]
    window.tabview.set("results")
    results.runner.session_factory = fake_session
    results.set_spec(CompareSpec(samples_dir=str(fake_samples(tmp_path / "ws")), output_png=str(tmp_path / "g.png")))
    window.update()
    assert results.start(), results.reasons
    q = results.runner.session.events
    q.put(ev.GridStarted(("prompt 0", "prompt 1"), ("step 10 (epoch 0)", "step 20 (epoch 0)", "step 30 (epoch 1)"),
                         str(tmp_path / "g.png")))
    for k, path in enumerate(sorted((tmp_path / "ws" / "samples").iterdir())):  # step by step, prompt 0 then 1
        q.put(ev.GridCell(str(path), k % 2, k // 2, k + 1, 6))
    pump(window, 0.3)
    grid = results.grid_view
    try:
        paned = results.paned.winfo_height()
        assert grid.winfo_height() >= grid.wanted_height() - 2, "the grid's rows do not fit though there is room"
        box = grid.canvas.bbox("cell0_0")
        assert box[2] - box[0] == 96, "a 48 px sample is not enlarged to the 128 px thumbnail size"
        small = screenshot(window, pump, screenshots, "results_grid_128").count(grid.canvas, "red", 30)

        grid.set_cell_size(256)
        pump(window, 0.3)
        box = grid.canvas.bbox("cell0_0")
        assert box[2] - box[0] == 240 and grid.size_menu.get() == "256", "the 256 px thumbnails are not bigger"
        shot = screenshot(window, pump, screenshots, "results_grid_256")
        assert shot.count(grid.canvas, "red", 30) > 3 * small, "the grid does not show bigger images"
        assert grid.wanted_height() > paned
        assert grid.winfo_height() >= paned - 100 - 8 - 2, "the grid does not take the tab's height"
    finally:
        results.runner.session.finish("completed", "grid written", output_path=str(tmp_path / "g.png"))
        pump(window)


def test_a_grid_laid_out_before_its_tab_was_shown_gets_the_height(make_window, pump):
    window = make_window(lazy=False)
    results = window.tabs["results"]
    assert results.paned.winfo_height() <= 1, "the results tab was laid out already"
    results.grid_view.layout(("a", "b", "c"), ("1", "2"))  # as a GridStarted does
    window.tabview.set("results")
    pump(window, 0.3)
    room = results.paned.winfo_height() - 100 - 8  # all but the form's least and the bar
    assert results.grid_view.winfo_height() >= min(results.grid_view.wanted_height(), room) - 2


def test_an_existing_grid_is_written_over_only_when_the_user_says_so(window, tmp_path, wait_for):
    results = window.tabs["results"]
    out = tmp_path / "grid.png"
    out.write_bytes(b"an earlier grid")
    results.set_spec(CompareSpec(samples_dir=str(fake_samples(tmp_path / "ws")), output_png=str(out), cell_size=16))
    window.dialogs.choose_answers = [None]
    assert results.start() is False and not results.runner.running
    title, message, options = window.dialogs.chosen()[-1]
    assert str(out) in message and options == ["Replace grid.png", "Save as grid-2.png"]

    window.dialogs.choose_answers = ["Save as"]
    assert run(window, results, wait_for).outcome == "completed"
    assert results.spec.output_png == str(tmp_path / "grid-2.png")
    assert results.spec_form.widget_for("output_png").get_raw() == str(tmp_path / "grid-2.png")
    assert Image.open(tmp_path / "grid-2.png").size[0] > 16 and out.read_bytes() == b"an earlier grid"

    results.spec.output_png = str(out)
    results.spec_form.refresh("output_png")
    window.dialogs.choose_answers = ["Replace"]
    assert run(window, results, wait_for).outcome == "completed"
    assert Image.open(out).format == "PNG" and results.spec.replace_output is False  # for that run only

    results.spec_form.widget_for("replace_output").toggle()  # the switch: no question
    asked = len(window.dialogs.chosen())
    assert run(window, results, wait_for).outcome == "completed" and len(window.dialogs.chosen()) == asked


def test_the_seeds_hint_sits_below_the_prompts_heading(window):
    results = window.tabs["results"]
    window.tabview.set("results")
    results.spec_form.widget_for("source").set("models")
    window.update()
    assert not results.spec.prompts  # the empty list: the heading's row holds the heading alone
    (title,) = results.prompts_group.grid_slaves(row=0, column=0)
    assert results.seeds_hint.winfo_rooty() >= title.winfo_rooty() + title.winfo_height()
    seeds = results.spec_form.widget_for("seeds")
    assert results.seeds_hint.winfo_rooty() >= seeds.winfo_rooty() + seeds.winfo_height()


def test_the_models_list_edits_each_models_lora_and_its_strengths(window, tmp_path, pump, screenshots):
    from app.widgets import NumberField, PathField, TextField
    from gui_helpers import type_into
    results = window.tabs["results"]
    window.tabview.set("results")
    model = tmp_path / "model"
    model.mkdir()
    style = tmp_path / "style.safetensors"
    style.write_bytes(b"")  # the tab checks that it exists; the comparison reads it when it runs
    prompt = SamplePrompt(prompt="a red square", steps=2, width=32, height=32)
    results.set_spec(CompareSpec(source="models", models=[CompareModel(str(model), "base"),
                                                          CompareModel(str(model), "")], prompts=[prompt]))
    window.update()
    editor = results.models_editor
    headings = sorted((int(w.grid_info()["column"]), w.cget("text")) for w in editor.table.grid_slaves(row=0))
    assert [text for _, text in headings] == ["Model", "Label", "LoRA", "LoRA strength"]
    lora, strength = (results.spec_form.widget_for(f"models.1.{name}") for name in ("lora", "lora_strength"))
    assert isinstance(lora, PathField) and isinstance(strength, NumberField)
    assert editor.rows[1][2] is lora and editor.rows[1][3] is strength  # in the model's row, under the headings

    assert strength.cget("state") == "disabled"  # no LoRA on this model: its strength does not apply
    type_into(lora, str(style))
    window.update()
    results.validate_now()
    assert strength.cget("state") == "normal"
    type_into(strength, "0.75")
    strengths = results.spec_form.widget_for("lora_strengths")
    assert isinstance(strengths, TextField) and results.field_rows["lora_strengths"].labelled.label.cget(
        "text") == "LoRA strengths"
    type_into(strengths, "0, 0.5, 1")
    window.update()
    assert results.spec.models[1].lora == str(style) and results.spec.models[1].lora_strength == 0.75
    assert results.spec.lora_strengths == [0.0, 0.5, 1.0]
    assert results.validate_now() == [] and results.start_button.cget("state") == "normal"
    assert strength.cget("state") == "disabled"  # the strengths for all replace the model's own
    assert results.spec_form.widget_for("models.0.lora_strength").cget("state") == "disabled"

    assert results.field_rows["lora_strengths"].labelled.label.winfo_ismapped()  # beside the other model settings
    area = results.models_group.master
    area._parent_canvas.yview_moveto(results.models_group.winfo_y() / area.winfo_height())  # the model rows
    shot = screenshot(window, pump, screenshots, "results_models_lora")
    group = results.models_group
    right = group.winfo_rootx() + group.winfo_width()
    for widget in editor.rows[1]:  # the row fits in its group, nothing cut at the right
        assert widget.winfo_ismapped() and widget.winfo_rootx() + widget.winfo_width() <= right
    assert shot.inside(lora, results.top_pane) and shot.inside(strength, results.top_pane)
    assert shot.colours(lora) > 4 and shot.colours(strength) > 4  # drawn, not blank
    assert results.models_group.cget("height") and "a column per LoRA strength" in " ".join(
        w.cget("text") for w in results.models_group.grid_slaves(row=0))

    # What cannot run is refused before it starts, naming the field.
    type_into(lora, str(tmp_path / "nowhere.safetensors"))
    window.update()
    assert any(r.startswith("Model 2 › LoRA: ") and "does not exist" in r for r in results.validate_now())
    type_into(lora, str(tmp_path / "style.ckpt"))
    window.update()
    assert any(r.startswith("Model 2 › LoRA: ") and "not a .safetensors" in r for r in results.validate_now())
    type_into(lora, str(style))
    type_into(strengths, "0, half")
    window.update()
    assert any(r.startswith("LoRA strengths: expected numbers") for r in results.validate_now())
    assert results.start() is False and not results.runner.running
    type_into(strengths, "0, 20")
    window.update()
    assert any("LoRA strength 2: 20 is outside -10 .. 10" in r for r in results.validate_now())
    type_into(strengths, "")
    window.update()
    assert results.validate_now() == [] and results.spec.lora_strengths == []
    results.spec_form.widget_for("source").set("samples")  # the strengths are a setting of model comparisons
    window.update()
    assert not strengths.winfo_ismapped() and not results.models_group.winfo_ismapped()


def test_a_lora_at_three_strengths_fills_a_column_each(window, tiny_model_dir, tmp_path, wait_for, pump,
                                                       screenshots):
    from lora_helpers import write_tiny_lora
    results = window.tabs["results"]
    window.tabview.set("results")
    style = write_tiny_lora(tiny_model_dir, tmp_path / "style.safetensors")
    prompt = SamplePrompt(prompt="a red square", steps=2, width=32, height=32, sampler="ddim", cfg_scale=1.0)
    results.set_spec(CompareSpec(source="models", models=[CompareModel(str(tiny_model_dir), "tiny", lora=str(style))],
                                 lora_strengths=[0, 0.5, 1], prompts=[prompt], seeds=[1],
                                 output_png=str(tmp_path / "lora.png"), cell_size=32, device="cpu"))
    finished = run(window, results, wait_for)
    assert finished.outcome == "completed", finished.message
    grid = results.grid_view
    assert grid.column_labels == ["tiny @ 0 (no LoRA)", "tiny @ 0.5", "tiny @ 1"]
    assert set(grid.photos) == {(0, 0), (0, 1), (0, 2)}
    cells = [np.asarray(Image.open(grid.paths[(0, c)])).astype(int) for c in range(3)]
    assert 0 < np.abs(cells[1] - cells[0]).mean() < np.abs(cells[2] - cells[0]).mean()
    screenshot(window, pump, screenshots, "results_lora_grid")

    style.write_bytes(b"not a safetensors file")  # refused by the comparison, naming the field
    results.spec.output_png = str(tmp_path / "again.png")
    finished = run(window, results, wait_for)
    assert finished.outcome != "completed" and "models.0.lora" in finished.message
    assert finished.message.startswith(f"models.0.lora: {style} is not a readable .safetensors file")
    assert results.message_label.cget("text").startswith("Failed: models.0.lora: ")


def test_the_trained_model_of_a_lora_or_embedding_run(window):
    """A LoRA run's trained model is its base with the LoRA (a LoRA column); an embedding is no model: nothing is
    added and the bottom bar says to compare its samples."""
    results = window.tabs["results"]
    window.preset.training.method = "lora"
    results.add_model("trained")
    assert [(m.path, m.lora, m.label) for m in results.spec.models] == [
        (window.preset.model.base_model, window.preset.model.output_path, "trained")]
    window.preset.training.method = "embedding"
    results.add_model("trained")
    window.update()
    assert len(results.spec.models) == 1 and "An embedding is a word" in window.bottom.message.cget("text")
