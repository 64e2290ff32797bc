"""Loss and timestep control: the loss types (mse, l1, huber, smooth_l1) and the scheduled Huber delta as kohya
computes them, debiased estimation beside min-SNR, the timestep distributions and their range (the engine's draws
against the window plot's exact probabilities), the preset's checks, and the wiring on the tiny model: each field
changes the loss, an equivalent configuration gives the same loss, batch 2 equals two accumulated batches of 1 and
a resumed run continues exactly."""
from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from app.timestep_plot import timestep_probabilities
from tiny_presets import make_preset, run_stopping_at
from trainer import events as ev
from trainer.config import Preset, validate
from trainer.train.losses import (
                                  DEBIASED_SNR_CAP,
                                  compute_snr,
                                  configure_noise_scheduler,
                                  debiased_weights,
                                  diffusion_loss,
                                  elementwise_loss,
                                  huber_c_per_timestep,
                                  min_snr_weights,
                                  sample_timesteps,
                                  )
from trainer.train.step import sample_generator

SD15_SCHEDULER = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
                  "num_train_timesteps": 1000, "steps_offset": 1, "clip_sample": False}


def scheduler(prediction_type="epsilon", zero_terminal_snr=False):
    return configure_noise_scheduler(SD15_SCHEDULER, prediction_type, zero_terminal_snr)


# ---- the loss of each element ---------------------------------------------------------------------------

D = torch.tensor([0.0, 0.01, -0.05, 0.3, 1.0, -3.0])  # prediction - target, small to large


@pytest.mark.parametrize("c", [0.1, 0.5, 2.0])
def test_each_loss_type_is_its_formula(c):
    target = torch.linspace(-1, 1, 6)
    pred = target + D
    per_sample_c = torch.tensor([c])
    got = {t: elementwise_loss(pred[None], target[None], t, per_sample_c)[0]
           for t in ("mse", "l1", "huber", "smooth_l1")}
    for k, d in enumerate((pred - target).double().tolist()):
        root = math.sqrt(d * d + c * c)
        expected = {"mse": d * d, "l1": abs(d), "huber": 2 * c * (root - c), "smooth_l1": 2 * (root - c)}
        for loss_type, value in expected.items():
            assert got[loss_type][k].item() == pytest.approx(value, rel=1e-5, abs=1e-7), (loss_type, d)
    # pseudo-Huber: squared error for errors far below c, 2c|d| (a slope of 2c) far above it
    assert 2 * c * (math.sqrt(1e-8 + c * c) - c) == pytest.approx(1e-8, rel=1e-3)
    assert got["huber"][5].item() < got["mse"][5].item()  # an outlier (|d| = 3) pulls less than with mse
    assert torch.allclose(got["smooth_l1"] * c, got["huber"])


def test_a_known_value_of_each_loss():
    one = torch.ones(1, 1)  # d = 1, c = 0.1: sqrt(1.01) = 1.00498756...
    c = torch.tensor([0.1])
    assert elementwise_loss(one, 0 * one, "huber", c).item() == pytest.approx(0.2 * 0.9049875621, rel=1e-6)
    assert elementwise_loss(one, 0 * one, "smooth_l1", c).item() == pytest.approx(1.809975124, rel=1e-6)
    assert elementwise_loss(-2 * one, 0 * one, "l1").item() == 2.0
    assert elementwise_loss(-2 * one, 0 * one, "mse").item() == 4.0


def test_loss_type_errors():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="huber_c"):
        elementwise_loss(x, x, "huber")
    with pytest.raises(ValueError, match="loss_type"):
        elementwise_loss(x, x, "l2")
    with pytest.raises(ValueError, match="huber_c must be above 0"):
        huber_c_per_timestep(scheduler(), torch.tensor([1]), 0.0, "constant")
    with pytest.raises(ValueError, match="huber_schedule"):
        huber_c_per_timestep(scheduler(), torch.tensor([1]), 0.1, "linear")


