"""compare: the streaming grid PNG, grids from a run's sample files (steps / epochs), and model comparisons."""
from __future__ import annotations

import json
import queue

import numpy as np
import pytest
from lora_helpers import write_tiny_lora
from PIL import Image

from trainer import events as ev
from trainer.config import SamplePrompt
from trainer.errors import InputError
from trainer.specs import CompareModel, CompareSpec
from trainer.tools.compare import compare, evenly, samples_table
from trainer.tools.grid import PAD, PngWriter, write_grid

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
    from trainer.tools.demo import build_tiny_components, save_diffusers_folder
    return save_diffusers_folder(build_tiny_components(seed=1), tmp_path_factory.mktemp("tiny2") / "model")


def model_spec(tmp_path, first, second, name="grid.png") -> CompareSpec:
    prompt = SamplePrompt(prompt="a red square", seed=3, steps=2, width=32, height=32, sampler="ddim", cfg_scale=2)
    return CompareSpec(source="models", models=[CompareModel(str(first), "before"), CompareModel(str(second))],
                       prompts=[prompt, SamplePrompt(prompt="a blue circle", steps=2, width=32, height=32)],
                       seeds=[1, 2], output_png=str(tmp_path / name), cell_size=0, device="cpu")


def test_model_comparison_puts_each_model_in_its_column(tiny_model_dir, second_model_dir, tmp_path):
    from trainer.model.models import load_model
    from trainer.train.sampling import generate, make_pipeline
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


# ---- a LoRA at several strengths beside its base ------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_lora(tiny_model_dir, tmp_path_factory):
    """lora_helpers.write_tiny_lora's LoRA for the tiny model, as style.safetensors."""
    return write_tiny_lora(tiny_model_dir, tmp_path_factory.mktemp("lora") / "style.safetensors")


def lora_spec(tmp_path, model, lora_file, strengths, name="lora.png") -> CompareSpec:
    prompt = SamplePrompt(prompt="a red square", seed=3, steps=2, width=32, height=32, sampler="ddim", cfg_scale=2)
    return CompareSpec(source="models", models=[CompareModel(str(model), "base"),
                                                CompareModel(str(model), lora=str(lora_file))],
                       lora_strengths=strengths, prompts=[prompt], seeds=[1, 2], output_png=str(tmp_path / name),
                       cell_size=0, device="cpu")


def merged_by_hand(model_dir, lora_file, strength: float):
    """The tiny model with the LoRA file added to its weights from the file's tensors alone (kohya's rule: the
    change is up @ down * alpha / rank, times the strength), without PEFT or trainer.model.lora."""
    from safetensors.torch import load_file

    from trainer.model.models import load_model
    model = load_model(str(model_dir))
    modules = {"lora_unet_" + name.replace(".", "_"): module for name, module in model.unet.named_modules()}
    tensors = load_file(str(lora_file))
    for key in {k.split(".")[0] for k in tensors}:
        down, up = tensors[f"{key}.lora_down.weight"], tensors[f"{key}.lora_up.weight"]
        change = (up.flatten(1) @ down.flatten(1)) * float(tensors[f"{key}.alpha"]) / down.shape[0]
        weight = modules[key].weight
        weight.data += strength * change.reshape(weight.shape)
    return model


def drawn_alone(model_dir, lora_file, strength: float, seed: int) -> np.ndarray:
    """The image of lora_spec's prompt at `seed` from merged_by_hand's model, as ints."""
    from trainer.train.sampling import generate, make_pipeline
    model = merged_by_hand(model_dir, lora_file, strength)
    pipe = make_pipeline(model.unet, model.vae, model.text_encoder, model.tokenizer, model.noise_scheduler.config,
                         "ddim")
    row = SamplePrompt(prompt="a red square", seed=seed, steps=2, width=32, height=32, sampler="ddim", cfg_scale=2)
    return np.asarray(generate(pipe, row, "cpu")).astype(int)


def test_a_lora_at_several_strengths_stands_beside_its_base(tiny_model_dir, tiny_lora, tmp_path):
    events = []
    finished = compare(lora_spec(tmp_path, tiny_model_dir, tiny_lora, [0, 0.5, 1]), events.append, queue.Queue())
    assert finished.outcome == "completed", finished.message
    started = next(e for e in events if isinstance(e, ev.GridStarted))
    assert started.column_labels == ("base", "model + style @ 0 (no LoRA)", "model + style @ 0.5",
                                     "model + style @ 1")
    assert any(isinstance(e, ev.Status) and "Merging style.safetensors at strength 0.5" in e.text for e in events)
    cells = {(e.row, e.column): np.asarray(Image.open(e.path)).astype(int) for e in events
             if isinstance(e, ev.GridCell)}
    assert len(cells) == 2 * 4
    for row in range(2):
        base = cells[(row, 0)]
        assert np.array_equal(cells[(row, 1)], base)  # strength 0: the base itself
        half, full = (np.abs(cells[(row, c)] - base).mean() for c in (2, 3))
        assert 0.5 < half < full, (half, full)  # the LoRA changes the image, more at 1 than at 0.5
    # The strength-0.5 column is the model with half of each layer's change from the file, drawn alone (float
    # rounding may move a pixel value by one).
    assert np.abs(drawn_alone(tiny_model_dir, tiny_lora, 0.5, seed=2) - cells[(1, 2)]).max() <= 1
    grid = np.asarray(Image.open(finished.output_path))
    header = header_height(grid, 2, 32)
    for c in range(4):
        x = 220 + PAD + c * (32 + PAD) + 16
        assert tuple(grid[header + 16, x]) == tuple(cells[(0, c)][16, 16])  # the exported grid has each column


