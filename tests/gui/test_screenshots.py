"""Writes a screenshot of every tab, a run in progress and an error state to tests/screenshots/ (gitignored)."""
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
        if title != "run":
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
