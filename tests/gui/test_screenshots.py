"""A screenshot of every tab, a run in progress, an error state, the tools with results and the caption editor;
each is checked for what it must show. They go to a temporary folder, or to $SEACHANGE_SCREENSHOTS to look at."""
from __future__ import annotations

import math
import random
from pathlib import Path

from gui_helpers import screenshot
from PIL import Image, ImageDraw

from app.run_widgets import LR, RAW, SMOOTH
from app.widgets import ERROR, WARNING
from trainer import events as ev

SHAPES = ("red", "blue", "green")  # the sample and grid images' shapes


def dark(colour) -> str:
    """A CTk colour setting as dark mode draws it (CTk gives light and dark as a pair)."""
    return colour[1] if isinstance(colour, (list, tuple)) else colour


def fake_sample(folder: Path, index: int, step: int) -> str:
    image = Image.new("RGB", (128, 128), ("white", "black")[index % 2])
    colour = SHAPES[index % 3]
    r = 20 + step // 10
    ImageDraw.Draw(image).ellipse((64 - r, 64 - r, 64 + r, 64 + r), fill=colour)
    path = folder / f"{index}-{step}.png"
    image.save(path)
    return str(path)


def concept_images(folder: Path) -> Path:
    folder.mkdir()
    for i, (colour, shape) in enumerate([("red", "circle"), ("blue", "square"), ("green", "circle"),
                                         ("yellow", "square"), ("red", "square"), ("blue", "circle")]):
        image = Image.new("RGB", (96, 96), ("white", "black")[i % 2])
        draw = ImageDraw.Draw(image)
        (draw.ellipse if shape == "circle" else draw.rectangle)((22, 22, 74, 74), fill=colour)
        image.save(folder / f"{colour}_{shape}_{i}.png")
        if i != 4:
            (folder / f"{colour}_{shape}_{i}.txt").write_text(f"a {colour} {shape} on a "
                                                              f"{('white', 'black')[i % 2]} background\n")
    return folder


