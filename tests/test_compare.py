"""compare: the streaming grid PNG, grids from a run's sample files (steps / epochs), and model comparisons."""
from __future__ import annotations

import json
import queue

import numpy as np
import pytest
from PIL import Image

from trainer import events as ev
from trainer.compare import compare, evenly, samples_table
from trainer.config import SamplePrompt
from trainer.errors import InputError
from trainer.grid import PAD, PngWriter, write_grid
from trainer.specs import CompareModel, CompareSpec

COLORS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (30, 200, 200), (200, 30, 200)]


def cell_colour(grid: np.ndarray, header_h: int, cell: int, row: int, col: int, label_w: int = 220):
    y = header_h + row * (cell + PAD) + cell // 2
    x = label_w + PAD + col * (cell + PAD) + cell // 2
    return tuple(int(v) for v in grid[y, x])


def header_height(grid: np.ndarray, rows: int, cell: int) -> int:
    return grid.shape[0] - rows * (cell + PAD)


def test_png_writer_streams_bands_into_a_valid_png(tmp_path):
    rng = np.random.default_rng(0)
    full = rng.integers(0, 255, (50, 37, 3), dtype=np.uint8)
    writer = PngWriter(tmp_path / "x.png", 37, 50)
    for top in range(0, 50, 16):
        writer.add(Image.fromarray(full[top:top + 16]))
    writer.close()
    assert np.array_equal(np.asarray(Image.open(tmp_path / "x.png")), full)

    short = PngWriter(tmp_path / "short.png", 37, 50)
    short.add(Image.fromarray(full[:10]))
    with pytest.raises(ValueError, match="10 rows written"):
        short.close()
    assert not list(tmp_path.glob("*short*"))  # nothing half-written is left


def test_grid_places_each_cell_and_marks_missing_ones(tmp_path):
    files = {}
    for r in range(2):
        for c in range(3):
            if (r, c) == (1, 2):
                continue
            files[(r, c)] = tmp_path / f"{r}{c}.png"
            Image.new("RGB", (48, 32), COLORS[r * 3 + c]).save(files[(r, c)])
    out = write_grid(tmp_path / "grid.png", ["first prompt", "second"], ["a", "b", "c"], lambda r, c: files.get((r, c)),
                     (40, 40), title="a title")
    grid = np.asarray(Image.open(out))
    header = header_height(grid, 2, 40)
    assert grid.shape[1] == 220 + 3 * (40 + PAD) + PAD
    for (r, c) in files:
        assert cell_colour(grid, header, 40, r, c) == COLORS[r * 3 + c]
    assert cell_colour(grid, header, 40, 1, 2) == (60, 60, 60)
    assert grid[:header, 220:].max() > 200  # column labels are drawn


def fake_run(tmp_path):
    """A workspace with samples at steps 0, 10, 20, 30 (epochs 0, 1, 1, 2) for two prompts, and its preset."""
    ws = tmp_path / "ws"
    (ws / "samples").mkdir(parents=True)
    colours = {}
    for k, (step, epoch) in enumerate([(0, 0), (10, 1), (20, 1), (30, 2)]):
        for index in range(2):
            colour = COLORS[k + index] if k + index < len(COLORS) else (k * 40, index * 90, 50)
            Image.new("RGB", (32, 32), colour).save(ws / "samples" / f"step{step:07d}-epoch{epoch:04d}-prompt{index:02d}-seed{index + 1}.png")
            colours[(step, index)] = colour
    (ws / "samples" / "notes.png").write_bytes(b"not a sample")  # ignored: not a sample name
    preset = {"version": 1, "sampling": {"prompts": [{"prompt": "a red circle"}, {"prompt": "a blue square"}]}}
    (ws / "preset.json").write_text(json.dumps(preset))
    return ws, colours


def test_sample_grid_by_steps_and_by_epochs(tmp_path):
    ws, colours = fake_run(tmp_path)
    rows, columns, cells = samples_table(CompareSpec(samples_dir=str(ws), columns="steps"))
    assert rows == ["a red circle", "a blue square"]
    assert columns == ["step 0 (epoch 0)", "step 10 (epoch 1)", "step 20 (epoch 1)", "step 30 (epoch 2)"]
    assert cells[(1, 2)].name == "step0000020-epoch0001-prompt01-seed2.png"
    rows, columns, cells = samples_table(CompareSpec(samples_dir=str(ws / "samples"), columns="epochs"))
    assert columns == ["epoch 0 (step 0)", "epoch 1 (step 20)", "epoch 2 (step 30)"]  # last sample per epoch
    assert cells[(0, 1)].name.startswith("step0000020")
    _, columns, _ = samples_table(CompareSpec(samples_dir=str(ws), columns="steps", max_columns=2))
    assert columns == ["step 0 (epoch 0)", "step 30 (epoch 2)"]
    assert evenly(list(range(10)), 4) == [0, 3, 6, 9]


