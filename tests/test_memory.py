"""The GPU-memory estimate (trainer/tools/memory.py) and the settings that fit a card (memory_fit.py), on the tiny
model: each part against sizes computed by hand from the model's own tensors and the optimizers' documented state."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from tiny_presets import make_preset
from trainer.config import load_preset
from trainer.tools.memory import (AutocastLike, LiveBytes, MemoryEstimate, estimate_memory, meta_model, pass_bytes,
                                  state_bytes)
from trainer.tools.memory_fit import Fit, NoFit, fit_settings


def card_for(usable_bytes: float) -> float:
    """The card size in GiB whose usable part (memory.usable_gib) is `usable_bytes`."""
    from trainer.tools.vram import HEADROOM_GIB, HEADROOM_SHARE
    return (usable_bytes / 2**30 + HEADROOM_GIB) / (1 - HEADROOM_SHARE)
from trainer.model.models import load_model


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    """The tiny model's real modules (float32), to count by hand."""
    return load_model(str(tiny_model_dir))


def preset_with(tmp_path, tiny_model_dir, color_concept, **training):
    base = {"mixed_precision": "no", "optimizer": "adamw", "ema": "off", "train_text_encoder": False,
            "gradient_checkpointing": False}
    return make_preset(tmp_path, tiny_model_dir, color_concept, training={**base, **training})