# ---- the scheduled Huber delta --------------------------------------------------------------------------

def kohya_huber_c(noise_scheduler, timesteps, huber_c, schedule):
    """sd-scripts library/train_util.py get_huber_threshold_if_needed (huber_scale 1), written out again."""
    if schedule == "exponential":
        alpha = -math.log(huber_c) / noise_scheduler.config.num_train_timesteps
        return torch.exp(-alpha * timesteps)
    if schedule == "snr":
        alphas_cumprod = torch.index_select(noise_scheduler.alphas_cumprod, 0, timesteps)
        sigmas = ((1.0 - alphas_cumprod) / alphas_cumprod) ** 0.5
        return (1 - huber_c) / (1 + sigmas) ** 2 + huber_c
    return torch.full((timesteps.shape[0],), huber_c)


@pytest.mark.parametrize("schedule", ["constant", "exponential", "snr"])
@pytest.mark.parametrize("c", [0.1, 0.3])
def test_scheduled_huber_c_is_kohyas(schedule, c):
    s = scheduler()
    t = torch.tensor([0, 1, 100, 250, 500, 750, 999])
    ours = huber_c_per_timestep(s, t, c, schedule)
    assert ours.shape == (7,) and ours.dtype == torch.float32
    assert torch.allclose(ours, kohya_huber_c(s, t, c, schedule).float(), rtol=1e-5)
    if schedule != "constant":  # from about 1 at low noise down towards c at the noisiest timestep
        assert torch.all(ours[1:] < ours[:-1]) and ours[0] > 0.9 and ours[-1] < c + 0.02


def test_huber_schedule_end_points():
    assert huber_c_per_timestep(scheduler(), torch.tensor([0, 1000]), 0.1, "exponential").tolist() == \
        pytest.approx([1.0, 0.1], rel=1e-6)
    zero = scheduler("v_prediction", zero_terminal_snr=True)  # alpha_bar = 0 at 999: sigma infinite, c itself
    assert huber_c_per_timestep(zero, torch.tensor([999]), 0.1, "snr").item() == pytest.approx(0.1, rel=1e-6)


def test_diffusion_loss_uses_each_samples_own_huber_c():
    s = scheduler()
    pred, target, t = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8), torch.tensor([10, 500, 990])
    c = kohya_huber_c(s, t, 0.1, "snr").view(-1, 1, 1, 1)
    expected = (2 * c * (torch.sqrt((pred - target) ** 2 + c ** 2) - c)).mean()
    got = diffusion_loss(pred, target, t, s, loss_type="huber", huber_c=0.1, huber_schedule="snr")
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    assert diffusion_loss(pred, target, t, s).item() == pytest.approx(((pred - target) ** 2).mean().item(), rel=1e-6)
    assert diffusion_loss(pred, target, t, s, loss_type="l1").item() == \
        pytest.approx((pred - target).abs().mean().item(), rel=1e-6)


# ---- debiased estimation --------------------------------------------------------------------------------

