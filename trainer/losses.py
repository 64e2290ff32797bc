"""Noise, timesteps, training targets (epsilon / v) and min-SNR loss weights: pure torch functions. No UI here."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from trainer.config import PREDICTION_TYPES


def make_noise(
    latents: torch.Tensor,
    generator: torch.Generator | None = None,
    noise_offset: float = 0.0,
) -> torch.Tensor:
    """Gaussian noise shaped like `latents` (B, C, H, W), on its device and in its dtype.

    With `noise_offset > 0`, adds `noise_offset * randn(B, C, 1, 1)`: one random constant per image and channel
    (Nicholas Guttenberg, Crosslabs 2023, "Diffusion with Offset Noise"). The plain schedule never destroys an
    image's mean colour, so a model trained on it cannot make images much darker or brighter than average; the
    offset teaches it to change the low frequencies too. Typical values: 0.05 to 0.1.
    """
    noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
    if noise_offset:
        offset = torch.randn(
            (latents.shape[0], latents.shape[1], 1, 1), generator=generator, device=latents.device, dtype=latents.dtype
        )
        noise = noise + noise_offset * offset
    return noise


def sample_timesteps(
    batch_size: int,
    num_train_timesteps: int,
    device: torch.device | str,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One timestep per sample, uniform over [0, num_train_timesteps), as int64 (Ho et al. 2020, DDPM, Alg. 1)."""
    return torch.randint(0, num_train_timesteps, (batch_size,), device=device, generator=generator, dtype=torch.long)


def configure_noise_scheduler(
    scheduler_config: Mapping[str, Any],
    prediction_type: str,
    zero_terminal_snr: bool,
) -> DDPMScheduler:
    """The training noise scheduler: a DDPMScheduler built from a model's scheduler config.

    `prediction_type` is what the UNet learns to predict: "epsilon" (the noise, as SD 1.5 was trained) or
    "v_prediction" (v = alpha_t * noise - sigma_t * x0; Salimans & Ho 2022, "Progressive Distillation").

    `zero_terminal_snr` rescales the betas so the last timestep is pure noise (SNR = 0), and sets "trailing" timestep
    spacing so samplers built from this config start from that last timestep (Lin et al. 2023, "Common Diffusion
    Noise Schedules and Sample Steps are Flawed", sections 3.1 and 3.3). The paper requires v-prediction with it:
    at SNR = 0 an epsilon model cannot say anything about the image, so that pair is refused.
    """
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
    if zero_terminal_snr and prediction_type != "v_prediction":
        raise ValueError("zero terminal SNR needs prediction_type 'v_prediction' (Lin et al. 2023)")
    overrides: dict[str, Any] = {"prediction_type": prediction_type, "rescale_betas_zero_snr": bool(zero_terminal_snr)}
    if zero_terminal_snr:
        overrides["timestep_spacing"] = "trailing"
    return DDPMScheduler.from_config(dict(scheduler_config), **overrides)


def _alphas_cumprod_at(noise_scheduler: Any, timesteps: torch.Tensor) -> torch.Tensor:
    """alpha_bar_t for each timestep, float32, on the timesteps' device."""
    alphas_cumprod = noise_scheduler.alphas_cumprod.to(device=timesteps.device, dtype=torch.float32)
    return alphas_cumprod[timesteps.long()]


def compute_snr(noise_scheduler: Any, timesteps: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio alpha_bar_t / (1 - alpha_bar_t) per timestep, float32 (Kingma et al. 2021, VDM).

    It is 0 at the last timestep of a zero-terminal-SNR schedule.
    """
    alpha_bar = _alphas_cumprod_at(noise_scheduler, timesteps)
    return alpha_bar / (1.0 - alpha_bar)


def training_target(
    noise_scheduler: Any,
    latents: torch.Tensor,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
) -> torch.Tensor:
    """What the UNet should output for noisy latents made from `latents` and `noise` at `timesteps`.

    "epsilon": the noise itself (Ho et al. 2020). "v_prediction": v = sqrt(alpha_bar) * noise -
    sqrt(1 - alpha_bar) * latents (Salimans & Ho 2022), via the scheduler's get_velocity.
    """
    prediction_type = noise_scheduler.config.prediction_type
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return noise_scheduler.get_velocity(latents, noise, timesteps)
    raise ValueError(f"unsupported prediction_type {prediction_type!r}; expected one of {PREDICTION_TYPES}")


def min_snr_weights(snr: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
    """Per-sample loss weights of the Min-SNR-gamma strategy (Hang et al. 2023, "Efficient Diffusion Training via
    Min-SNR Weighting Strategy").

    The paper weights the x0 loss by min(SNR, gamma); expressed on the loss we actually compute this is
    epsilon: min(SNR, gamma) / SNR  (= min(1, gamma / SNR)), v_prediction: min(SNR, gamma) / (SNR + 1).
    Both are finite at SNR = 0 (zero terminal SNR): the epsilon weight tends to 1 there and is written as
    min(1, gamma / SNR) so that 0 gives 1, not 0/0; the v weight is exactly 0 there. gamma = 5 is the paper's value.
    """
    if gamma <= 0:
        raise ValueError(f"min-SNR gamma must be > 0, got {gamma}")
    snr = snr.float()
    if prediction_type == "epsilon":
        return torch.clamp(gamma / snr, max=1.0)  # gamma / 0 = inf, clamped to 1
    if prediction_type == "v_prediction":
        return torch.clamp(snr, max=gamma) / (snr + 1.0)
    raise ValueError(f"unsupported prediction_type {prediction_type!r}; expected one of {PREDICTION_TYPES}")


def diffusion_loss(
    model_pred: torch.Tensor,
    target: torch.Tensor,
    timesteps: torch.Tensor,
    noise_scheduler: Any,
    min_snr_gamma: float = 0.0,
    per_sample_weight: torch.Tensor | Sequence[float] | None = None,
) -> torch.Tensor:
    """Scalar training loss: mean squared error in float32, averaged over each sample's elements, then weighted
    per sample and averaged over the batch.

    Weights multiply: min-SNR-gamma (Hang et al. 2023) when `min_snr_gamma > 0`, and `per_sample_weight` (each
    concept's loss weight) when given. The weighted mean divides by the batch size, not by the sum of weights, so a
    concept with weight 2 really counts twice as much. With no weighting this equals F.mse_loss(pred, target).
    """
    per_sample = F.mse_loss(model_pred.float(), target.float(), reduction="none")
    per_sample = per_sample.reshape(per_sample.shape[0], -1).mean(dim=1)
    weights = torch.ones_like(per_sample)
    if min_snr_gamma > 0:
        snr = compute_snr(noise_scheduler, timesteps.to(per_sample.device))
        weights = weights * min_snr_weights(snr, min_snr_gamma, noise_scheduler.config.prediction_type)
    if per_sample_weight is not None:
        extra = torch.as_tensor(per_sample_weight, dtype=torch.float32, device=per_sample.device).reshape(-1)
        if extra.shape[0] != per_sample.shape[0]:
            raise ValueError(f"per_sample_weight has {extra.shape[0]} values for a batch of {per_sample.shape[0]}")
        weights = weights * extra
    return (per_sample * weights).mean()
