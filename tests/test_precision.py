"""bf16 weights: stochastic rounding is unbiased, keeps small updates (the quality guard), and the fused back pass
steps the same as the plain one."""
from __future__ import annotations

import queue

import pytest
import torch
from PIL import Image
from tiny_presets import make_preset

from trainer import events as ev
from trainer.config import preset_from_dict
from trainer.fields import ConfigError
from trainer.train.optim import Stepper, stochastic_round_


def test_stochastic_rounding_is_unbiased_and_exact_where_it_can_be():
    x = torch.full((200_000,), 1.0 + 1e-4)  # far below half a bf16 step (0.0039) above 1
    out = stochastic_round_(torch.empty_like(x, dtype=torch.bfloat16), x).float()
    assert set(out.unique().tolist()) == {1.0, 1.0078125}
    assert out.mean().item() == pytest.approx(1.0 + 1e-4, abs=2e-5)
    assert x.to(torch.bfloat16).float().mean().item() == 1.0  # round-to-nearest loses the update
    neg = stochastic_round_(torch.empty_like(x, dtype=torch.bfloat16), -x).float()
    assert neg.mean().item() == pytest.approx(-(1.0 + 1e-4), abs=2e-5)
    exact = torch.tensor([0.5, -3.0, 0.0, 1024.0])
    assert torch.equal(stochastic_round_(torch.empty(4, dtype=torch.bfloat16), exact).float(), exact)