def test_debiased_weights_are_kohyas():
    s = scheduler()
    t = torch.tensor([0, 1, 10, 300, 999])
    snr = compute_snr(s, t)
    assert snr[0] > DEBIASED_SNR_CAP  # SD 1.5's first timestep: about 1175, capped
    capped = torch.minimum(snr, torch.full_like(snr, 1000.0))  # apply_debiased_estimation's clamp
    assert torch.allclose(debiased_weights(snr, "epsilon"), 1 / torch.sqrt(capped), rtol=1e-6)
    assert debiased_weights(snr, "epsilon")[0].item() == pytest.approx(1 / math.sqrt(1000), rel=1e-6)
    assert torch.allclose(debiased_weights(snr, "v_prediction"), 1 / (capped + 1), rtol=1e-6)
    zero = scheduler("v_prediction", zero_terminal_snr=True)
    assert debiased_weights(compute_snr(zero, torch.tensor([999])), "v_prediction").item() == 1.0
    with pytest.raises(ValueError):
        debiased_weights(snr, "flow")


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_debiased_and_min_snr_weights_multiply(prediction_type):
    s = scheduler(prediction_type)
    pred, target, t = torch.randn(4, 4, 8, 8), torch.randn(4, 4, 8, 8), torch.tensor([3, 200, 600, 950])
    per_sample = ((pred - target) ** 2).reshape(4, -1).mean(dim=1)
    snr = compute_snr(s, t)
    w_debiased, w_min = debiased_weights(snr, prediction_type), min_snr_weights(snr, 5.0, prediction_type)
    got = diffusion_loss(pred, target, t, s, debiased_estimation=True)
    assert got.item() == pytest.approx((per_sample * w_debiased).mean().item(), rel=1e-5)
    both = diffusion_loss(pred, target, t, s, 5.0, [1.0, 2.0, 1.0, 0.5], debiased_estimation=True)
    concept = torch.tensor([1.0, 2.0, 1.0, 0.5])
    assert both.item() == pytest.approx((per_sample * w_min * w_debiased * concept).mean().item(), rel=1e-5)


# ---- timestep distributions -----------------------------------------------------------------------------

def chi_square(draws: torch.Tensor, probabilities: list[float], bin_width: int = 25) -> tuple[float, int]:
    """Pearson's chi-square of timestep draws against P(t = k), over bins of `bin_width` timesteps (bins expecting
    fewer than 5 draws merged into the next); returns (statistic, degrees of freedom)."""
    counts = torch.bincount(draws, minlength=len(probabilities)).tolist()
    n = len(draws)
    bins, observed, expected = [], 0.0, 0.0
    for start in range(0, len(probabilities), bin_width):
        observed += sum(counts[start:start + bin_width])
        expected += n * sum(probabilities[start:start + bin_width])
        if expected >= 5:
            bins.append((observed, expected))
            observed = expected = 0.0
    if expected > 0 or observed > 0:
        if expected == 0:
            return math.inf, len(bins)  # draws where the distribution has none
        bins[-1] = (bins[-1][0] + observed, bins[-1][1] + expected)
    return sum((o - e) ** 2 / e for o, e in bins), len(bins) - 1


def test_the_default_draw_is_the_uniform_draw_it_always_was():
    """The whole range, uniform: value for value the draw before these settings existed (backups resume the
    same)."""
    for seed in range(5):
        ours = sample_timesteps(3, 1000, "cpu", generator=torch.Generator().manual_seed(seed))
        before = torch.randint(0, 1000, (3,), generator=torch.Generator().manual_seed(seed), dtype=torch.long)
        assert torch.equal(ours, before)


@pytest.mark.parametrize("low, high", [(0, 1000), (200, 800), (0, 1), (999, 1000), (450, 452)])
def test_uniform_draws_respect_the_range(low, high):
    t = sample_timesteps(50_000, 1000, "cpu", generator=torch.Generator().manual_seed(1), min_timestep=low,
                         max_timestep=high)
    assert t.dtype == torch.long and t.min().item() == low and t.max().item() == high - 1  # both ends reached
    stat, dof = chi_square(t, timestep_probabilities("uniform", min_timestep=low, max_timestep=high))
    assert stat < dof + 6 * math.sqrt(2 * max(dof, 1)) + 10


@pytest.mark.parametrize("mean, std, low, high", [(0.0, 1.0, 0, 1000), (0.7, 0.6, 100, 900),
                                                  (-1.0, 2.0, 0, 1000), (0.0, 1.0, 300, 301)])
