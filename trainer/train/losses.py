"""Noise, timesteps (uniform or logit-normal, in a min/max range), training targets (epsilon / v), the loss (MSE,
L1, Huber or smooth L1 with a scheduled delta) and its per-timestep weights (min-SNR, debiased estimation): pure
torch functions. No UI here."""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from trainer.config import HUBER_SCHEDULES, LOSS_TYPES, PREDICTION_TYPES, TIMESTEP_DISTRIBUTIONS

# kohya's cap on the SNR in debiased estimation: at timestep 0 SD 1.5's SNR is about 1175, larger on other schedules
# (sd-scripts library/custom_train_functions.py, apply_debiased_estimation).
DEBIASED_SNR_CAP = 1000.0


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
    *,
    distribution: str = "uniform",
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    min_timestep: int = 0,
    max_timestep: int | None = None,
) -> torch.Tensor:
    """One timestep per sample, (batch_size,) int64, in [min_timestep, max_timestep): the minimum inclusive, the
    maximum exclusive, as kohya's --min_timestep / --max_timestep (sd-scripts library/train_util.py,
    get_timesteps); max_timestep None means num_train_timesteps.

    distribution "uniform": every timestep of the range equally often (Ho et al. 2020, DDPM, Alg. 1); with the whole
    range this is the draw SeaChange always made, value for value. "logit_normal": t = min + sigmoid(n) * (max - min)
    rounded down, with n ~ Normal(logit_mean, logit_std) (Esser et al. 2024, "Scaling Rectified Flow Transformers",
    section 3.1; mapped onto discrete timesteps as OneTrainer's ModelSetupNoiseMixin._get_timestep_discrete does,
    whose noising_bias is our mean and noising_weight + 1 our std). Mean 0 puts the most draws in the middle of the
    range; a positive mean favours noisier timesteps. One draw from `generator` per sample, so a sample's timestep
    depends on its generator alone. app/timestep_plot.timestep_probabilities is the same distribution, exactly,
    without torch. Raises ValueError for an unknown distribution, a range outside [0, num_train_timesteps) or
    logit_std <= 0.
    """
    high = num_train_timesteps if max_timestep is None else max_timestep
    if not 0 <= min_timestep < high <= num_train_timesteps:
        raise ValueError(f"the timestep range [{min_timestep}, {high}) must lie in [0, {num_train_timesteps}) and "
                         "hold at least one timestep (training.min_timestep < training.max_timestep <= the model's "
                         f"{num_train_timesteps} training timesteps)")
    if distribution == "uniform":
        return torch.randint(min_timestep, high, (batch_size,), device=device, generator=generator, dtype=torch.long)
    if distribution == "logit_normal":
        if not logit_std > 0:
            raise ValueError(f"logit_std must be above 0, got {logit_std}")
        n = torch.randn((batch_size,), device=device, generator=generator, dtype=torch.float64)
        u = torch.sigmoid(n * logit_std + logit_mean)
        t = torch.floor(min_timestep + u * (high - min_timestep))
        return t.clamp_(min_timestep, high - 1).long()  # sigmoid may round to exactly 1.0: the last timestep
    raise ValueError(f"timestep distribution must be one of {TIMESTEP_DISTRIBUTIONS}, got {distribution!r}")


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


