"""The optimizers beside AdamW: schedule-free AdamW and Prodigy (schedulefree), CAME, ADOPT and AdEMAMix
(pytorch-optimizer). Each goes through optim.Stepper like every optimizer: its settings reach its library under the
library's names, it trains the tiny model (bf16 weights with stochastic rounding too, where it can), bucketed steps
equal one step over all weights, a resumed run equals an uninterrupted one, a schedule-free run samples and saves
its average weights, and what cannot work is refused by name."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from test_precision import eval_loss, small_model
from tiny_presets import make_preset, run_stopping_at
from trainer import events as ev
from trainer.config import (OPTIMIZER_DEFAULTS, OPTIMIZER_FIELDS, OPTIMIZERS, Preset, TrainingConfig, validate)
from trainer.errors import InputError
from trainer.train import outputs
from trainer.train.backup import complete_backups
from trainer.train.optim import Stepper, current_lr, make_lr_scheduler, make_optimizer, optimizer_settings

NEW = ("adamw_schedulefree", "prodigy_schedulefree", "came", "adopt", "ademamix")
BUCKETED = ("adamw_schedulefree", "came", "adopt", "ademamix")  # Prodigy's step size needs all gradients at once
# CAME is unsteady on the tiny model from 5e-4 up (its confidence factor, from residuals of a few steps)
LR = {"adamw_schedulefree": 1e-3, "prodigy_schedulefree": 1.0, "came": 3e-4, "adopt": 1e-3, "ademamix": 1e-3,
      "lion": 1e-4, "sgd": 1e-2}
BF16_SR = {"mixed_precision": "bf16", "weight_dtype": "bfloat16"}  # stochastic rounding is on by default


def group_values(optimizer) -> list[dict]:
    """Each param group's settings and counters (everything but its parameters)."""
    return [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]


# ---- settings --------------------------------------------------------------------------------------------------

def fingerprint(name: str, training: TrainingConfig) -> str:
    """What the optimizer `name` was built with from `training`: its groups' settings and, for schedulefree's
    wrapper, its own."""
    stepper = Stepper(name, [{"params": [torch.nn.Parameter(torch.zeros(64, 64))]}], 1e-3, 0.02,
                      settings=optimizer_settings(dataclasses.replace(training, optimizer=name)))
    optimizer = stepper.optimizer
    extra = {k: getattr(optimizer, k) for k in ("momentum", "r", "weight_lr_power") if hasattr(optimizer, "base")}
    return repr((group_values(optimizer), extra))


def changed(name: str, field: str) -> dict:
    """A value of `field` other than its default (valid for optimizer `name` where it reads it)."""
    if field in ("betas", "eps"):
        own = OPTIMIZER_DEFAULTS.get(name, {}).get(field, (0.9, 0.999))
        values = (own[0] - 0.1, *own[1:]) if field == "betas" else tuple(e * 10 for e in own)
        return {field: ",".join(map(str, values))}
    default = getattr(TrainingConfig(), field)
    return {field: default * 2 if default else 7}


@pytest.mark.parametrize("field", list(OPTIMIZER_FIELDS))
def test_each_optimizer_setting_reaches_exactly_the_optimizers_that_show_it(field):
    """The window shows a setting for the optimizers config.OPTIMIZER_FIELDS names: changing it changes what
    those are built with, and nothing for every other optimizer."""
    for name in OPTIMIZERS:
        differs = fingerprint(name, TrainingConfig()) != fingerprint(name, TrainingConfig(**changed(name, field)))
        assert differs == (name in OPTIMIZER_FIELDS[field]), (field, name)