def small_model(seed: int = 0) -> torch.nn.Module:
    """Weights from 4 to 90,000 elements, one convolution stored channels-last (as the loop stores the UNet's)."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Flatten(), torch.nn.Linear(8 * 36, 300),
                                torch.nn.LayerNorm(300), torch.nn.Linear(300, 300), torch.nn.Linear(300, 4))
    model[0].to(memory_format=torch.channels_last)
    return model


@pytest.mark.parametrize("optimizer", ["adamw", "adamw8bit", "adafactor"])
def test_fused_back_pass_steps_equal_one_optimizer_step_and_bound_waiting_gradients(optimizer):
    """The fused back pass (weights stepped in buckets as their gradients complete during backward, gradients
    freed) moves every weight exactly as one optimizer step over all of them, and no more than a bucket (plus
    the weight that fills it) of gradients ever waits."""
    plain, fused = small_model(), small_model()
    x = torch.randn(8, 3, 6, 6)
    ref = Stepper(optimizer, [{"params": list(plain.parameters())}], 1e-3, 0.01)
    hooked = Stepper(optimizer, [{"params": list(fused.parameters())}], 1e-3, 0.01, fused_backward=True)
    hooked.BUCKET = 100_000
    waiting = []
    for p in fused.parameters():
        p.register_post_accumulate_grad_hook(
            lambda _: waiting.append(sum(q.numel() for q in fused.parameters() if q.grad is not None)))
    for _ in range(3):
        ref.step(ref.backward(plain(x).pow(2).mean(), 1.0))
        loss = hooked.backward(fused(x).pow(2).mean(), 1.0)
        assert fused[4].weight.grad is None  # 90,000 elements: stepped and freed during backward
        assert hooked.step(loss)[1]  # the last bucket
        assert all(p.grad is None for p in fused.parameters())
    assert max(waiting) <= hooked.BUCKET + 90_300, max(waiting)
    for a, b in zip(plain.parameters(), fused.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("optimizer", ["adamw", "adamw8bit", "adafactor"])
@pytest.mark.parametrize("fused_back_pass", [False, True])
def test_bf16_master_step_is_the_float32_step_rounded_either_way(optimizer, fused_back_pass):
    """bf16 weights with float32 proxies, stepped in buckets: each new weight is the float32 optimizer's result
    rounded down or up to bf16 (never a neighbour's value, never a stale one), channels-last weights included."""
    model = small_model().to(torch.bfloat16)
    model[0].to(memory_format=torch.channels_last)
    reference = small_model()
    reference.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
    model_before = {k: v.detach().float().clone() for k, v in model.named_parameters()}
    x = torch.randn(8, 3, 6, 6)
    for p, q in zip(model.parameters(), reference.parameters()):  # registered first: runs before the stepper's
        p.register_post_accumulate_grad_hook(lambda p, q=q: setattr(q, "grad", p.grad.float()))
    master = Stepper(optimizer, [{"params": list(model.parameters())}], 1e-2, 0.01, master_weights=True,
                     fused_backward=fused_back_pass)
    master.BUCKET = 100_000
    ref = Stepper(optimizer, [{"params": list(reference.parameters())}], 1e-2, 0.01)
    with torch.autocast("cpu", torch.bfloat16):
        loss = master.backward(model(x.bfloat16()).float().pow(2).mean(), 1.0)
    assert master.step(loss)[1]
    ref.step(loss)
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        assert p.grad is None
        bits = q.detach().contiguous().view(torch.int32)
        toward_zero = (bits & -65536).view(torch.float32)  # the bf16 neighbours of the float32 result
        away = ((bits & -65536) + 65536).view(torch.float32)
        got = p.detach().float()
        exact = toward_zero == q.detach()
        ok = (got == toward_zero) | ((got == away) & ~exact)
        assert bool(ok.all()), (name, (~ok).sum().item())
        assert not torch.equal(got, model_before[name]), name  # every weight moved (lr 1e-2 is above a bf16 step)


def test_fused_back_pass_refuses_what_it_cannot_do():
    base = {"version": 1, "training": {"fused_backward": True, "max_grad_norm": 0.0}}
    preset_from_dict(base)
    for change, reason in [({"gradient_accumulation_steps": 2}, "accumulation"), ({"max_grad_norm": 1.0}, "grad norm"),
                           ({"optimizer": "prodigy"}, "prodigy")]:
        with pytest.raises(ConfigError, match=reason):
            preset_from_dict({"version": 1, "training": {**base["training"], **change}})
    with pytest.raises(ConfigError, match="need mixed precision bf16"):
        preset_from_dict({"version": 1, "training": {"weight_dtype": "bfloat16"}})


def eval_loss(model_path, image_dir, config_dir) -> float:
    """The UNet's loss on the training image with fixed noise and timesteps (deterministic)."""
    import numpy as np

    from trainer.model.models import load_model
    m = load_model(str(model_path), str(config_dir))
    pixels = torch.from_numpy(np.asarray(Image.open(image_dir / "a.png"), dtype=np.float32) / 127.5 - 1)
    pixels = pixels.permute(2, 0, 1)[None]
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        latents = m.vae.encode(pixels).latent_dist.mean.repeat(8, 1, 1, 1) * m.vae.config.scaling_factor
        noise = torch.randn(latents.shape, generator=g)
        t = torch.linspace(50, 950, 8).long()
        ids = m.tokenizer(["red"] * 8, padding="max_length", max_length=77, return_tensors="pt").input_ids
        pred = m.unet(m.noise_scheduler.add_noise(latents, noise, t), t, m.text_encoder(ids)[0]).sample
    return float(((pred - noise) ** 2).mean())


def test_bf16_weights_learn_with_stochastic_rounding_and_not_without(tiny_model_dir, tmp_path):
    """The quality guard: the same 60 small steps in float32, bf16 + stochastic rounding and bf16 rounded to
    nearest. With a fine-tuning-sized learning rate the bf16 rounding step swallows most updates unless they are
    rounded stochastically."""
    from trainer.train.loop import train
    (tmp_path / "one").mkdir()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(tmp_path / "one" / "a.png")
    results = {}
    for name, extra in [("fp32", {}), ("sr", {"weight_dtype": "bfloat16"}),
                        ("nearest", {"weight_dtype": "bfloat16", "stochastic_rounding": False})]:
        preset = make_preset(tmp_path / name, tiny_model_dir, tmp_path / "one",
                             training={"max_steps": 60, "batch_size": 4, "learning_rate": 3e-5,
                                       "mixed_precision": "bf16", "fused_backward": name == "sr",
                                       "max_grad_norm": 0.0, **extra},
                             concepts=[{"path": str(tmp_path / "one"), "caption_source": "single", "caption": "red"}])
        finished = train(preset, lambda e: None, queue.Queue())
        assert finished.outcome == "completed", finished.message
        results[name] = eval_loss(finished.output_path, tmp_path / "one", tiny_model_dir)
    start = eval_loss(tiny_model_dir, tmp_path / "one", tiny_model_dir)
    gain = {k: start - v for k, v in results.items()}
    print(start, results)
    assert gain["fp32"] > 0.05 * start, (start, results)  # fp32 learned something measurable
    assert abs(results["sr"] - results["fp32"]) < 0.05 * results["fp32"], (start, results)
    assert gain["nearest"] < 0.5 * gain["fp32"], (start, results)


def test_fused_back_pass_in_the_loop_trains_like_the_plain_one(tiny_model_dir, color_concept, tmp_path):
    from safetensors.torch import load_file

    from trainer.train.loop import train
    outputs = []
    for fused in (False, True):
        preset = make_preset(tmp_path / str(fused), tiny_model_dir, color_concept,
                             training={"max_steps": 3, "max_grad_norm": 0.0, "fused_backward": fused})
        events = []
        finished = train(preset, events.append, queue.Queue())
        assert finished.outcome == "completed", finished.message
        assert sum(isinstance(e, ev.Progress) for e in events) == 3
        outputs.append(load_file(finished.output_path))
    initial = None
    for key in outputs[0]:
        if "diffusion_model" in key:
            torch.testing.assert_close(outputs[0][key], outputs[1][key], rtol=1e-4, atol=1e-6)
            initial = key
    assert initial is not None


def test_compiled_unet_trains_and_saves_plain_keys(tiny_model_dir, color_concept, tmp_path, monkeypatch):
    """training.compile wraps the UNet in torch.compile (here with the eager backend: inductor's C++ build takes
    minutes on a CPU); samples, backups and the saved model see the plain module."""
    from safetensors.torch import load_file

    from trainer.train.loop import train
    real_compile, compiled = torch.compile, []
    monkeypatch.setattr(torch, "compile", lambda module, **kw: compiled.append(module) or
                        real_compile(module, backend="eager"))
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    preset = make_preset(tmp_path, tiny_model_dir, color_concept, training={"max_steps": 2, "compile": True},
                         backup={"backup_unit": "steps", "backup_every": 1})
    events = []
    finished = train(preset, events.append, queue.Queue())
    assert finished.outcome == "completed", finished.message
    assert len(compiled) == 1
    assert any(isinstance(e, ev.Log) and "torch.compile included" in e.text for e in events)
    keys = list(load_file(finished.output_path))
    assert any(k.startswith("model.diffusion_model.") for k in keys)
    assert not any("_orig_mod" in k for k in keys)
    backups = sorted((tmp_path / "ws" / "backup").iterdir())
    assert backups and not any("_orig_mod" in k for b in backups for f in b.glob("*.safetensors")
                               for k in load_file(f))


def test_deferred_loss_reads_skip_bad_steps_on_the_device(tiny_model_dir, color_concept, tmp_path, monkeypatch):
    """On a GPU the step losses are read back in batches (no wait for the device each step); a NaN step is then
    skipped inside the fused optimizer and reported when read. Forced on here, on the CPU."""
    from safetensors.torch import load_file

    from trainer.train import losses, progress
    import trainer.train.loop as loop
    monkeypatch.setattr(progress, "LOSS_READ_SECONDS", 1e9)  # read only at boundaries: here the epoch ends (4 steps)
    real, calls = losses.diffusion_loss, [0]

    def nan_at_third(*args, **kwargs):
        calls[0] += 1
        value = real(*args, **kwargs)
        return value * float("nan") if calls[0] == 3 else value
    monkeypatch.setattr(losses, "diffusion_loss", nan_at_third)
    preset = make_preset(tmp_path, tiny_model_dir, color_concept, training={"max_steps": 6, "skip_nan_steps": 1})
    events, losses_done_at_report = [], []

    def emit(event):
        events.append(event)
        if isinstance(event, ev.Progress):
            losses_done_at_report.append(calls[0])
    finished = loop.train(preset, emit, queue.Queue(), defer_loss_reads=True)
    assert finished.outcome == "completed", finished.message
    reports = [e for e in events if isinstance(e, ev.Progress)]
    assert [e.step for e in reports] == [1, 2, 3, 4, 5, 6]  # every step reported, in order
    assert losses_done_at_report == [4, 4, 4, 4, 6, 6]  # read at the epoch's end and the run's, not each step
    skipped = [e.text for e in events if isinstance(e, ev.Log) and "Skipped step" in e.text]
    assert len(skipped) == 1 and "step 3" in skipped[0]
    assert all(torch.isfinite(w).all() for w in load_file(finished.output_path).values())

    calls[0] = 0  # the same bad step without a skip allowance fails, naming it, and saves nothing
    preset = make_preset(tmp_path / "fail", tiny_model_dir, color_concept, training={"max_steps": 6})
    from trainer.errors import NonFiniteLoss
    with pytest.raises(NonFiniteLoss, match="at step 3"):
        loop.train(preset, lambda e: None, queue.Queue(), defer_loss_reads=True)
    assert not (tmp_path / "fail" / "out.safetensors").exists()