def test_logit_normal_draws_follow_the_plots_probabilities(mean, std, low, high):
    kw = {"distribution": "logit_normal", "logit_mean": mean, "logit_std": std, "min_timestep": low,
          "max_timestep": high}
    t = sample_timesteps(100_000, 1000, "cpu", generator=torch.Generator().manual_seed(2), **kw)
    assert t.min() >= low and t.max() <= high - 1
    probabilities = timestep_probabilities("logit_normal", mean, std, low, high)
    assert sum(probabilities) == pytest.approx(1.0, abs=1e-9)
    assert all(p == 0 for k, p in enumerate(probabilities) if not low <= k < high)
    stat, dof = chi_square(t, probabilities)
    assert stat < dof + 6 * math.sqrt(2 * max(dof, 1)) + 10, (stat, dof)
    if high - low > 100:  # the logit of the position in the range is Normal(mean, std), up to rounding
        u = (t.double() + 0.5 - low) / (high - low)
        z = torch.log(u / (1 - u))
        assert z.mean().item() == pytest.approx(mean, abs=0.03)
        assert z.std().item() == pytest.approx(std, rel=0.03)
        wrong = timestep_probabilities("logit_normal", mean + 0.2, std, low, high)  # the check can tell them apart
        assert chi_square(t, wrong)[0] > 3 * (dof + 6 * math.sqrt(2 * dof) + 10)


def test_logit_normal_from_the_steps_per_sample_generators():
    """One draw per sample from step.sample_generator (as micro_batch_loss draws, after the latent and the noise):
    the same distribution."""
    draws = []
    for position in range(20_000):
        g = sample_generator(7, 3, position)
        torch.randn(4, 4, 4, generator=g), torch.randn(4, 4, 4, generator=g)  # the latent and noise draws first
        draws.append(sample_timesteps(1, 1000, "cpu", generator=g, distribution="logit_normal", logit_mean=0.5,
                                      logit_std=1.2, min_timestep=50, max_timestep=950))
    t = torch.cat(draws)
    stat, dof = chi_square(t, timestep_probabilities("logit_normal", 0.5, 1.2, 50, 950), bin_width=50)
    assert stat < dof + 6 * math.sqrt(2 * dof) + 10, (stat, dof)


def test_uniform_and_logit_normal_differ_as_they_should():
    mid = sample_timesteps(20_000, 1000, "cpu", generator=torch.Generator().manual_seed(3),
                           distribution="logit_normal")
    flat = sample_timesteps(20_000, 1000, "cpu", generator=torch.Generator().manual_seed(3))
    in_middle = lambda t: ((t >= 250) & (t < 750)).float().mean().item()  # noqa: E731
    assert in_middle(flat) == pytest.approx(0.5, abs=0.02)
    assert in_middle(mid) == pytest.approx(2 * 0.5 * math.erf(math.log(3) / math.sqrt(2)), abs=0.02)  # 0.729
    noisy = sample_timesteps(20_000, 1000, "cpu", generator=torch.Generator().manual_seed(3),
                             distribution="logit_normal", logit_mean=1.0)
    assert noisy.float().mean() > mid.float().mean() + 100  # a positive mean favours noisier timesteps


def test_timestep_errors():
    g = torch.Generator().manual_seed(0)
    for kw in ({"min_timestep": 500, "max_timestep": 500}, {"max_timestep": 1001}, {"min_timestep": -1}):
        with pytest.raises(ValueError, match="timestep range"):
            sample_timesteps(1, 1000, "cpu", generator=g, **kw)
        with pytest.raises(ValueError):
            timestep_probabilities("uniform", **kw)
    with pytest.raises(ValueError, match="logit_std"):
        sample_timesteps(1, 1000, "cpu", generator=g, distribution="logit_normal", logit_std=0.0)
    with pytest.raises(ValueError, match="distribution"):
        sample_timesteps(1, 1000, "cpu", generator=g, distribution="beta")


# ---- the preset -----------------------------------------------------------------------------------------