def test_settings_reach_each_library_under_its_own_names():
    training = TrainingConfig(betas="0.8,0.95", eps="1e-7", prodigy_d_coef=0.5, prodigy_d0=1e-5, schedulefree_r=0.5,
                              schedulefree_weight_lr_power=1.0, ademamix_alpha=8.0, ademamix_t_alpha_beta3=100,
                              lr_warmup_steps=7)

    def made(name, **changes):
        settings = optimizer_settings(dataclasses.replace(training, optimizer=name, **changes))
        return Stepper(name, [{"params": [torch.nn.Parameter(torch.zeros(4, 4))]}], 1e-3, 0.02,
                       settings=settings).optimizer
    sf = made("adamw_schedulefree")
    assert type(sf).__name__ == "AdamWScheduleFree"
    assert {k: sf.param_groups[0][k] for k in ("betas", "eps", "weight_decay", "warmup_steps", "r", "weight_lr_power",
                                                "train_mode")} == {
        "betas": (0.8, 0.95), "eps": 1e-7, "weight_decay": 0.02, "warmup_steps": 7, "r": 0.5, "weight_lr_power": 1.0,
        "train_mode": True}
    wrapper = made("prodigy_schedulefree")
    assert type(wrapper).__name__ == "ScheduleFreeWrapper" and type(wrapper.base).__name__ == "Prodigy"
    assert (wrapper.momentum, wrapper.r, wrapper.weight_lr_power, wrapper.weight_decay_at_y, wrapper.train_mode) == \
        (0.8, 0.5, 1.0, 0.0, True)
    group = wrapper.param_groups[0]  # Prodigy's: no momentum of its own, the decay at z
    assert (group["betas"], group["eps"], group["d_coef"], group["d0"], group["d"], group["weight_decay"]) == \
        ((0.0, 0.95), 1e-7, 0.5, 1e-5, 1e-5, 0.02)
    came = made("came", betas="0.8,0.95,0.99", eps="1e-29,1e-15")
    group = came.param_groups[0]
    assert type(came).__name__ == "CAME"
    assert (group["betas"], group["eps1"], group["eps2"], group["weight_decouple"]) == \
        ((0.8, 0.95, 0.99), 1e-29, 1e-15, True)
    group = made("adopt").param_groups[0]
    assert (group["betas"], group["eps"], group["weight_decouple"]) == ((0.8, 0.95), 1e-7, True)
    group = made("ademamix", betas="0.8,0.95,0.999").param_groups[0]
    assert (group["betas"], group["alpha"], group["t_alpha_beta3"], group["weight_decouple"]) == \
        ((0.8, 0.95, 0.999), 8.0, 100, True)
    assert made("ademamix", betas="", ademamix_t_alpha_beta3=0).param_groups[0]["t_alpha_beta3"] is None
    # empty betas and eps: each library's own
    group = made("adopt", betas="", eps="").param_groups[0]
    assert (group["betas"], group["eps"]) == ((0.9, 0.9999), 1e-6)
    group = made("came", betas="", eps="").param_groups[0]
    assert (group["betas"], group["eps1"], group["eps2"]) == ((0.9, 0.999, 0.9999), 1e-30, 1e-16)
    assert made("adamw", betas="", eps="").param_groups[0]["betas"] == (0.9, 0.999)
    assert made("adamw").param_groups[0]["betas"] == (0.8, 0.95)  # the older optimizers read them too


@pytest.mark.parametrize("name", ["adamw_schedulefree", "prodigy_schedulefree"])
def test_schedule_free_warmup_starts_above_zero_and_reaches_the_full_rate(name):
    """Both schedule-free optimizers warm up as schedulefree's AdamW does, (step + 1) / warmup: AdamW itself (its
    schedule stays flat), the Prodigy wrapper through its schedule. A first step at rate 0 would make the wrapper's
    average 0 / 0. A decaying schedule is refused."""
    weight = torch.nn.Parameter(torch.ones(3))
    optimizer = make_optimizer(name, [weight], lr=0.1, warmup_steps=4)
    schedule = make_lr_scheduler("constant", optimizer, warmup_steps=4, total_steps=10)
    used = []
    for _ in range(6):
        weight.grad = torch.ones(3)
        rate = optimizer.param_groups[0]["lr"]
        optimizer.step()
        schedule.step()
        used.append(current_lr(optimizer) if name == "adamw_schedulefree" else rate)
    assert used == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1, 0.1])
    assert torch.isfinite(weight).all()
    with pytest.raises(ValueError, match="needs a constant schedule"):
        make_lr_scheduler("cosine", make_optimizer(name, [torch.nn.Parameter(torch.ones(3))], lr=0.1), 0, 10)


# ---- refused by name -------------------------------------------------------------------------------------------

def problems(**training) -> list[str]:
    return validate(Preset(training=TrainingConfig(**training)))


