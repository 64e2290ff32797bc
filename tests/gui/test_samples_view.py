"""Samples you can see: the run tab's strip of samples per prompt, the viewer (scaled up, arrow keys, Escape), and
the same step and epoch for a sample in the gallery, the viewer, the results grid and its file name."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from gui_helpers import screenshot
from PIL import Image, ImageDraw, ImageTk

from app.sample_gallery import GAP, STRIP
from app.sample_viewer import scaled
from app.widgets import show_image_window
from trainer import events as ev
from trainer.specs import CompareSpec
from trainer.train.sampling import sample_path

COLOURS = ("red", "blue")


def sample_file(folder: Path, index: int, step: int, epoch: int, size: int = 64) -> ev.SampleReady:
    """A sample as the engine writes it (its file name from trainer.train.sampling): a disc in the prompt's colour, as
    wide as the step says, on white, two colours only (no antialiasing); seed 7 + the prompt's index."""
    folder.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", (size, size), "white")
    r = 8 + step // 10 % 20
    ImageDraw.Draw(image).ellipse((size / 2 - r, size / 2 - r, size / 2 + r, size / 2 + r), fill=COLOURS[index])
    path = sample_path(folder, step, epoch, index, 7 + index)
    image.save(path)
    return ev.SampleReady(str(path), index, f"a {COLOURS[index]} circle, prompt {index}", step, epoch)


@pytest.fixture
def running(window, sessions, pump):
    assert window.start()
    yield window, sessions[-1]
    if window.runner.running:
        window.runner.session.finish("stopped")
        pump(window)


def numbers(text: str) -> tuple[int, int]:
    """(step, epoch) as a text says them: "step 30 · epoch 3", "step 30 (epoch 3)", "step0000030-epoch0003"."""
    step = re.search(r"step[ ]?0*(\d+)", text)
    epoch = re.search(r"epoch[ ]?0*(\d+)", text)
    assert step and epoch, f"no step and epoch in {text!r}"
    return int(step.group(1)), int(epoch.group(1))


def test_scaled_enlarges_tiny_images_sharply_by_a_whole_factor():
    tiny = Image.new("RGB", (64, 64), "white")
    ImageDraw.Draw(tiny).ellipse((10, 10, 50, 50), fill="red")
    big = scaled(tiny, 700, 600)
    assert big.size == (576, 576)  # 9 x 64: the largest whole factor that fits
    assert len(big.getcolors()) == 2  # nearest-neighbour: no blended edge pixels
    assert np.array_equal(np.asarray(big)[::9, ::9], np.asarray(tiny))
    assert scaled(tiny, 100, 90).size == (90, 90)  # under twice: a smooth resize to fit
    assert scaled(Image.new("RGB", (512, 256)), 128, 128).size == (128, 64)