def test_screenshots_of_every_tab(window, sessions, pump, tmp_path, screenshots):
    if window.preset.concepts:
        window.preset.concepts[0].path = str(concept_images(tmp_path / "images"))
        window.form.refresh()
        window.tabs["concepts"].reload()
    for i, title in enumerate(window.tabs):
        if title not in ("run", "queue", "tools", "results"):  # shown with content below
            window.tabview.set(title)
            shot = screenshot(window, pump, screenshots, f"{i + 1}_{title}")
            frame = window.tabview.tab(title)
            shown = [b.labelled.label for b in window.form.bindings if b.path and b.path.startswith(f"{title}.")
                     and b.labelled and shot.inside(b.labelled.label, frame)]
            assert shown, f"{title}: none of its fields is shown"
            assert all(shot.colours(label) > 4 for label in shown), f"{title}: a field's label is blank"
            assert shot.colours(frame) > 40, f"{title}: the tab looks empty"
    assert window.start()
    q = sessions[-1].events
    q.put(ev.RunStarted("workspace/demo", 400, 4, "cpu"))
    rng, smooth = random.Random(0), 0.3
    for step in range(1, 241):
        loss = 0.08 + 0.2 * math.exp(-step / 60) + rng.uniform(-0.05, 0.05)
        smooth = 0.9 * smooth + 0.1 * loss
        lr = 3e-4 * min(1.0, step / 10)
        q.put(ev.Progress(step, 400, (step - 1) // 100, 4, step % 100 or 100, 100, loss, smooth, lr, 3.4, 47.0))
        if step % 60 == 0:
            for index in range(3):
                q.put(ev.SampleReady(fake_sample(tmp_path, index, step), index,
                                     ("a red circle on a white background", "a blue square on a black background",
                                      "a green triangle on a white background")[index], step,
                                     (step - 1) // 100 + 1))  # the 1-based epoch of that step, as the engine
    q.put(ev.Log("info", "Run started on cpu: 400 steps, 4 epochs"))
    q.put(ev.Log("warning", "3 images have no caption file; using the concept caption"))
    q.put(ev.Status("Training"))
    check_run(screenshot(window, pump, screenshots, "7_run"), window)
    sessions[-1].finish("failed", "Out of GPU memory: CUDA out of memory. Try a smaller batch size, gradient "
                                  "checkpointing, the 8-bit AdamW optimizer or the low-VRAM preset.")
    pump(window)
    entry = window.form.widget_for("training.learning_rate")
    entry.delete(0, "end")
    entry.insert(0, "fast")
    window.tabview.set("training")
    shot = screenshot(window, pump, screenshots, "8_training_error")
    binding = window.form.bindings_for("training.learning_rate")[0]
    assert shot.count(binding.widget, ERROR, 30) > 100, "the bad value's entry has no red border"
    assert shot.count(binding.labelled._error_label, ERROR, 60) > 20, "the reason line is not shown"
    assert shot.count(window.bottom.problem, WARNING, 60) > 20, "the bottom bar does not say why Start is off"


def test_screenshot_of_the_gpu_memory_estimate(window, pump, wait_for, tmp_path, tiny_model_dir, color_concept,
                                               screenshots):
    """The training tab's GPU-memory line with the real engine's estimate of the tiny model, then with a card too
    small for it (in the error colour)."""
    from tiny_presets import make_preset
    window.set_preset(make_preset(tmp_path, tiny_model_dir, color_concept, training={"resolution": "256"}), None)
    window.tabview.set("training")
    line = window.tabs["training"].memory_line
    wait_for(window, lambda: line.job is None and "about" in line.label.cget("text"), "an estimate", 60)
    area = line.master.master.master  # the line's group, its column, the tab's scrolling area
    top = line.winfo_rooty() - area.winfo_rooty() + area._parent_canvas.canvasy(0)
    area._parent_canvas.yview_moveto(max(0.0, top - 300) / area.winfo_height())
    shot = screenshot(window, pump, screenshots, "4_training_memory")
    frame = window.tabview.tab("training")
    for widget in (line.label, line.vram_entry, line.fit_button):
        assert shot.inside(widget, frame) and shot.colours(widget) > 4, f"{widget} is not shown"
    line.vram_entry.insert(0, "0.001")
    line.vram_changed()
    shot = screenshot(window, pump, screenshots, "4_training_memory_too_small")
    assert line.label.cget("text").endswith("(does not fit)")
    assert shot.count(line.label, ERROR, 40) > 40, "a card too small is not shown in the error colour"
    line.vram_entry.delete(0, "end")
    line.vram_changed()


def check_run(shot, window) -> None:
    """The run in progress: curves in the chart, each prompt's newest sample, the log lines, the step bar."""
    tab, bottom = window.run_tab, window.bottom
    for colour, what in ((RAW, "loss"), (SMOOTH, "smoothed loss"), (LR, "learning rate")):
        assert shot.count(tab.chart, colour, 12) > 150, f"the chart shows no {what} curve"
    cards = [card for card in tab.gallery.cards.values() if shot.inside(card[1], tab.gallery)]
    assert len(cards) >= 2, "the gallery shows fewer than two samples in full"
    for (image_label, caption), colour in zip(cards, SHAPES):
        assert shot.count(image_label, colour, 30) > 400, f"the {colour} sample is not shown"
        assert shot.colours(caption) > 4, f"the {colour} sample has no caption"
    assert shot.count(tab.log, WARNING, 60) > 20, "the log shows no warning line"
    assert shot.colours(tab.log) > 10, "the log is empty"
    assert bottom.step_label.cget("text") == "step 240/400" and shot.colours(bottom.step_label) > 4
    assert shot.count(bottom.step_bar, dark(bottom.step_bar.cget("progress_color")), 10) > 200, "no progress"


def shape_image(path: Path, i: int, size: int = 96) -> str:
    colour, shape = (("red", "circle"), ("blue", "square"), ("green", "circle"), ("yellow", "square"))[i % 4]
    image = Image.new("RGB", (size, size), ("white", "black")[i // 4 % 2])
    draw = ImageDraw.Draw(image)
    r = size // 4 + (i * 3) % (size // 8)
    (draw.ellipse if shape == "circle" else draw.rectangle)((size / 2 - r, size / 2 - r, size / 2 + r, size / 2 + r),
                                                            fill=colour)
    image.save(path)
    return str(path)


def test_screenshots_of_the_tools_results_and_caption_editor(window, fake_session, pump, tmp_path, screenshots):
    shoot_tools(window, fake_session, pump, tmp_path, screenshots)
    shoot_results(window, fake_session, pump, tmp_path, screenshots)
    window.preset.concepts[0].path = str(concept_images(tmp_path / "images"))
    window.form.refresh()
    concepts = window.tabs["concepts"]
    concepts.select(0)
    editor = concepts.open_caption_editor()
    editor.select(1)
    editor.set_text("a blue square on a black background, centred")
    editor.find_entry.insert(0, "background")
    editor.replace_entry.insert(0, "backdrop")
    editor.replace_all()
    try:
        shot = screenshot(editor, pump, screenshots, "12_caption_editor")
        assert shot.count(editor.preview, "blue", 30) > 1000, "the preview does not show the blue square"
        assert shot.colours(editor.caption) > 10, "the caption box is empty"
        assert shot.colours(editor.listbox) > 10 and shot.colours(editor.replace_result) > 4
    finally:
        editor.close()


def test_screenshot_of_captioning_with_a_model(window, fake_session, pump, tmp_path, screenshots):
    """The concepts tab's "Caption with a model…" view: mode all (its warning), the default Florence-2 repo (the
    download note), and a preview's proposals (fake events) under their thumbnails."""
    folder = concept_images(tmp_path / "images")
    window.preset.concepts[0].path = str(folder)
    window.form.refresh()
    concepts = window.tabs["concepts"]
    concepts.select(0)
    window.tabview.set("concepts")
    view = concepts.open_caption_models()
    try:
        view.form.widget_for("mode").set("all")
        view.runner.session_factory = fake_session
        assert view.preview(), view.reasons
        images = sorted(folder.glob("*.png"))[:4]
        for i, image in enumerate(images):
            colour, shape = image.stem.split("_")[:2]
            view.runner.session.events.put(ev.ImageGenerated(str(image), f"a {colour} {shape} in the middle of a "
                                                             "plain background, flat colours", i + 1, 4))
        view.runner.session.finish("completed", "4 caption(s) proposed; nothing was written")
        pump(window, 0.5)  # the counts of mode all (a worker thread), the events
        shot = screenshot(view, pump, screenshots, "13_caption_with_a_model")
        assert view.warning_label.cget("text").startswith("⚠ Mode all replaces 5 existing caption(s)")
        assert shot.count(view.warning_label, WARNING, 40) > 40, "the warning of mode all is not shown"
        assert "florence-community/Florence-2-base is not a folder here" in view.download_label.cget("text")
        assert shot.colours(view.download_label) > 4 and shot.colours(view.plan_label) > 4
        for (image, text), path in zip(view.card_widgets, images):
            colour = path.stem.split("_")[0]
            assert shot.count(image, colour, 40) > 300, f"the {colour} thumbnail is not shown"
            assert shot.colours(text) > 4, "a proposal has no text"
        labels = [b.labelled.label for b in view.form.bindings if b.labelled and b.labelled.label.winfo_viewable()]
        assert len(labels) >= 12 and all(shot.colours(label) > 4 for label in labels), "the form is not shown"
    finally:
        view.close_now()


def shoot_tools(window, fake_session, pump, tmp_path, screenshots) -> None:
    """Generate data half way (fake events), then completed with Add as concept."""
    tools = window.tabs["tools"]
    out = tmp_path / "generated"
    out.mkdir()
    tools.spec.base_model, tools.spec.output_dir = str(tmp_path), str(out)
    tools.spec.prompts = ["a {red|blue|green|yellow} {circle|square} on a {white|black} background",
                          "a __colour__ shape, flat colours"]
    tools.spec.caption_template, tools.spec.images_per_prompt = "shp, {prompt}", 2
    tools.set_spec(tools.spec)
    tools.runner.session_factory = fake_session
    window.tabview.set("tools")
    assert tools.start(), tools.reasons
    q = tools.runner.session.events
    q.put(ev.Status(f"Generating 16 of 16 images into {out}"))
    for i in range(7):
        colour, shape, ground = ("red", "blue", "green", "yellow")[i % 4], ("circle", "square")[i % 2], \
            ("white", "black")[i // 4 % 2]
        q.put(ev.ImageGenerated(shape_image(out / f"{i:06d}.png", i),
                                f"shp, a {colour} {shape} on a {ground} background", i + 1, 16))
    shot = screenshot(window, pump, screenshots, "9_tools_running")
    assert tools.count_label.cget("text") == "7 / 16" and shot.colours(tools.count_label) > 4
    newest, fourth = tools.cards[0][0], tools.cards[3][0]  # images 6 and 3: a green circle, a yellow square
    assert shot.count(newest, "green", 30) > 500 and shot.count(fourth, "yellow", 30) > 500, "the strip is empty"
    assert shot.colours(tools.spec_form.widget_for("prompts")) > 10, "the form is not shown"
    tools.runner.session.finish("completed", f"16 images generated (16 in all) in {out}", output_path=str(out))
    shot = screenshot(window, pump, screenshots, "9_tools_done")
    assert shot.colours(tools.add_button) > 4 and shot.colours(tools.message_label) > 4


def shoot_results(window, fake_session, pump, tmp_path, screenshots) -> None:
    """A grid of samples filling in (fake events), then the form of a models comparison."""
    from trainer.specs import CompareModel
    results = window.tabs["results"]
    window.tabview.set("results")
    results.runner.session_factory = fake_session
    (tmp_path / "samples").mkdir()
    results.spec.samples_dir = str(tmp_path)
    results.set_spec(results.spec)
    assert results.start(), results.reasons
    rows = ("a red circle on a white background", "a blue square on a black background",
            "a green triangle on a white background")
    columns = tuple(f"step {s} (epoch {s // 100})" for s in (0, 40, 80, 120, 160, 200, 240, 280, 320))
    q = results.runner.session.events
    q.put(ev.GridStarted(rows, columns, str(tmp_path / "compare.png")))
    for r in range(3):
        for c in range(len(columns) - (r == 2) * 3):
            q.put(ev.GridCell(fake_sample(tmp_path, r, 40 * c), r, c, r * len(columns) + c + 1, 27))
    shot = screenshot(window, pump, screenshots, "10_results_samples")
    assert results.count_label.cget("text") == "24 / 27" and shot.colours(results.count_label) > 4
    for colour in SHAPES[:2]:  # the third row is below the fold
        assert shot.count(results.grid_view.canvas, colour, 30) > 2000, f"no {colour} cells in the grid"
    results.runner.session.finish("completed", f"grid of 3 x 9 written to {tmp_path / 'compare.png'}",
                                  output_path=str(tmp_path / "compare.png"))
    results.spec_form.widget_for("source").set("models")
    results.add_model("base")
    results.add_model("trained")
    results.spec.models.append(CompareModel(str(tmp_path / "save" / "step-400.safetensors"), "step 400"))
    results.models_editor.rebuild()
    results.copy_prompts()
    results.spec.seeds = [1, 2]
    results.spec_form.refresh("seeds")
    results.validate_now()
    shot = screenshot(window, pump, screenshots, "11_results_models")
    assert len(results.spec.models) == 3 and shot.colours(results.models_editor) > 20, "no model rows"
    results.prompts_group.master._parent_canvas.yview_moveto(1.0)  # the prompts: below the models
    shot = screenshot(window, pump, screenshots, "11_results_prompts")
    assert shot.inside(results.prompts_editor, results.top_pane) and shot.colours(results.prompts_editor) > 20, \
        "no prompt rows"


def test_screenshots_of_the_queue_and_a_sweep_side_by_side(window, fake_session, pump, tmp_path, tiny_model_dir,
                                                           color_concept, screenshots):
    """The queue tab with a sweep part done, one run training (fake events) and a failed entry; then the sweep's
    runs side by side in the results tab, from sample files in their workspaces."""
    from tiny_presets import make_preset

    from app.queue_list import STATUS_COLOURS
    from app.widgets import SUCCESS
    from trainer.tools.run_queue import QueueState, RunState, write_state
    window.set_preset(make_preset(tmp_path, tiny_model_dir, color_concept), tmp_path / "portrait.json")
    tab, path = window.tabs["queue"], tmp_path / "queue.json"
    tab.set_path(path)
    window.tabview.set("queue")
    assert tab.add_current() and tab.add_current()
    assert tab.set_sweep(0, {"training.learning_rate": [1e-6, 2e-6, 5e-6]}) is None
    names = [f"portrait-1__learning_rate={lr}" for lr in ("1e-06", "2e-06", "5e-06")]
    workspaces = [tmp_path / "ws" / name for name in names]
    write_state(path, QueueState({
        names[0]: RunState("completed", final_loss=0.1234, model=str(tmp_path / f"out-{names[0]}.safetensors"),
                           workspace=str(workspaces[0])),
        names[1]: RunState("running", workspace=str(workspaces[1])),
        "portrait-2": RunState("failed", "No images found in the concept folder", workspace="ws/portrait-2")}))
    tab.refresh()
    dialog = tab.open_sweep_dialog(1)
    try:
        dialog.set_text("training.learning_rate = 1e-6, 2e-6\ntraining.optimiser = adamw, lion")
        assert not dialog.apply()
        shot = screenshot(dialog, pump, screenshots, "8_queue_sweep_refused")
        assert shot.count(dialog.error, ERROR, 60) > 40, "the engine's refusal is not shown in red"
        assert shot.colours(dialog.text) > 10, "the sweep's lines are not shown"
    finally:
        dialog.answer(None)
    tab.runner.session_factory = fake_session
    assert tab.start()
    tab.runner.session.events.put(ev.QueueRunState(names[1], "running", workspace=str(workspaces[1])))
    tab.runner.session.events.put(ev.Progress(120, 400, 0, 4, 20, 100, 0.2, 0.1832, 2e-6, 3.4, 47.0))
    tab.list.select_entry(0)
    shot = screenshot(window, pump, screenshots, "8_queue_running")
    tree = tab.list.tree
    assert shot.count(tree, SUCCESS, 40) > 30, "the completed run is not shown in green"
    assert shot.count(tree, STATUS_COLOURS["running"], 40) > 30, "the running run is not shown"
    assert shot.count(tree, STATUS_COLOURS["failed"], 40) > 30, "the failed entry is not shown in red"
    assert shot.count(tab.stop_button, dark(tab.stop_button.cget("fg_color")), 10) > 500, "Stop is not on"
    assert "step 120/400" in tab.status_label.cget("text") and shot.colours(tab.status_label) > 4
    tab.runner.session.finish("stopped", f"Queue stopped during run {names[1]} (step 120); run the queue again to "
                                         f"continue: {names[1]} continues from its last backup.")
    pump(window)

    for i, workspace in enumerate(workspaces[:2]):
        (workspace / "samples").mkdir(parents=True)
        for prompt in range(2):
            for step in (100, 200):
                shape_image(workspace / "samples" / f"step{step:07d}-epoch0001-prompt{prompt:02d}-seed1.png",
                            i * 2 + prompt)
    tab.buttons["Compare samples"].invoke()
    results = window.tabs["results"]
    shot = screenshot(window, pump, screenshots, "11_results_sweep")
    grid = results.grid_view
    assert grid.column_labels[2] == "learning_rate = 5e-06\n(no samples yet)"
    for colour in ("red", "blue", "green"):  # the first run's two prompts, the second's first
        assert shot.count(grid.canvas, colour, 30) > 1000, f"no {colour} cells in the grid"
    assert shot.inside(results.sweep_picker.show_button, results.top_pane), "the sweep's row is not in view"