def debiased_weights(snr: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """Per-sample loss weights of debiased estimation (Yu et al. 2024, "Debias the Training of Diffusion Models"),
    as kohya has it (sd-scripts library/custom_train_functions.py, apply_debiased_estimation): the SNR is capped at
    DEBIASED_SNR_CAP (1000), then epsilon: 1 / sqrt(SNR); v_prediction: 1 / (SNR + 1).

    Low-noise timesteps (high SNR) count less, noisy ones more: v up to 1, epsilon above 1 below SNR 1 (about 15 at
    SD 1.5's last timestep, SNR 0.0047; 1/sqrt(1000) = 0.03 at its first). OneTrainer
    agrees for epsilon; for v it uses 1 / sqrt(SNR + 1) (ModelSetupDiffusionLossMixin.__debiased_estimation_weight).
    At SNR 0 (zero terminal SNR, which needs v_prediction) the v weight is 1; the epsilon weight there would be
    infinite, a pair configure_noise_scheduler refuses.
    """
    snr = torch.clamp(snr.float(), max=DEBIASED_SNR_CAP)
    if prediction_type == "epsilon":
        return torch.rsqrt(snr)
    if prediction_type == "v_prediction":
        return 1.0 / (snr + 1.0)
    raise ValueError(f"unsupported prediction_type {prediction_type!r}; expected one of {PREDICTION_TYPES}")


def huber_c_per_timestep(noise_scheduler: Any, timesteps: torch.Tensor, huber_c: float,
                         schedule: str) -> torch.Tensor:
    """The Huber delta c of each sample, (B,) float32, for the scheduled pseudo-Huber loss of Khrulkov et al. 2024
    ("Improving Diffusion Models's Data-Corruption Resistance using Scheduled Pseudo-Huber Loss"), as kohya
    computes it (sd-scripts library/train_util.py, get_huber_threshold_if_needed, with huber_scale 1):

    - "constant": c at every timestep.
    - "exponential": exp(-a t) with a = -ln(c) / T (T = the scheduler's num_train_timesteps): 1 at t = 0,
      falling to c at t = T.
    - "snr": (1 - c) / (1 + sigma_t)^2 + c with sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t): about 1 at low
      noise (a loss close to MSE), falling to c as the noise grows (more robust to outliers where the target is
      mostly noise); c exactly where alpha_bar_t = 0.

    Raises ValueError for c <= 0 or an unknown schedule.
    """
    if not huber_c > 0:
        raise ValueError(f"huber_c must be above 0, got {huber_c}")
    t = timesteps.to(torch.float32)
    if schedule == "constant":
        return torch.full_like(t, huber_c)
    if schedule == "exponential":
        rate = -math.log(huber_c) / noise_scheduler.config.num_train_timesteps
        return torch.exp(-rate * t)
    if schedule == "snr":
        alpha_bar = _alphas_cumprod_at(noise_scheduler, timesteps)
        sigma = torch.sqrt((1.0 - alpha_bar) / alpha_bar)  # inf where alpha_bar = 0: c itself below
        return (1.0 - huber_c) / (1.0 + sigma) ** 2 + huber_c
    raise ValueError(f"huber_schedule must be one of {HUBER_SCHEDULES}, got {schedule!r}")


def elementwise_loss(model_pred: torch.Tensor, target: torch.Tensor, loss_type: str,
                     huber_c: torch.Tensor | None = None) -> torch.Tensor:
    """The loss of every element (same shape as the inputs), as kohya's conditional_loss (sd-scripts
    library/train_util.py) computes it with reduction "none"; d = model_pred - target:

    - "mse": d^2 (kohya's "l2").
    - "l1": |d|.
    - "huber": the pseudo-Huber loss 2c (sqrt(d^2 + c^2) - c): d^2 for |d| << c, 2c|d| for |d| >> c.
    - "smooth_l1": 2 (sqrt(d^2 + c^2) - c): d^2 / c for |d| << c, 2|d| for |d| >> c.

    huber_c: (B,) per sample (huber_c_per_timestep), needed by huber and smooth_l1. Raises ValueError otherwise.
    sqrt(d^2 + c^2) - c is computed as d^2 / (sqrt(d^2 + c^2) + c), the same value, which keeps its precision in
    float32 where |d| << c (kohya's direct form loses it there).
    """
    if loss_type == "mse":
        return F.mse_loss(model_pred, target, reduction="none")
    if loss_type == "l1":
        return F.l1_loss(model_pred, target, reduction="none")
    if loss_type in ("huber", "smooth_l1"):
        if huber_c is None:
            raise ValueError(f"loss_type {loss_type!r} needs huber_c per sample")
        c = huber_c.to(device=model_pred.device, dtype=model_pred.dtype).reshape(-1, *[1] * (model_pred.ndim - 1))
        squared = (model_pred - target) ** 2
        soft = squared / (torch.sqrt(squared + c ** 2) + c)  # = sqrt(d^2 + c^2) - c without float32 cancellation
        return 2.0 * c * soft if loss_type == "huber" else 2.0 * soft
    raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")


def diffusion_loss(
    model_pred: torch.Tensor,
    target: torch.Tensor,
    timesteps: torch.Tensor,
    noise_scheduler: Any,
    min_snr_gamma: float = 0.0,
    per_sample_weight: torch.Tensor | Sequence[float] | None = None,
    *,
    loss_type: str = "mse",
    huber_c: float = 0.1,
    huber_schedule: str = "snr",
    debiased_estimation: bool = False,
    element_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Scalar training loss in float32: the element loss of `loss_type` (elementwise_loss; for huber and
    smooth_l1 with a delta per timestep from huber_c and huber_schedule, huber_c_per_timestep), averaged over
    each sample's elements, then weighted per sample and averaged over the batch.

    Weights multiply, in kohya's order (sd-scripts train_network.py): min-SNR-gamma (Hang et al. 2023) when
    `min_snr_gamma > 0`, debiased estimation (Yu et al. 2024, debiased_weights) when `debiased_estimation`, and
    `per_sample_weight` (each concept's loss weight) when given. The weighted mean divides by the batch size, not
    by the sum of weights, so a concept with weight 2 really counts twice as much. With the defaults (mse, no
    weighting) this equals F.mse_loss(pred, target).

    element_weight: (B, 1, h, w) loss weights of each latent cell (masked training: trainer.data.masks.batch_weights,
    its area normalisation included), broadcast over the channels and applied before each sample's mean, as
    OneTrainer's masked_losses. Raises ValueError when its shape does not fit the prediction's.
    """
    model_pred, target = model_pred.float(), target.float()
    c = None
    if loss_type in ("huber", "smooth_l1"):
        c = huber_c_per_timestep(noise_scheduler, timesteps, huber_c, huber_schedule).to(model_pred.device)
    per_sample = elementwise_loss(model_pred, target, loss_type, c)
    if element_weight is not None:
        b, _, h, w = per_sample.shape
        if tuple(element_weight.shape) != (b, 1, h, w):
            raise ValueError(f"element_weight is {tuple(element_weight.shape)}, the loss needs {(b, 1, h, w)}")
        per_sample = per_sample * element_weight.to(per_sample.device, torch.float32)
    per_sample = per_sample.reshape(per_sample.shape[0], -1).mean(dim=1)
    weights = torch.ones_like(per_sample)
    prediction_type = noise_scheduler.config.prediction_type
    if min_snr_gamma > 0 or debiased_estimation:
        snr = compute_snr(noise_scheduler, timesteps.to(per_sample.device))
        if min_snr_gamma > 0:
            weights = weights * min_snr_weights(snr, min_snr_gamma, prediction_type)
        if debiased_estimation:
            weights = weights * debiased_weights(snr, prediction_type)
    if per_sample_weight is not None:
        extra = torch.as_tensor(per_sample_weight, dtype=torch.float32, device=per_sample.device).reshape(-1)
        if extra.shape[0] != per_sample.shape[0]:
            raise ValueError(f"per_sample_weight has {extra.shape[0]} values for a batch of {per_sample.shape[0]}")
        weights = weights * extra
    return (per_sample * weights).mean()
