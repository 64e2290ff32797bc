"""Tests for trainer.train.losses: noise, timesteps, targets, min-SNR weights and the loss."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from trainer.train.losses import (
                                  compute_snr,
                                  configure_noise_scheduler,
                                  diffusion_loss,
                                  make_noise,
                                  min_snr_weights,
                                  sample_timesteps,
                                  training_target,
                                  )

# The SD 1.5 scheduler config (a PNDMScheduler's, as shipped in the model folder).
SD15_SCHEDULER = {
    "_class_name": "PNDMScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
    "clip_sample": False,
}


def _scheduler(prediction_type="epsilon", zero_terminal_snr=False):
    return configure_noise_scheduler(SD15_SCHEDULER, prediction_type, zero_terminal_snr)


def test_make_noise_is_gaussian_with_the_latents_shape_and_dtype():
    latents = torch.zeros(4, 4, 16, 16, dtype=torch.float64)
    noise = make_noise(latents, generator=torch.Generator().manual_seed(0))
    assert noise.shape == latents.shape and noise.dtype == torch.float64
    assert abs(noise.mean().item()) < 0.05 and abs(noise.std().item() - 1) < 0.05
    again = make_noise(latents, generator=torch.Generator().manual_seed(0))
    assert torch.equal(noise, again)


def test_noise_offset_shifts_each_channel_mean():
    latents = torch.zeros(64, 4, 32, 32)
    plain = make_noise(latents, generator=torch.Generator().manual_seed(1))
    offset = make_noise(latents, generator=torch.Generator().manual_seed(1), noise_offset=0.5)
    plain_means = plain.mean(dim=(2, 3))  # (B, C): ~N(0, 1/1024), std ~0.03
    offset_means = offset.mean(dim=(2, 3))  # plus 0.5 * N(0, 1), std ~0.5
    assert plain_means.std() < 0.06
    assert 0.35 < offset_means.std() < 0.65
    # The offset is constant over each channel's pixels: subtracting the channel means leaves plain-like noise.
    centred = offset - offset.mean(dim=(2, 3), keepdim=True)
    assert abs(centred.std().item() - 1) < 0.05


def test_sample_timesteps_are_uniform_ints_in_range():
    t = sample_timesteps(20000, 1000, "cpu", generator=torch.Generator().manual_seed(0))
    assert t.dtype == torch.long and t.shape == (20000,)
    assert t.min() >= 0 and t.max() <= 999
    assert t.min() < 20 and 980 < t.max()
    assert abs(t.float().mean().item() - 499.5) < 10


def test_configure_noise_scheduler_sets_prediction_type_and_keeps_the_schedule():
    scheduler = _scheduler("v_prediction")
    assert type(scheduler).__name__ == "DDPMScheduler"
    assert scheduler.config.prediction_type == "v_prediction"
    assert scheduler.config.rescale_betas_zero_snr is False
    assert scheduler.config.beta_schedule == "scaled_linear"
    assert scheduler.alphas_cumprod[-1] > 1e-3  # SD 1.5's schedule leaves signal at the last step


def test_zero_terminal_snr_scheduler_ends_in_pure_noise():
    scheduler = _scheduler("v_prediction", zero_terminal_snr=True)
    assert scheduler.config.rescale_betas_zero_snr is True
    assert scheduler.config.timestep_spacing == "trailing"
    assert scheduler.alphas_cumprod[-1].item() == pytest.approx(0.0, abs=1e-9)
    assert scheduler.alphas_cumprod[0].item() > 0.99
    assert torch.all(scheduler.alphas_cumprod[1:] <= scheduler.alphas_cumprod[:-1])
    # Samplers built from this config start at the last timestep (Lin et al. 2023, section 3.3).
    scheduler.set_timesteps(10)
    assert scheduler.timesteps[0].item() == 999


def test_zero_terminal_snr_with_epsilon_and_unknown_prediction_are_refused():
    with pytest.raises(ValueError, match="v_prediction"):
        _scheduler("epsilon", zero_terminal_snr=True)
    with pytest.raises(ValueError, match="prediction_type"):
        _scheduler("flow")


def test_compute_snr_matches_alphas_cumprod():
    scheduler = _scheduler()
    t = torch.tensor([0, 250, 999])
    alpha_bar = scheduler.alphas_cumprod[t]
    assert torch.allclose(compute_snr(scheduler, t), alpha_bar / (1 - alpha_bar))
    snr_all = compute_snr(scheduler, torch.arange(1000))
    assert torch.all(snr_all[1:] < snr_all[:-1])  # SNR falls as noise grows
    zero = _scheduler("v_prediction", zero_terminal_snr=True)
    assert compute_snr(zero, torch.tensor([999])).item() == 0.0


def test_epsilon_target_is_the_noise():
    latents, noise = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    target = training_target(_scheduler("epsilon"), latents, noise, torch.tensor([10, 900]))
    assert torch.equal(target, noise)


def test_v_target_is_alpha_noise_minus_sigma_latents():
    scheduler = _scheduler("v_prediction")
    latents, noise = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    t = torch.tensor([0, 500, 999])
    alpha_bar = scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    expected = alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * latents
    assert torch.allclose(training_target(scheduler, latents, noise, t), expected, atol=1e-6)
    # At zero terminal SNR, v at the last step is -latents: the model must predict the image from pure noise.
    zero = _scheduler("v_prediction", zero_terminal_snr=True)
    v_last = training_target(zero, latents[:1], noise[:1], torch.tensor([999]))
    assert torch.allclose(v_last, -latents[:1], atol=1e-6)


def test_min_snr_weights_match_the_formula():
    snr = torch.tensor([0.01, 0.5, 1.0, 5.0, 20.0, 1000.0])
    gamma = 5.0
    eps = min_snr_weights(snr, gamma, "epsilon")
    v = min_snr_weights(snr, gamma, "v_prediction")
    assert torch.allclose(eps, torch.minimum(snr, torch.tensor(gamma)) / snr)
    assert torch.allclose(v, torch.minimum(snr, torch.tensor(gamma)) / (snr + 1))
    assert torch.allclose(eps[:4], torch.ones(4))  # low SNR (noisy steps) keeps full weight
    assert eps[-1].item() == pytest.approx(gamma / 1000.0)  # easy, nearly clean steps are down-weighted


def test_min_snr_weights_are_finite_at_zero_terminal_snr():
    scheduler = _scheduler("v_prediction", zero_terminal_snr=True)
    snr = compute_snr(scheduler, torch.arange(1000))
    assert snr[-1].item() == 0.0
    for prediction_type in ("epsilon", "v_prediction"):
        weights = min_snr_weights(snr, 5.0, prediction_type)
        assert torch.isfinite(weights).all(), prediction_type
        assert (weights >= 0).all() and (weights <= 1).all()
    assert min_snr_weights(torch.tensor([0.0]), 5.0, "epsilon").item() == 1.0
    assert min_snr_weights(torch.tensor([0.0]), 5.0, "v_prediction").item() == 0.0
    with pytest.raises(ValueError):
        min_snr_weights(snr, 0.0, "epsilon")


def test_diffusion_loss_without_weights_is_plain_mse_in_float32():
    scheduler = _scheduler()
    pred = torch.randn(4, 4, 8, 8, dtype=torch.bfloat16)
    target = torch.randn(4, 4, 8, 8, dtype=torch.bfloat16)
    loss = diffusion_loss(pred, target, torch.tensor([1, 2, 3, 4]), scheduler)
    assert loss.dtype == torch.float32 and loss.ndim == 0
    assert torch.allclose(loss, F.mse_loss(pred.float(), target.float()))


def test_diffusion_loss_applies_min_snr_weights_per_sample():
    scheduler = _scheduler("epsilon")
    pred, target = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    t = torch.tensor([10, 900])  # SNR >> 5 and SNR << 5
    per_sample = ((pred - target) ** 2).mean(dim=(1, 2, 3))
    weights = min_snr_weights(compute_snr(scheduler, t), 5.0, "epsilon")
    assert weights[0] < 0.2 and weights[1] == 1.0
    loss = diffusion_loss(pred, target, t, scheduler, min_snr_gamma=5.0)
    assert torch.allclose(loss, (per_sample * weights).mean())
    assert loss < diffusion_loss(pred, target, t, scheduler)


def test_diffusion_loss_per_sample_weight_scales_each_sample():
    scheduler = _scheduler()
    pred, target = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    t = torch.tensor([100, 200, 300])
    per_sample = ((pred - target) ** 2).mean(dim=(1, 2, 3))
    loss = diffusion_loss(pred, target, t, scheduler, per_sample_weight=[2.0, 0.0, 1.0])
    assert torch.allclose(loss, (2 * per_sample[0] + per_sample[2]) / 3)
    ones = diffusion_loss(pred, target, t, scheduler, per_sample_weight=torch.ones(3))
    assert torch.allclose(ones, diffusion_loss(pred, target, t, scheduler))
    with pytest.raises(ValueError, match="batch of 3"):
        diffusion_loss(pred, target, t, scheduler, per_sample_weight=[1.0, 2.0])


def test_diffusion_loss_gradient_reaches_the_prediction():
    scheduler = _scheduler("v_prediction", zero_terminal_snr=True)
    pred = torch.randn(2, 4, 8, 8, requires_grad=True)
    t = torch.tensor([999, 500])  # includes the SNR = 0 step
    loss = diffusion_loss(pred, torch.zeros(2, 4, 8, 8), t, scheduler, min_snr_gamma=5.0, per_sample_weight=[1.0, 1.0])
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(pred.grad).all()
    assert pred.grad[1].abs().sum() > 0
