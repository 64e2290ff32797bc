"""One training step's loss, micro-batch by micro-batch: images to latents, noise, timesteps, the captions'
conditioning, the UNet's prediction and the diffusion loss, each micro-batch backpropagated. No UI here.

It follows diffusers' train_text_to_image.py (Ho et al. 2020, "Denoising Diffusion Probabilistic Models";
Rombach et al. 2022, "High-Resolution Image Synthesis with Latent Diffusion Models"), with per-sample seeded
noise so that a batch of 2 and two accumulated batches of 1 compute the same update.
"""
from __future__ import annotations

import contextlib

import torch

from trainer.config import TrainingConfig
from trainer.data.data import Batch
from trainer.data.prompts import encode_prompts
from trainer.model.training_model import TrainingModel
from trainer.train import losses
from trainer.train.optim import Stepper
from trainer.train.processes import mean_over_processes


def sample_generator(seed: int, epoch: int, position: int) -> torch.Generator:
    """A CPU generator for one sample of one epoch: its latent draw, noise and timestep depend on nothing else
    (not the batch size, the accumulation or the process count)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 1_000_003 + position)


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on the training device without waiting for it. On a GPU a plain copy first waits for all
    the work queued before it, so every step's inputs would wait for the previous step to end and the GPU would
    idle while the next one is prepared. From page-locked memory the copy is queued like a kernel (the host
    allocator keeps the buffer until the copy has run)."""
    if device.type != "cuda" or x.device.type != "cpu":
        return x.to(device)
    return (x if x.is_pinned() else x.pin_memory()).to(device, non_blocking=True)


def step_loss(micro_batches: list[Batch], model: TrainingModel, stepper: Stepper, accelerator,
              training: TrainingConfig, *, seed: int, epoch: int, samples_per_process: float) -> torch.Tensor:
    """Compute and backpropagate the loss of each micro-batch of one optimizer step; returns the step's loss (0-d,
    float32, on the device): the mean over every sample of the step on every process, the same on each.

    samples_per_process: the step's samples over all processes, per process. Each micro-batch's loss is scaled
    by its samples over this, so the mean of the processes' gradients (DDP averages them) is the mean over all
    samples. Only the last micro-batch synchronises gradients across processes."""
    total = torch.zeros((), device=accelerator.device)
    for k, batch in enumerate(micro_batches):
        last = k == len(micro_batches) - 1
        with contextlib.nullcontext() if last else accelerator.no_sync(model.components.unet):
            loss = micro_batch_loss(batch, model, accelerator, training, seed=seed, epoch=epoch)
            total = total + stepper.backward(loss, len(batch.positions) / samples_per_process)
    return mean_over_processes(accelerator, total)  # the same loss, and the same decision, everywhere


def micro_batch_loss(batch: Batch, model: TrainingModel, accelerator, training: TrainingConfig, *, seed: int,
                     epoch: int) -> torch.Tensor:
    """The diffusion loss of one micro-batch of B samples (0-d, float32, with gradients): the mean over the
    samples of each one's mean loss (training.loss_type), weighted by its concept's loss weight (and min-SNR and
    debiased estimation when on); with masked training each latent cell by its mask's weight (batch.mask_weights,
    trainer.data.masks) before the mean."""
    components, device = model.components, accelerator.device
    generators = [sample_generator(seed, epoch, p) for p in batch.positions]
    # 1. Images -> VAE latent distributions (cached, or encoded now) -> one draw per sample, scaled:
    #    (B, 4, H/8, W/8).
    mean, std = batch.latent_mean, batch.latent_std
    if mean is None:
        pixels = to_device(torch.from_numpy(batch.pixels).permute(0, 3, 1, 2), device).to(model.frozen_dtype)
        with torch.no_grad():
            dist = components.vae.encode(pixels).latent_dist
        mean, std = dist.mean, dist.std
    eps = torch.cat([torch.randn(mean[:1].shape, generator=g) for g in generators])
    latents = to_device(mean, device).float() + to_device(std, device).float() * to_device(eps, device)
    latents = latents * components.vae.config.scaling_factor
    # 2. Noise (with optional offset noise) and timesteps from the chosen distribution and range, per sample.
    noise = to_device(torch.cat([losses.make_noise(torch.empty(latents[:1].shape), generator=g,
                                                   noise_offset=training.noise_offset) for g in generators]), device)
    scheduler = components.noise_scheduler
    draw = {"distribution": training.timestep_distribution, "logit_mean": training.timestep_logit_mean,
            "logit_std": training.timestep_logit_std, "min_timestep": training.min_timestep,
            "max_timestep": training.max_timestep}
    timesteps = to_device(torch.cat([losses.sample_timesteps(1, scheduler.config.num_train_timesteps, "cpu",
                                                             generator=g, **draw) for g in generators]), device)
    # 3. Forward diffusion: the noisy latents at those timesteps.
    noisy = scheduler.add_noise(latents, noise, timesteps)
    # 4. Condition on the captions, (B, 77 * chunks, 768); with gradients only while the text encoder learns.
    if batch.text_embeddings is not None and not model.text_learns:
        hidden = to_device(batch.text_embeddings, device)
    else:
        with torch.set_grad_enabled(model.text_learns), accelerator.autocast():
            hidden = encode_prompts(components.tokenizer, components.text_encoder, batch.captions,
                                    training.max_token_length, device)
    # 5. The UNet's prediction, its target (epsilon or v) and the loss (mse, l1, huber or smooth_l1), with optional
    #    min-SNR and debiased-estimation weights.
    with accelerator.autocast():
        pred = components.unet(noisy.to(model.weight_dtype), timesteps, hidden.to(model.weight_dtype)).sample
    target = losses.training_target(scheduler, latents, noise, timesteps)
    weights = to_device(torch.tensor(batch.loss_weights), device)
    return losses.diffusion_loss(pred.float(), target.float(), timesteps, scheduler, training.min_snr_gamma,
                                 per_sample_weight=weights, loss_type=training.loss_type, huber_c=training.huber_c,
                                 huber_schedule=training.huber_schedule,
                                 debiased_estimation=training.debiased_estimation,
                                 element_weight=None if batch.mask_weights is None  # masked training
                                 else to_device(batch.mask_weights, device))