def test_preset_checks():
    preset = Preset()
    assert validate(preset) == []
    preset.training.min_timestep, preset.training.max_timestep = 600, 600
    assert any(p.startswith("training.max_timestep: must be above the min timestep 600") for p in validate(preset))
    preset.training.max_timestep = 601  # exclusive: one timestep, 600
    assert validate(preset) == []
    preset.training.huber_c = 0.0
    assert validate(preset) == []  # mse does not use it
    preset.training.loss_type = "smooth_l1"
    assert "training.huber_c: must be above 0 for loss smooth_l1" in validate(preset)
    preset.training.huber_c, preset.training.loss_type = 0.1, "l2"
    assert any(p.startswith("training.loss_type:") for p in validate(preset))
    preset.training.loss_type, preset.training.timestep_logit_std = "huber", 0.0
    assert any(p.startswith("training.timestep_logit_std:") for p in validate(preset))
    preset.training.timestep_logit_std, preset.training.max_timestep = 1.0, 1001
    assert any(p.startswith("training.max_timestep:") for p in validate(preset))


# ---- on the tiny model: each field changes the loss, and an equivalent setting gives the same ------------

def first_loss(tmp_path, model, concept, name: str, **training) -> float:
    """The loss of the first step (before any update) of a one-step run on the tiny model."""
    finished, events = run_stopping_at(make_preset(tmp_path / name, model, concept,
                                                   training={"max_steps": 1, **training}))
    assert finished.outcome == "completed", finished.message
    (loss,) = [e.loss for e in events if isinstance(e, ev.Progress)]
    return loss


def only(t: int) -> dict:
    """The range that holds timestep t alone."""
    return {"min_timestep": t, "max_timestep": t + 1}


def test_the_loss_fields_are_wired(tiny_model_dir, color_concept, tmp_path):
    config = json.loads((tiny_model_dir / "scheduler" / "scheduler_config.json").read_text())
    s = configure_noise_scheduler(config, config.get("prediction_type", "epsilon"), False)
    loss = lambda name, **kw: first_loss(tmp_path, tiny_model_dir, color_concept, name, **kw)  # noqa: E731

    mse, l1 = loss("mse"), loss("l1", loss_type="l1")
    assert abs(mse - l1) > 0.05 * mse
    huber = loss("huber", loss_type="huber", huber_schedule="constant", huber_c=0.5)
    smooth = loss("smooth", loss_type="smooth_l1", huber_schedule="constant", huber_c=0.5)
    assert huber == pytest.approx(0.5 * smooth, rel=1e-5) and abs(huber - mse) > 0.05 * mse

    # the range: one timestep; the distribution and the Huber schedule of one timestep
    at300 = loss("at300", **only(300))
    assert abs(at300 - loss("at700", **only(700))) > 1e-4 * at300
    assert loss("logit300", timestep_distribution="logit_normal", timestep_logit_mean=2.0, **only(300)) == \
        pytest.approx(at300, rel=1e-6)
    logit = loss("logit", timestep_distribution="logit_normal", timestep_logit_std=0.3)
    assert abs(logit - mse) > 1e-4 * mse
    for name, moved in (("mean", {"timestep_logit_mean": 1.5}), ("std", {"timestep_logit_std": 2.5})):
        other = loss(name, timestep_distribution="logit_normal", **{"timestep_logit_std": 0.3, **moved})
        assert abs(other - logit) > 1e-4 * logit, name  # the same draws give exactly the same loss
    c500 = kohya_huber_c(s, torch.tensor([500]), 0.1, "snr").item()
    assert loss("snr500", loss_type="huber", huber_c=0.1, huber_schedule="snr", **only(500)) == \
        pytest.approx(loss("const500", loss_type="huber", huber_c=c500, huber_schedule="constant", **only(500)),
                      rel=1e-5)

    # the weights at one (low-noise) timestep: the plain loss times the weight there
    at50 = loss("at50", **only(50))
    snr = compute_snr(s, torch.tensor([50]))
    w_debiased = debiased_weights(snr, "epsilon").item()
    w_min = min_snr_weights(snr, 5.0, "epsilon").item()
    assert w_debiased < 0.5 and w_min < 0.5  # both weigh low noise down: the checks below can fail
    assert loss("deb50", debiased_estimation=True, **only(50)) == pytest.approx(at50 * w_debiased, rel=1e-5)
    assert loss("both50", debiased_estimation=True, min_snr_gamma=5.0, **only(50)) == \
        pytest.approx(at50 * w_debiased * w_min, rel=1e-5)