def numel(module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_live_bytes_counts_what_ops_make_while_it_lives():
    tracker = LiveBytes()
    outside = torch.empty(1000, device="meta")  # made before: not counted, nor its views
    with tracker:
        view = outside.view(10, 100).t()
        kept = outside * 2  # 4000 bytes
        gone = kept + 1
        del gone  # freed: live goes back down, the peak stays
        assert view.shape == (100, 10)
    assert (tracker.live, tracker.peak) == (4000, 8000)


def test_autocast_like_follows_cuda_autocast_dtypes():
    weight = torch.nn.Parameter(torch.empty(8, 4, device="meta"))
    x = torch.empty(2, 4, device="meta")
    with AutocastLike(torch.bfloat16) as mode:
        y = torch.nn.functional.linear(x, weight)
        again = torch.nn.functional.linear(x, weight)
        normed = torch.nn.functional.group_norm(y.reshape(2, 8, 1), 2)
        attention = torch.nn.functional.scaled_dot_product_attention(*(torch.empty(1, 2, 16, 4, device="meta"),) * 3)
    assert y.dtype == again.dtype == torch.bfloat16 and normed.dtype == torch.float32
    assert len(mode.cache) == 1  # one bf16 copy of the weight per forward pass, as autocast's cache
    assert attention.shape == (1, 2, 16, 4) and attention.dtype == torch.bfloat16


def test_parts_of_a_full_fine_tune_match_hand_computed_sizes(tmp_path, tiny_model_dir, color_concept, tiny):
    preset = preset_with(tmp_path, tiny_model_dir, color_concept, ema="gpu", gradient_accumulation_steps=2)
    found = estimate_memory(preset)
    unet = tiny.unet
    n, tensors = numel(unet), len(list(unet.parameters()))
    buffers = sum(b.numel() * b.element_size() for b in unet.buffers())
    assert found.weights == 4 * n + buffers  # float32 UNet alone: latents and captions are cached
    assert found.optimizer_state == 2 * 4 * n + 4 * tensors  # AdamW: two float32 moments and a step per tensor
    assert found.ema == 4 * n  # a float32 shadow
    assert found.gradients == 4 * n  # accumulating: every gradient is held during the next micro-batch
    assert found.activations > 0 and found.total == sum(found.to_json()["parts_bytes"].values())
    assert isinstance(found, MemoryEstimate) and found.batch_size == 2 and found.resolution == 32


def bnb_adamw8bit_bytes(n: int) -> int:
    """bitsandbytes' AdamW8bit state for one tensor of n elements: 8-bit moments with a float32 absmax per
    256-element block and two 256-entry float32 maps from 4096 elements on, else two float32 moments."""
    if n < 4096:
        return 2 * 4 * n
    return 2 * n + 2 * 4 * math.ceil(n / 256) + 2 * 4 * 256


def test_8bit_state_and_bf16_weights_match_hand_computed_sizes(tmp_path, tiny_model_dir, color_concept, tiny):
    preset = preset_with(tmp_path, tiny_model_dir, color_concept, optimizer="adamw8bit", mixed_precision="bf16",
                         weight_dtype="bfloat16", stochastic_rounding=True)
    found = estimate_memory(preset)
    params = list(tiny.unet.parameters())
    assert found.optimizer_state == sum(bnb_adamw8bit_bytes(p.numel()) for p in params)
    assert found.weights == 2 * numel(tiny.unet) + sum(b.numel() * b.element_size() for b in tiny.unet.buffers())


def test_a_lora_keeps_the_base_frozen_in_bf16_and_the_adapter_in_float32(tmp_path, tiny_model_dir, color_concept,
                                                                         tiny):
    preset = preset_with(tmp_path, tiny_model_dir, color_concept, method="lora", lora_rank=2, mixed_precision="bf16")
    model = meta_model(preset)
    adapter = sum(p.numel() for p in model.trained)
    assert 0 < adapter < numel(tiny.unet) / 4
    found = estimate_memory(preset)
    assert found.weights == 2 * numel(tiny.unet) + 4 * adapter
    assert found.optimizer_state == 2 * 4 * adapter + 4 * len(model.trained)


def test_text_encoder_and_vae_are_counted_when_they_stay_on_the_gpu(tmp_path, tiny_model_dir, color_concept, tiny):
    cached = estimate_memory(preset_with(tmp_path, tiny_model_dir, color_concept))
    text = estimate_memory(preset_with(tmp_path, tiny_model_dir, color_concept, train_text_encoder=True))
    pixels = estimate_memory(preset_with(tmp_path, tiny_model_dir, color_concept, cache_latents=False))
    assert text.weights - cached.weights == 4 * numel(tiny.text_encoder) + sum(
        b.numel() * b.element_size() for b in tiny.text_encoder.buffers())
    assert text.optimizer_state > cached.optimizer_state
    assert pixels.weights - cached.weights == sum(t.numel() * 4 for t in tiny.vae.state_dict().values())


def test_activations_scale_with_the_batch_and_pixels_not_the_attention_matrix(tmp_path, tiny_model_dir,
                                                                              color_concept):
    preset = preset_with(tmp_path, tiny_model_dir, color_concept)
    model = meta_model(preset)
    # where activations make the peak (the end of the forward pass; small passes peak in the backward pass,
    # where the gradients are)
    other = {batch: pass_bytes(model, preset.training, batch, 64)[1] for batch in (4, 8, 16)}
    assert other[16] - other[8] == pytest.approx(2 * (other[8] - other[4]), rel=0.05)  # linear in the batch
    small, large = pass_bytes(model, preset.training, 1, 128)[1], pass_bytes(model, preset.training, 1, 256)[1]
    assert 3.5 < large / small < 4.5  # 4x the pixels: linear, with flash-style attention (no (L, L) matrix)


def test_memory_savers_lower_their_parts(tmp_path, tiny_model_dir, color_concept, monkeypatch):
    from trainer.train.optim import Stepper
    monkeypatch.setattr(Stepper, "BUCKET", 4096)  # SD 1.5's bucket holds the whole tiny UNet: make it small
    at = {"resolution": "128", "batch_size": 4}  # where the activations make the peak
    plain = estimate_memory(preset_with(tmp_path, tiny_model_dir, color_concept, **at))
    checkpointed = estimate_memory(preset_with(tmp_path, tiny_model_dir, color_concept, gradient_checkpointing=True,
                                               **at))
    assert checkpointed.activations < plain.activations / 2
    fused = estimate_memory(preset_with(tmp_path, tiny_model_dir, color_concept, fused_backward=True,
                                        max_grad_norm=0.0, **at))
    assert fused.gradients < plain.gradients
    assert fused.total < plain.total


def test_state_of_every_optimizer_is_the_librarys(tmp_path, tiny_model_dir, color_concept):
    from trainer.config import OPTIMIZERS
    from trainer.train.optim import make_optimizer, optimizer_settings
    preset = preset_with(tmp_path, tiny_model_dir, color_concept)
    shapes = [torch.Size([64, 32, 3, 3]), torch.Size([64])]
    for name in OPTIMIZERS:
        preset.training.optimizer = name
        params = [torch.nn.Parameter(torch.full(shape, 0.01)) for shape in shapes]
        for p in params:
            p.grad = torch.full_like(p, 1e-3)
        optimizer = make_optimizer(name, [{"params": params}], 1e-4, **optimizer_settings(preset.training))
        optimizer.step()
        states = [optimizer.state] + ([optimizer.optimizer.state] if hasattr(optimizer, "optimizer") else [])
        held = sum(v.numel() * v.element_size() for state in states for p in params
                   for v in state.get(p, {}).values() if isinstance(v, torch.Tensor))
        assert state_bytes(preset.training, [(s, torch.float32) for s in shapes]) == held, name


def test_fit_finds_the_fastest_settings_under_a_budget(tmp_path, tiny_model_dir, color_concept):
    from trainer.tools.vram import usable_gib
    preset = preset_with(tmp_path, tiny_model_dir, color_concept, batch_size=4, ema="gpu")
    full = estimate_memory(preset).total
    assert fit_settings(preset, card_for(full * 1.01)).changes == {}  # fits already: nothing to change
    card = card_for(full * 0.8)
    fit = fit_settings(preset, card)
    assert isinstance(fit, Fit) and fit.changes and fit.estimate.total <= usable_gib(card) * 2**30
    assert estimate_memory(fit.preset).total == fit.estimate.total  # measured at its own settings
    t = fit.preset.training
    assert t.batch_size * t.gradient_accumulation_steps == 4  # the same images per optimizer step
    assert fit.described and all(isinstance(line, str) and "->" not in line for line in fit.described)
    nothing = fit_settings(preset, 0.001)  # less than the headroom: nothing fits
    assert isinstance(nothing, NoFit) and nothing.smallest.total < full and nothing.smallest.batch_size == 1


def test_no_fit_names_the_savers_the_preset_blocks(tmp_path, tiny_model_dir, color_concept):
    preset = preset_with(tmp_path, tiny_model_dir, color_concept, max_grad_norm=1.0)
    nothing = fit_settings(preset, 0.001)
    assert isinstance(nothing, NoFit)
    assert any(line.startswith("fused back pass") and "max grad norm" in line for line in nothing.blocked)


def test_samples_count_what_they_bring_back_to_the_gpu(tmp_path, tiny_model_dir, color_concept, tiny):
    from trainer.config import SamplePrompt
    preset = preset_with(tmp_path, tiny_model_dir, color_concept, batch_size=1, gradient_checkpointing=True)
    quiet = estimate_memory(preset)
    assert quiet.sampling == 0  # no sample prompts
    preset.sampling.unit = "steps"
    preset.sampling.prompts = [SamplePrompt(prompt="a red square", width=256, height=256)]
    sampled = estimate_memory(preset)
    parked = sum(t.numel() * 4 for m in (tiny.vae, tiny.text_encoder) for t in m.state_dict().values())
    assert sampled.sampling > 0 and sampled.total > quiet.total
    assert sampled.sampling + quiet.gradients + quiet.activations >= parked  # the VAE and text encoder come back


def test_fit_turns_savers_off_when_the_card_has_room(tmp_path, tiny_model_dir, color_concept):
    preset = preset_with(tmp_path, tiny_model_dir, color_concept, gradient_checkpointing=True, batch_size=1,
                         gradient_accumulation_steps=2)
    fit = fit_settings(preset, 100.0)
    assert fit.changes == {"training.gradient_checkpointing": False, "training.batch_size": 2,
                           "training.gradient_accumulation_steps": 1}


def memory_command(capsys, *args) -> tuple[int, str, str]:
    from trainer.__main__ import main
    code = main(["memory", *map(str, args)])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_command_line_prints_json_refuses_bad_input_and_writes_the_fit(tmp_path, tiny_model_dir, color_concept,
                                                                       capsys):
    from trainer.config import save_preset
    preset = preset_with(tmp_path, tiny_model_dir, color_concept, batch_size=4)
    save_preset(preset, tmp_path / "p.json")
    result = subprocess.run([sys.executable, "-m", "trainer", "memory", str(tmp_path / "p.json"), "--json",
                             "--vram", "8"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "pip install kernels" not in result.stderr  # bitsandbytes' advice on a kernel SeaChange never runs
    found = json.loads(result.stdout)
    assert found["fits"] is True and found["vram_source"] == "stated"
    assert found["estimate"]["parts_bytes"] == estimate_memory(preset).to_json()["parts_bytes"]
    budget = card_for(found["estimate"]["total_gib"] * 0.8 * 2**30)
    code, out, err = memory_command(capsys, tmp_path / "p.json", "--fit", budget, "--write", tmp_path / "fit.json")
    assert code == 0, err
    assert "written" in out and load_preset(tmp_path / "fit.json").training.batch_size <= 4
    code, out, _ = memory_command(capsys, tmp_path / "p.json", "--fit", 8)  # the card --fit names is the one
    assert code == 0 and "no GPU found" not in out and "of an 8 GiB card (" in out
    code, _, err = memory_command(capsys, tmp_path / "p.json", "--fit", budget, "--write", tmp_path / "fit.json")
    assert code == 2 and "--write" in err and "exists" in err
    code, _, err = memory_command(capsys, tmp_path / "p.json", "--set", f"model.base_model={tmp_path / 'nowhere'}")
    assert code == 2 and "model.base_model" in err
    empty = tmp_path / "empty_folder"
    empty.mkdir()
    code, _, err = memory_command(capsys, tmp_path / "p.json", "--set", f"model.base_model={empty}")
    assert code == 2 and "not a diffusers model folder" in err
    code, out, _ = memory_command(capsys, tmp_path / "p.json", "--fit", 1e-4, "--json")
    assert code == 1 and json.loads(out)["fit"] is None and json.loads(out)["no_fit"]["smallest"]["total_gib"] > 0
    for args in (("--vram", 0), ("--fit", -3), ("--write", tmp_path / "w.json")):
        code, _, err = memory_command(capsys, tmp_path / "p.json", *args)
        assert code == 2 and args[0] in err and not (tmp_path / "w.json").exists()
    code, out, _ = memory_command(capsys, tmp_path / "p.json", "--set", "model.base_model=", "--json")
    sd15 = json.loads(out)["estimate"]  # no model chosen yet: SD 1.5's shapes, said
    assert code == 0 and "no base model chosen yet: sized as SD 1.5" in sd15["notes"]
    assert sd15["parts_bytes"]["weights"] > 1e9  # SD 1.5's UNet alone is 3.4 GB in float32, the tiny model's KB