def test_compare_from_samples_streams_cells_and_exports(tmp_path):
    ws, colours = fake_run(tmp_path)
    spec = CompareSpec(samples_dir=str(ws), columns="epochs", output_png=str(tmp_path / "out" / "grid.png"),
                       cell_size=24)
    events = []
    finished = compare(spec, events.append)
    assert finished.outcome == "completed" and finished.output_path == str(tmp_path / "out" / "grid.png")
    started = [e for e in events if isinstance(e, ev.GridStarted)]
    assert len(started) == 1 and started[0].column_labels[1] == "epoch 1 (step 20)"
    cells = [e for e in events if isinstance(e, ev.GridCell)]
    assert len(cells) == 6 and cells[-1].done == cells[-1].total == 6
    grid = np.asarray(Image.open(finished.output_path))
    header = header_height(grid, 2, 24)
    for r in range(2):
        for c, step in enumerate([0, 20, 30]):
            assert cell_colour(grid, header, 24, r, c) == colours[(step, r)]


def test_compare_without_samples_says_so(tmp_path):
    (tmp_path / "samples").mkdir()
    with pytest.raises(InputError, match="no sample images"):
        compare(CompareSpec(samples_dir=str(tmp_path)), lambda e: None)


@pytest.fixture(scope="module")
def second_model_dir(tmp_path_factory):
    from trainer.demo import build_tiny_components, save_diffusers_folder
    return save_diffusers_folder(build_tiny_components(seed=1), tmp_path_factory.mktemp("tiny2") / "model")


def model_spec(tmp_path, first, second, name="grid.png") -> CompareSpec:
    prompt = SamplePrompt(prompt="a red square", seed=3, steps=2, width=32, height=32, sampler="ddim", cfg_scale=2)
    return CompareSpec(source="models", models=[CompareModel(str(first), "before"), CompareModel(str(second))],
                       prompts=[prompt, SamplePrompt(prompt="a blue circle", steps=2, width=32, height=32)],
                       seeds=[1, 2], output_png=str(tmp_path / name), cell_size=0, device="cpu")


def test_model_comparison_puts_each_model_in_its_column(tiny_model_dir, second_model_dir, tmp_path):
    from trainer.models import load_model
    from trainer.sampling import generate, make_pipeline
    spec = model_spec(tmp_path, tiny_model_dir, second_model_dir)
    events = []
    finished = compare(spec, events.append, queue.Queue())
    assert finished.outcome == "completed", finished.message
    started = next(e for e in events if isinstance(e, ev.GridStarted))
    assert started.column_labels == ("before", "model")
    assert started.row_labels == ("a red square (seed 1)", "a red square (seed 2)", "a blue circle (seed 1)",
                                  "a blue circle (seed 2)")
    cells = {(e.row, e.column): np.asarray(Image.open(e.path)) for e in events if isinstance(e, ev.GridCell)}
    assert len(cells) == 8
    assert not np.array_equal(cells[(0, 0)], cells[(0, 1)])  # the two models differ
    assert not np.array_equal(cells[(0, 0)], cells[(1, 0)])  # the two seeds differ
    # The second column is exactly what the second model draws alone at that seed and those settings.
    model = load_model(str(second_model_dir))
    pipe = make_pipeline(model.unet, model.vae, model.text_encoder, model.tokenizer, model.noise_scheduler.config,
                         "ddim")
    row = SamplePrompt(prompt="a red square", seed=2, steps=2, width=32, height=32, sampler="ddim", cfg_scale=2)
    assert np.array_equal(np.asarray(generate(pipe, row, "cpu")), cells[(1, 1)])
    grid = np.asarray(Image.open(finished.output_path))
    header = header_height(grid, 4, 32)
    assert tuple(grid[header + 16, 220 + PAD + 16]) == tuple(cells[(0, 0)][16, 16])

    # Deterministic per seed: a second run draws the same cells.
    again = []
    compare(model_spec(tmp_path, tiny_model_dir, second_model_dir, "again.png"), again.append)
    for e in again:
        if isinstance(e, ev.GridCell):
            assert np.array_equal(np.asarray(Image.open(e.path)), cells[(e.row, e.column)])


def test_model_comparison_refuses_a_missing_model_and_stops(tiny_model_dir, tmp_path):
    spec = model_spec(tmp_path, tiny_model_dir, tmp_path / "nowhere")
    with pytest.raises(InputError, match="models.1.path"):
        compare(spec, lambda e: None)
    spec = model_spec(tmp_path, tiny_model_dir, tiny_model_dir)
    commands = queue.Queue()
    commands.put(ev.Command(ev.STOP))
    assert compare(spec, lambda e: None, commands).outcome == "stopped"
    assert not (tmp_path / "grid.png").exists()


def test_compare_never_writes_over_an_existing_grid_unasked(tmp_path):
    ws, _ = fake_run(tmp_path)
    out = tmp_path / "grid.png"
    out.write_bytes(b"an earlier grid")
    spec = CompareSpec(samples_dir=str(ws), output_png=str(out), cell_size=16)
    events = []
    with pytest.raises(InputError, match=f"output_png: {out} already exists.*replace_output"):
        compare(spec, events.append)
    assert events == [] and out.read_bytes() == b"an earlier grid"  # refused before any work
    spec.replace_output = True
    assert compare(spec, events.append).outcome == "completed"
    assert Image.open(out).format == "PNG"


def test_a_model_comparison_refuses_an_existing_grid_before_loading_a_model(tmp_path):
    out = tmp_path / "grid.png"
    out.write_bytes(b"an earlier grid")
    spec = model_spec(tmp_path, tmp_path / "nowhere", tmp_path / "nowhere either")  # never loaded
    with pytest.raises(InputError, match="already exists"):
        compare(spec, lambda e: None)
    assert not (tmp_path / "grid_cells").exists() and out.read_bytes() == b"an earlier grid"