def test_what_cannot_work_is_refused_by_name():
    for name in ("adamw_schedulefree", "prodigy_schedulefree"):
        assert any(p.startswith("training.lr_scheduler: ") and f"{name} needs constant" in p
                   for p in problems(optimizer=name, lr_scheduler="cosine"))
        assert any(p.startswith("training.ema: ") and "its own average" in p for p in problems(optimizer=name, ema="gpu"))
        assert any(p.startswith("training.betas: ") and "beta1 above 0" in p for p in problems(optimizer=name,
                                                                                              betas="0,0.99"))
        assert problems(optimizer=name, lr_scheduler="constant_with_warmup", lr_warmup_steps=100) == []
    for name in ("prodigy", "prodigy_schedulefree"):
        assert any(p.startswith("training.weight_dtype: ") and f"which {name} cannot do" in p
                   for p in problems(optimizer=name, **BF16_SR))
        assert any(p.startswith("training.fused_backward: ") and f"does not work with {name}" in p
                   for p in problems(optimizer=name, fused_backward=True, max_grad_norm=0.0))
        assert problems(optimizer=name, **BF16_SR, stochastic_rounding=False) == []  # no buckets: allowed
        assert problems(optimizer=name, **BF16_SR, method="lora") == []  # a LoRA trains in float32
        with pytest.raises(ValueError, match=f"{name} estimates its step size over all gradients"):
            Stepper(name, [torch.nn.Parameter(torch.zeros(2))], 1.0, 0.0, master_weights=True)
    for name in BUCKETED:  # bucketed stepping works for these
        assert problems(optimizer=name, **BF16_SR, fused_backward=True, max_grad_norm=0.0) == []
    assert problems(optimizer="came", betas="0.9,0.999") == [
        "training.betas: came takes 3 (0.9,0.999,0.9999 are its own), not 2; empty uses its own"]
    assert problems(optimizer="came", eps="1e-30") == [
        "training.eps: came takes 2 (1e-30,1e-16 are its own), not 1; empty uses its own"]
    assert problems(optimizer="adopt", betas="0.9,1.0") == ["training.betas: each beta must be at least 0 and below 1"]
    assert problems(optimizer="adopt", eps="0") == ["training.eps: each eps must be above 0 and below 1"]
    assert problems(optimizer="ademamix", betas="0.9, x, 0.9999") == [
        "training.betas: 'x' is not a number (separate several with commas)"]
    assert any("ademamix needs beta1 above 0" in p
               for p in problems(optimizer="ademamix", betas="0,0.999,0.9999", ademamix_t_alpha_beta3=100))
    assert problems(optimizer="adafactor", betas="not read") == []  # an optimizer that reads no betas
    assert optimizer_settings(TrainingConfig(optimizer="adafactor", betas="not read"))["betas"] is None


# ---- bucketed steps: the fused back pass, bf16 weights with stochastic rounding ---------------------------------

@pytest.mark.parametrize("name", [*BUCKETED, "lion", "sgd"])  # adamw, adamw8bit, adafactor: test_precision.py
def test_bucketed_steps_equal_one_step_over_all_weights(name):
    """The fused back pass steps weights in buckets during the backward pass; over several steps the weights,
    the state and each group's counters (a step count, schedule-free's averaging weights) are those of one
    optimizer call per step: the counters advance once per step, not once per bucket."""
    torch.manual_seed(1)
    x = torch.randn(8, 3, 6, 6)
    plain, fused = small_model(), small_model()
    ref = Stepper(name, [{"params": list(plain.parameters())}], LR[name] * 10, 0.01)
    hooked = Stepper(name, [{"params": list(fused.parameters())}], LR[name] * 10, 0.01, fused_backward=True)
    hooked.BUCKET = 100_000  # several buckets per step
    for _ in range(4):
        ref.step(ref.backward(plain(x).pow(2).mean(), 1.0))
        loss = hooked.backward(fused(x).pow(2).mean(), 1.0)
        assert fused[4].weight.grad is None  # stepped during the back pass
        hooked.step(loss)
    counters = group_values(ref.optimizer)
    assert counters[0].get("step", counters[0].get("k", 4)) == 4
    assert group_values(hooked.optimizer) == counters
    start = small_model().state_dict()
    for (key, a), b in zip(plain.named_parameters(), fused.parameters()):
        assert not torch.equal(a, start[key]), key  # it trained
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", BUCKETED)
@pytest.mark.parametrize("fused_back_pass", [False, True])
def test_bf16_master_steps_are_the_float32_steps_rounded_either_way(name, fused_back_pass):
    """bf16 weights with float32 proxies, stepped in buckets: after each of two steps (ADOPT's weights move from
    its second step on) every weight is the float32 optimizer's result from the same weights and gradients,
    rounded down or up to bf16."""
    model = small_model().to(torch.bfloat16)
    reference = small_model()
    x = torch.randn(8, 3, 6, 6)
    for p, q in zip(model.parameters(), reference.parameters()):  # registered first: runs before the stepper's
        p.register_post_accumulate_grad_hook(lambda p, q=q: setattr(q, "grad", p.grad.float()))
    master = Stepper(name, [{"params": list(model.parameters())}], LR[name] * 10, 0.01, master_weights=True,
                     fused_backward=fused_back_pass)
    master.BUCKET = 100_000
    ref = Stepper(name, [{"params": list(reference.parameters())}], LR[name] * 10, 0.01)
    start = [p.detach().float().clone() for p in model.parameters()]
    for _ in range(2):
        with torch.no_grad():  # the same weights on both sides
            for p, q in zip(model.parameters(), reference.parameters()):
                q.copy_(p.float())
        with torch.autocast("cpu", torch.bfloat16):
            loss = master.backward(model(x.bfloat16()).float().pow(2).mean(), 1.0)
        assert master.step(loss)[1]
        ref.step(loss)
        for (key, p), q in zip(model.named_parameters(), reference.parameters()):
            bits = q.detach().contiguous().view(torch.int32)
            toward_zero = (bits & -65536).view(torch.float32)  # the bf16 neighbours of the float32 result
            away = ((bits & -65536) + 65536).view(torch.float32)
            got = p.detach().float()
            ok = (got == toward_zero) | ((got == away) & (toward_zero != q.detach()))
            assert bool(ok.all()), (name, key, (~ok).sum().item())
    assert group_values(master.optimizer) == group_values(ref.optimizer)
    assert all(not torch.equal(p.detach().float(), s) for p, s in zip(model.parameters(), start))