# ---- determinism and exact resume with the new draws --------------------------------------------------

def unet_weights(path) -> dict:
    return {k: v for k, v in load_file(str(path)).items() if k.startswith("model.diffusion_model.")}


@pytest.fixture(scope="module")
def initial(tiny_model_dir, tmp_path_factory):
    from trainer.model.models import load_model, save_model
    return save_model(load_model(str(tiny_model_dir)), tmp_path_factory.mktemp("init") / "init.safetensors",
                      "single_file", "float32", {})


LOGIT_HUBER = {"timestep_distribution": "logit_normal", "timestep_logit_mean": 0.4, "timestep_logit_std": 1.3,
               "min_timestep": 20, "max_timestep": 980, "loss_type": "huber", "huber_schedule": "snr",
               "debiased_estimation": True}


def test_batch_of_two_equals_two_accumulated_batches_of_one(tiny_model_dir, color_concept, tmp_path, initial):
    common = {"max_steps": 1, "optimizer": "sgd", "max_grad_norm": 0.0, "learning_rate": 0.5, **LOGIT_HUBER}

    def update(name, **kw):
        finished = run_stopping_at(make_preset(tmp_path / name, tiny_model_dir, color_concept,
                                               training={**common, **kw}))[0]
        assert finished.outcome == "completed", finished.message
        return unet_weights(finished.output_path)
    w0 = unet_weights(initial)
    big = update("big", batch_size=2)
    accumulated = update("acc", batch_size=1, gradient_accumulation_steps=2)
    uniform = update("uniform", batch_size=2, timestep_distribution="uniform")

    def gap(x, y):  # distance between two updates, relative to the size of the update
        return (sum((x[k] - y[k]).norm() ** 2 for k in w0) / sum((x[k] - w0[k]).norm() ** 2 for k in w0)).sqrt()
    assert gap(big, accumulated) < 1e-3  # float32 rounding differs between batch shapes
    assert gap(big, uniform) > 0.05  # other timesteps give another update: the test can tell them apart


def test_resume_is_exact_with_logit_normal_timesteps(tiny_model_dir, color_concept, tmp_path):
    training = {"max_steps": 6, "batch_size": 2, **LOGIT_HUBER}
    backup = {"backup_unit": "never", "rolling_backups": 0}
    whole = run_stopping_at(make_preset(tmp_path / "whole", tiny_model_dir, color_concept, training=training,
                                        backup=backup))[0]
    preset = make_preset(tmp_path / "parts", tiny_model_dir, color_concept, training=training, backup=backup)
    assert run_stopping_at(preset, stop_at=3)[0].outcome == "stopped"
    resumed, events = run_stopping_at(preset, resume="latest")
    assert [e.step for e in events if isinstance(e, ev.Progress)] == [4, 5, 6]
    a, b = unet_weights(whole.output_path), unet_weights(resumed.output_path)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_timestep_range_past_the_models_schedule_is_refused(tiny_model_dir, color_concept, tmp_path):
    """A base model trained on fewer timesteps than training.max_timestep is refused naming the field (not a
    traceback at the first step)."""
    import json
    import shutil

    from tiny_presets import make_preset
    from trainer.errors import InputError
    from trainer.train.loop import train
    model = shutil.copytree(tiny_model_dir, tmp_path / "short")
    config = model / "scheduler" / "scheduler_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "num_train_timesteps": 500}))
    preset = make_preset(tmp_path, model, color_concept, training={"max_steps": 1})
    with pytest.raises(InputError, match="training.max_timestep: 1000 is past this model's 500"):
        train(preset, lambda e: None)