def test_the_run_tab_shows_a_strip_of_samples_per_prompt(running, tmp_path, pump, screenshots):
    window, session = running
    for step in range(0, 60, 10):
        for index in range(2):
            session.events.put(sample_file(tmp_path / "samples", index, step, 1 + step // 20))
    pump(window, 0.4)
    gallery = window.run_tab.gallery
    rows = [gallery.rows[index] for index in range(2)]
    fit = (rows[0].strip.winfo_width() - GAP) // (STRIP + GAP)
    assert fit >= 5, "the strip has room for fewer than five samples"
    for row in rows:
        steps = [s.step for s in row.chosen]
        assert steps[0] == 0 and steps[-1] == 50 and len(steps) == min(6, fit) and steps == sorted(steps)
    shot = screenshot(window, pump, screenshots, "samples_strip")
    for row, colour in zip(rows, COLOURS):
        assert shot.count(row.strip, colour, 30) > len(row.chosen) * 80, f"the {colour} strip shows no samples"
        assert shot.count(row.strip, "white", 10) > len(row.chosen) * 1000
        assert shot.count(row.image, colour, 30) > 1500, f"the {colour} sample at the newest step is not shown"
    assert "step 50" in rows[0].caption.cget("text")

    gallery.show_step(2)  # looking back: step 20 is the chosen sample, outlined in the strip
    assert gallery.shown[0].step == 20 and "step 20" in rows[0].caption.cget("text")
    assert 20 in [s.step for s in rows[0].chosen]
    k = [s.step for s in rows[0].chosen].index(20)
    rows[0].strip.event_generate("<Button-1>", x=GAP + k * (STRIP + GAP) + STRIP // 2, y=STRIP // 2)
    viewer = gallery.viewer
    assert viewer is not None and viewer.item.path == gallery.shown[0].path
    viewer.close()
    gallery.show_step(len(gallery.steps) - 1)

    for step in range(60, 400, 10):  # more steps than the strip holds: spread over the run, first and newest kept
        session.events.put(sample_file(tmp_path / "samples", 0, step, 1 + step // 20))
    pump(window, 0.4)
    steps = [s.step for s in rows[0].chosen]
    assert len(steps) == fit and steps[0] == 0 and steps[-1] == 390
    assert all(b - a >= 40 for a, b in zip(steps, steps[1:])), steps

    session.events.put(sample_file(tmp_path / "samples", 0, 300, 16))  # a resumed run samples step 300 again
    pump(window)
    assert max(s.step for s in gallery.samples if s.prompt_index == 0) == 300
    assert gallery.shown[0].step == 300 and [s.step for s in gallery.samples].count(300) == 1


def test_the_viewer_scales_a_sample_up_and_steps_through_prompts_and_steps(running, tmp_path, pump, screenshots):
    window, session = running
    for step in (0, 10, 20):
        for index in range(2):
            session.events.put(sample_file(tmp_path / "samples", index, step, 1 + step // 20))
    pump(window)
    gallery = window.run_tab.gallery
    gallery.rows[0].image.event_generate("<Button-1>")  # a click on prompt 0's sample (step 20)
    viewer = gallery.viewer
    pump(window, 0.3)
    try:
        assert viewer.item.row == 0 and viewer.item.column == 20
        assert viewer.heading.cget("text") == "a red circle, prompt 0"
        assert viewer.details.cget("text") == "seed 7 · step 20 · epoch 2"
        assert viewer.path.get() == gallery.shown[0].path
        width, height = viewer.canvas.winfo_width(), viewer.canvas.winfo_height()
        photo = ImageTk.getimage(viewer.photo).convert("RGB")
        assert photo.width % 64 == 0 and photo.width >= 5 * 64, "the 64 px sample is not enlarged by a whole factor"
        assert photo.width > 0.8 * min(width, height), "the sample does not fill the window"
        assert len(photo.getcolors()) == 2, "the sample is smoothed, not enlarged pixel by pixel"
        shot = screenshot(viewer, pump, screenshots, "samples_viewer")
        red = dict((colour, n) for n, colour in photo.getcolors())[(255, 0, 0)]
        assert shot.count(viewer.canvas, "red", 30) >= 0.95 * red, "the viewer does not show the sample"
        assert shot.colours(viewer.details) > 4 and shot.colours(viewer.heading) > 4

        viewer.focus_force()
        window.update()
        for key, (prompt, step) in (("Left", (0, 10)), ("Left", (0, 0)), ("Left", (0, 0)), ("Down", (1, 0)),
                                    ("Right", (1, 10)), ("Down", (1, 10)), ("Up", (0, 10)), ("Right", (0, 20))):
            viewer.event_generate(f"<{key}>")
            window.update()
            assert (viewer.item.row, viewer.item.column) == (prompt, step), f"after {key}"
        assert "seed 7 · step 20" in viewer.title() and viewer.details.cget("text").endswith("epoch 2")
        session.events.put(sample_file(tmp_path / "samples", 0, 30, 2))  # a new sample is reached at once
        pump(window)
        viewer.event_generate("<Right>")
        assert viewer.item.column == 30
        viewer.event_generate("<Escape>")
        window.update()
        assert not viewer.winfo_exists()
    finally:
        if viewer.winfo_exists():
            viewer.close()


def test_step_and_epoch_agree_in_the_gallery_the_viewer_the_grid_and_the_file_name(running, tmp_path, pump,
                                                                                     wait_for):
    """The engine names a sample's file, and says in its SampleReady, the step and the (1-based) epoch that step
    belongs to; every view shows those same numbers."""
    window, session = running
    workspace = tmp_path / "ws"
    made = {step: sample_file(workspace / "samples", 0, step, epoch) for step, epoch in ((0, 0), (30, 3), (40, 4))}
    for event in made.values():
        session.events.put(event)
    pump(window)
    session.finish("stopped", step=40)
    pump(window)
    sample = made[30]
    assert numbers(Path(sample.path).name) == (30, 3)
    gallery = window.run_tab.gallery
    gallery.show_step(gallery.steps.index(30))
    assert numbers(gallery.cards[0][1].cget("text")) == (30, 3)
    viewer = gallery.open_full(0)
    assert numbers(viewer.details.cget("text")) == (30, 3) and numbers(viewer.title()) == (30, 3)
    viewer.close()

    results = window.tabs["results"]
    window.tabview.set("results")
    results.set_spec(CompareSpec(source="samples", samples_dir=str(workspace), output_png=str(tmp_path / "g.png")))
    assert results.start(), results.reasons
    wait_for(window, lambda: not results.runner.running, "the comparison")
    assert results.last_finished.outcome == "completed", results.last_finished.message
    grid = results.grid_view
    column = next(c for c, label in enumerate(grid.column_labels) if label.startswith("step 30 "))
    assert numbers(grid.column_labels[column]) == (30, 3)
    assert Path(grid.paths[(0, column)]) == Path(sample.path)
    cell = grid.open_cell(0, column)
    assert numbers(cell.details.cget("text")) == (30, 3) and numbers(cell.title()) == (30, 3)
    cell.close()


def test_an_image_window_is_the_viewer(window, tmp_path):
    path = tmp_path / "000001.png"
    Image.new("RGB", (96, 96), "green").save(path)
    assert show_image_window(window, tmp_path / "gone.png", "gone.png") is None
    viewer = show_image_window(window, path, "000001.png", "a green square\n" + str(path))
    window.update()
    try:
        assert viewer.title() == "000001.png — a green square" and viewer.path.get() == str(path)
        assert viewer.photo.width() % 96 == 0 and viewer.photo.width() >= 2 * 96
        viewer.event_generate("<Escape>")
        window.update()
        assert not viewer.winfo_exists()
    finally:
        if viewer.winfo_exists():
            viewer.close()