@pytest.mark.parametrize("name, weights", [("adamw_schedulefree", "float32"), ("adamw_schedulefree", "bf16_master"),
                                           ("prodigy_schedulefree", "float32"), ("adamw", "float32"),
                                           ("adamw", "bf16_master")])
def test_evaluation_weights_are_the_average_and_training_weights_come_back_exactly(name, weights):
    """Inside Stepper.evaluation_weights a schedule-free optimizer's parameters hold its average x (what the
    library's own eval() computes: y + (1 - 1/beta1)(z - y)); afterwards the stepped y, bit for bit. For any other
    optimizer nothing changes. (prodigy_schedulefree cannot have bf16 master weights: refused above.)"""
    model = small_model().to(torch.bfloat16 if weights == "bf16_master" else torch.float32)
    stepper = Stepper(name, [{"params": list(model.parameters())}], 1.0 if "prodigy" in name else 1e-2, 0.01,
                      master_weights=weights == "bf16_master")
    x = torch.randn(8, 3, 6, 6, dtype=next(model.parameters()).dtype)
    with stepper.evaluation_weights():  # before any step: the weights themselves
        before = [p.detach().clone() for p in model.parameters()]
    for _ in range(5):
        with torch.autocast("cpu", torch.bfloat16, enabled=weights == "bf16_master"):
            stepper.step(stepper.backward(model(x).float().pow(2).mean(), 1.0))
    trained = [p.detach().clone() for p in model.parameters()]
    assert not all(torch.equal(a, b) for a, b in zip(before, trained))
    optimizer = stepper.optimizer
    with stepper.evaluation_weights():
        inside = [p.detach().clone() for p in model.parameters()]
    assert all(torch.equal(p, t) for p, t in zip(model.parameters(), trained))  # y is back, bit for bit
    if name == "adamw":
        assert all(torch.equal(a, t) for a, t in zip(inside, trained))
        return
    beta1 = getattr(optimizer, "momentum", None) or optimizer.param_groups[0]["betas"][0]
    for p, got in zip(model.parameters(), inside):
        z = optimizer.state[stepper.proxies.get(p, p)]["z"]
        want = torch.lerp(p.detach().float(), z.float(), 1 - 1 / beta1).to(p.dtype)
        assert torch.equal(got, want)
    assert any(not torch.equal(a, t) for a, t in zip(inside, trained))
    if weights == "float32":  # the library's own eval(), on the same optimizer
        optimizer.eval()
        assert all(torch.equal(p, a) for p, a in zip(model.parameters(), inside))
        optimizer.train()


# ---- the tiny model, in the training loop ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def one_image(tmp_path_factory):
    """One red 32 px image captioned red: every step trains on the same batch."""
    folder = tmp_path_factory.mktemp("one")
    Image.new("RGB", (32, 32), (200, 30, 30)).save(folder / "a.png")
    return folder