def test_a_model_row_with_a_lora_and_no_strengths_is_one_column_at_its_own_strength(tiny_model_dir, tiny_lora,
                                                                                    tmp_path):
    spec = lora_spec(tmp_path, tiny_model_dir, tiny_lora, [])
    spec.models[1].lora_strength = -0.5
    spec.seeds = [2]
    events = []
    assert compare(spec, events.append).outcome == "completed"
    assert next(e for e in events if isinstance(e, ev.GridStarted)).column_labels == ("base", "model + style @ -0.5")
    cell = next(np.asarray(Image.open(e.path)).astype(int) for e in events if isinstance(e, ev.GridCell)
                and e.column == 1)
    assert np.abs(drawn_alone(tiny_model_dir, tiny_lora, -0.5, seed=2) - cell).max() <= 1


def test_column_labels_of_lora_rows():
    from trainer.tools.compare import model_columns
    spec = CompareSpec(source="models", models=[
        CompareModel("m/base.safetensors"), CompareModel("m/run", "mine", lora="l/ink.safetensors"),
        CompareModel("m/run", lora="l/ink.safetensors", lora_strength=-0.25)])
    plan = model_columns(spec)
    assert [(c.label, c.model, c.strength, c.lora) for c in plan] == [
        ("base", 0, 0.0, ""), ("mine", 1, 1.0, "l/ink.safetensors"), ("run + ink @ -0.25", 2, -0.25, "l/ink.safetensors")]
    spec.lora_strengths = [0, 0.75]
    assert [(c.label, c.lora) for c in model_columns(spec)] == [
        ("base", ""), ("mine @ 0 (no LoRA)", ""), ("mine @ 0.75", "l/ink.safetensors"),
        ("run + ink @ 0 (no LoRA)", ""), ("run + ink @ 0.75", "l/ink.safetensors")]


def test_lora_settings_are_validated_naming_the_field(tmp_path):
    from trainer.fields import ConfigError
    from trainer.specs import spec_from_dict, spec_to_dict, validate_spec
    prompt = SamplePrompt(prompt="x", width=32, height=32)
    spec = CompareSpec(source="models", models=[CompareModel("m", lora="style.safetensors", lora_strength=0.5)],
                       prompts=[prompt], lora_strengths=[0, 0.5, 1])
    assert validate_spec(spec) == []
    assert spec_from_dict(spec_to_dict(spec)) == spec  # the LoRA fields survive a spec file
    spec.models[0].lora = "style.ckpt"
    assert validate_spec(spec) == ["models.0.lora: style.ckpt is not a .safetensors file (a LoRA for SD 1.5 in "
                                   "kohya's layout)"]
    spec.models[0].lora = "style.safetensors"
    spec.models[0].lora_strength = 12.0
    assert validate_spec(spec) == ["models.0.lora_strength: 12.0 is above the maximum 10.0"]
    spec.models[0].lora_strength = float("nan")
    assert validate_spec(spec) == ["models.0.lora_strength: expected a finite number, got nan"]
    spec.models[0].lora_strength = 1.0
    spec.lora_strengths = [0, float("inf"), -20]
    assert validate_spec(spec) == ["lora_strengths.1: inf is outside -10 .. 10",
                                   "lora_strengths.2: -20 is outside -10 .. 10"]
    spec.lora_strengths = [0.5]
    spec.models[0].lora = ""
    assert validate_spec(spec) == ["lora_strengths: no model has a LoRA to try at these strengths (choose a "
                                   "model's LoRA, or empty this)"]
    data = spec_to_dict(spec)
    for value, said in (("0, 0.5, 1", "lora_strengths: expected a list"),
                        ([0, "half"], "lora_strengths.1: expected a number")):
        with pytest.raises(ConfigError, match=said):
            spec_from_dict({**data, "lora_strengths": value})


def test_a_missing_or_sdxl_lora_is_refused_naming_the_field_before_any_model_loads(tiny_model_dir, tmp_path):
    import torch
    from safetensors.torch import save_file
    spec = lora_spec(tmp_path, tiny_model_dir, tmp_path / "nowhere.safetensors", [0, 1])
    events = []
    with pytest.raises(InputError, match=r"models\.1\.lora: .*nowhere\.safetensors does not exist"):
        compare(spec, events.append)
    sdxl = tmp_path / "sdxl.safetensors"
    save_file({"lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.zeros(4, 768),
               "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": torch.zeros(3072, 4)}, str(sdxl))
    spec = lora_spec(tmp_path, tiny_model_dir, sdxl, [0, 1])
    with pytest.raises(InputError, match=r"models\.1\.lora: .*sdxl\.safetensors is a LoRA for SDXL"):
        compare(spec, events.append)
    assert events == [] and not (tmp_path / "lora_cells").exists()  # refused before the grid or any model
