"""Writes a screenshot of every tab, a run in progress, an error state, the tools with results and the caption
editor to tests/screenshots/ (gitignored)."""
from __future__ import annotations

import math
import random
from pathlib import Path

from PIL import Image, ImageDraw, ImageGrab

from trainer import events as ev

SCREENSHOTS = Path(__file__).resolve().parents[1] / "screenshots"


def grab(window, pump, name: str) -> Path:
    pump(window, 0.35)
    x, y = window.winfo_rootx(), window.winfo_rooty()
    image = ImageGrab.grab(bbox=(x, y, x + window.winfo_width(), y + window.winfo_height()))
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    image.save(path)
    assert len(image.getcolors(1 << 20) or range(99)) > 8, f"{name}: the screenshot is blank"
    return path


def fake_sample(folder: Path, index: int, step: int) -> str:
    image = Image.new("RGB", (128, 128), ("white", "black")[index % 2])
    colour = ("red", "blue", "green")[index % 3]
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


def test_screenshots_of_every_tab(window, sessions, pump, tmp_path):
    if window.preset.concepts:
        window.preset.concepts[0].path = str(concept_images(tmp_path / "images"))
        window.form.refresh()
        window.tabs["concepts"].reload()
    for i, title in enumerate(window.tabs):
        if title not in ("run", "tools", "results"):  # shown with content below
            window.tabview.set(title)
            grab(window, pump, f"{i + 1}_{title}")
    assert window.start()
    q = sessions[-1].events
    q.put(ev.RunStarted("workspace/demo", 400, 4, "cpu"))
    rng, smooth = random.Random(0), 0.3
    for step in range(1, 241):
        loss = 0.08 + 0.2 * math.exp(-step / 60) + rng.uniform(-0.05, 0.05)
        smooth = 0.9 * smooth + 0.1 * loss
        lr = 3e-4 * min(1.0, step / 10)
        q.put(ev.Progress(step, 400, step // 100, 4, step % 100 or 100, 100, loss, smooth, lr, 3.4, 47.0))
        if step % 60 == 0:
            for index in range(3):
                q.put(ev.SampleReady(fake_sample(tmp_path, index, step), index,
                                     ("a red circle on a white background", "a blue square on a black background",
                                      "a green triangle on a white background")[index], step, step // 100))
    q.put(ev.Log("info", "Run started on cpu: 400 steps, 4 epochs"))
    q.put(ev.Log("warning", "3 images have no caption file; using the concept caption"))
    q.put(ev.Status("Training"))
    grab(window, pump, "7_run")
    sessions[-1].finish("failed", "Out of GPU memory: CUDA out of memory. Try a smaller batch size, gradient "
                                  "checkpointing, the 8-bit AdamW optimizer or the low-VRAM preset.")
    pump(window)
    entry = window.form.widget_for("training.learning_rate")
    entry.delete(0, "end")
    entry.insert(0, "fast")
    window.tabview.set("training")
    grab(window, pump, "8_training_error")


def shape_image(path: Path, i: int, size: int = 96) -> str:
    colour, shape = (("red", "circle"), ("blue", "square"), ("green", "circle"), ("yellow", "square"))[i % 4]
    image = Image.new("RGB", (size, size), ("white", "black")[i // 4 % 2])
    draw = ImageDraw.Draw(image)
    r = size // 4 + (i * 3) % (size // 8)
    (draw.ellipse if shape == "circle" else draw.rectangle)((size / 2 - r, size / 2 - r, size / 2 + r, size / 2 + r),
                                                            fill=colour)
    image.save(path)
    return str(path)


def test_screenshots_of_the_tools_results_and_caption_editor(window, fake_session, pump, tmp_path):
    shoot_tools(window, fake_session, pump, tmp_path)
    shoot_results(window, fake_session, pump, tmp_path)
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
        grab(editor, pump, "12_caption_editor")
    finally:
        editor.close()


def shoot_tools(window, fake_session, pump, tmp_path) -> None:
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
    grab(window, pump, "9_tools_running")
    tools.runner.session.finish("completed", f"16 images generated (16 in all) in {out}", output_path=str(out))
    grab(window, pump, "9_tools_done")


def shoot_results(window, fake_session, pump, tmp_path) -> None:
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
    grab(window, pump, "10_results_samples")
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
    grab(window, pump, "11_results_models")