@pytest.fixture(scope="module")
def start_loss(tiny_model_dir, one_image) -> float:
    return eval_loss(tiny_model_dir, one_image, tiny_model_dir)


def one_image_preset(tmp_path, model, folder, **training):
    return make_preset(tmp_path, model, folder,
                       training={"batch_size": 4, "max_grad_norm": 0.0, **training},
                       concepts=[{"path": str(folder), "caption_source": "single", "caption": "red"}])


MODES = {"float32": {}, "bf16_sr": BF16_SR, "bf16_sr_fused": {**BF16_SR, "fused_backward": True}}
TRAINS = [(name, "float32") for name in NEW] + [(name, "bf16_sr") for name in BUCKETED] + \
    [("adamw_schedulefree", "bf16_sr_fused")]


@pytest.mark.parametrize("name, mode", TRAINS)
def test_each_optimizer_trains_the_tiny_model(name, mode, tiny_model_dir, one_image, start_loss, tmp_path):
    """20 steps on one fixed batch lower the UNet's loss on it (fixed noise and timesteps) by a twentieth or more
    (a model that was not stepped keeps it exactly)."""
    preset = one_image_preset(tmp_path, tiny_model_dir, one_image, max_steps=20, optimizer=name, learning_rate=LR[name],
                              **MODES[mode])
    finished, events = run_stopping_at(preset)
    assert finished.outcome == "completed", finished.message
    end = eval_loss(finished.output_path, one_image, tiny_model_dir)
    assert end < 0.95 * start_loss, (name, mode, start_loss, end)


# ---- exact resume ------------------------------------------------------------------------------------------------

RESUMES = [("adamw_schedulefree", "bf16_sr_fused"), ("prodigy_schedulefree", "float32"), ("came", "bf16_sr"),
           ("adopt", "float32"), ("ademamix", "bf16_sr")]
# a setting of each other than its default, and where the run's optimizer keeps it (its first param group)
SETTING = {"adamw_schedulefree": ({"lr_warmup_steps": 2}, "warmup_steps", 2),
           "prodigy_schedulefree": ({"prodigy_d_coef": 0.8}, "d_coef", 0.8),
           "came": ({"betas": "0.9,0.99,0.999"}, "betas", (0.9, 0.99, 0.999)),
           "adopt": ({"eps": "1e-7"}, "eps", 1e-7),
           "ademamix": ({"ademamix_t_alpha_beta3": 6}, "t_alpha_beta3", 6)}


def newest_backup(preset) -> tuple[dict, dict]:
    folder = complete_backups(Path(preset.general.workspace_dir) / "backup")[-1]
    return load_file(str(folder / "unet.safetensors")), torch.load(folder / "state.pt", weights_only=True)


@pytest.mark.parametrize("name, mode", RESUMES)
def test_resume_is_exact(name, mode, tiny_model_dir, color_concept, tmp_path):
    """Stopped at step 3 and resumed, a run ends with the same weights, optimizer state and group counters, LR
    schedule and model as one never interrupted (tests/test_backup.py's check, for each optimizer). The run's
    optimizer has the preset's settings."""
    setting, key, value = SETTING[name]
    training = {"max_steps": 8, "optimizer": name, "learning_rate": LR[name], "max_grad_norm": 0.0,
                "lr_warmup_steps": 2, **MODES[mode], **setting}
    backup = {"backup_unit": "never", "rolling_backups": 0}
    whole = make_preset(tmp_path / "whole", tiny_model_dir, color_concept, training=training, backup=backup)
    assert run_stopping_at(whole)[0].outcome == "completed"
    parts = make_preset(tmp_path / "parts", tiny_model_dir, color_concept, training=training, backup=backup)
    assert run_stopping_at(parts, stop_at=3)[0].outcome == "stopped"
    if name == "adamw_schedulefree":  # the optimizer's settings are in its saved state: a change is refused
        changed_preset = dataclasses.replace(parts, training=dataclasses.replace(parts.training, betas="0.95,0.999"))
        with pytest.raises(InputError, match=r"training\.betas: changed since the backup"):
            run_stopping_at(changed_preset, resume="latest")
    finished, events = run_stopping_at(parts, resume="latest")
    assert finished.outcome == "completed" and [e.step for e in events if isinstance(e, ev.Progress)] == [4, 5, 6, 7, 8]
    (weights_a, state_a), (weights_b, state_b) = newest_backup(whole), newest_backup(parts)
    assert weights_a.keys() == weights_b.keys() and all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    opt_a, opt_b = state_a["optimizer"], state_b["optimizer"]
    assert opt_a["param_groups"][0][key] == value
    assert [{k: v for k, v in g.items() if k != "params"} for g in opt_a["param_groups"]] == \
        [{k: v for k, v in g.items() if k != "params"} for g in opt_b["param_groups"]]
    assert opt_a["state"].keys() == opt_b["state"].keys() and opt_a["state"]
    for key, values in opt_a["state"].items():
        for item, value in values.items():
            other = opt_b["state"][key][item]
            assert torch.equal(value, other) if isinstance(value, torch.Tensor) else value == other, (key, item)
    assert state_a["lr_scheduler"]["_last_lr"] == state_b["lr_scheduler"]["_last_lr"]
    out_a, out_b = load_file(str(tmp_path / "whole" / "out.safetensors")), load_file(finished.output_path)
    assert all(torch.equal(out_a[k], out_b[k]) for k in out_a)


# ---- schedule-free: samples and saves use the average ---------------------------------------------------------

def unet_tensors(components) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in components.unet.state_dict().items()}


def library_average(name: str, folder: Path, model_dir) -> dict[str, torch.Tensor]:
    """The UNet's weights of a backup (the stepped y) moved to the optimizer's average x by the library's own
    eval() (schedulefree), on an optimizer loaded with the backup's state."""
    from trainer.model.models import load_model
    unet = load_model(str(model_dir)).unet
    unet.load_state_dict(load_file(str(folder / "unet.safetensors")))
    optimizer = make_optimizer(name, [{"params": [p for p in unet.parameters() if p.requires_grad]}], LR[name])
    optimizer.load_state_dict(torch.load(folder / "state.pt", weights_only=True)["optimizer"])
    optimizer.eval()
    return {k: v.detach().clone() for k, v in unet.state_dict().items()}


@pytest.mark.parametrize("name", ["adamw_schedulefree", "prodigy_schedulefree"])
def test_schedule_free_samples_and_saves_use_its_average(name, tiny_model_dir, color_concept, tmp_path, monkeypatch):
    """Samples and the saved model use the optimizer's average x, as schedulefree's eval() makes it from a
    backup's stepped weights y and state; backups keep y; sampling leaves the training exactly as it was (the same
    run without samples ends with the same backup)."""
    from trainer.model.models import load_model
    seen = []

    def fake_generate(pipe, prompt, device, **kwargs):  # what the sample is drawn from, without drawing it
        seen.append({k: v.detach().clone() for k, v in pipe.unet.state_dict().items()})
        return Image.new("RGB", (32, 32))
    monkeypatch.setattr(outputs, "generate", fake_generate)
    training = {"max_steps": 6, "optimizer": name, "learning_rate": LR[name], "lr_warmup_steps": 2}
    runs = {}
    for sampled in (True, False):
        sampling = {"unit": "steps", "every": 3, "prompts": [{"prompt": "red", "width": 32, "height": 32}]} \
            if sampled else {"unit": "never"}
        preset = make_preset(tmp_path / str(sampled), tiny_model_dir, color_concept, training=training,
                             sampling=sampling, backup={"backup_unit": "steps", "backup_every": 3,
                                                        "rolling_backups": 0})
        finished, events = run_stopping_at(preset)
        assert finished.outcome == "completed", finished.message
        runs[sampled] = preset, finished
    assert len(seen) == 2  # steps 3 and 6
    backups = complete_backups(Path(runs[True][0].general.workspace_dir) / "backup")
    assert [b.name for b in backups] == ["step0000003-epoch0001", "step0000006-epoch0002"]
    saved = unet_tensors(load_model(runs[True][1].output_path, str(tiny_model_dir)))
    for sample, folder in zip(seen, backups):
        average, stepped = library_average(name, folder, tiny_model_dir), load_file(str(folder / "unet.safetensors"))
        assert all(torch.equal(sample[k], average[k]) for k in average), folder.name
        assert max((sample[k] - stepped[k]).abs().max().item() for k in stepped) > 1e-6, folder.name
    assert all(torch.equal(saved[k], average[k]) for k in average)  # the final model: the average at step 6
    quiet = complete_backups(Path(runs[False][0].general.workspace_dir) / "backup")[-1]
    assert all(torch.equal(a, b) for a, b in zip(load_file(str(backups[-1] / "unet.safetensors")).values(),
                                                 load_file(str(quiet / "unet.safetensors")).values()))
