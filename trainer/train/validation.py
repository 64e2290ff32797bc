"""The validation loss: the diffusion loss on images that are never trained on (concepts of role validation),
measured with fixed noise and fixed timesteps, so that every point of a run compares with the others: a curve
that turns up while the training loss still falls shows the model learning its training images by heart. No UI
here.

It follows kohya's validation (sd-scripts train_network.py, the "VALIDATION PER STEP" part): the live weights, not
the EMA's (for a schedule-free optimizer its evaluation weights, as kohya's optimizer_eval_fn), in eval mode and
without gradients; every image at TIMESTEPS_PER_IMAGE timesteps spread evenly over the
training's timestep range (kohya's np.linspace(min, max, 4 + 2)[1:-1]: 200, 400, 600, 800 of 1000); the training's
own loss (loss type, min-SNR and debiased-estimation weights, offset noise), so the two curves share an axis. It
differs in one point: the latent draw and the noise of each image and timestep come from a generator of their own
(validation_generator) where kohya reseeds the global RNGs and restores them afterwards, so the training's random
state is never touched and a run with validation trains exactly as one without.

The images are loaded by an EpochPlan of the validation images alone (data.EpochPlan(validation=True)): the same
latent and text caches, captions and buckets as training, epoch 0's fixed choices every time. Under `accelerate
launch` the main process alone measures, on the unwrapped modules (no collective operation), as it alone samples;
the others go on and wait for it at the next gradient exchange.
"""
from __future__ import annotations

import contextlib
import hashlib
from typing import Callable

import torch

from trainer import events as ev
from trainer.config import Preset
from trainer.data.data import EpochPlan
from trainer.data.prompts import encode_prompts
from trainer.model.training_model import TrainingModel
from trainer.train import losses
from trainer.train.backup import Position
from trainer.train.intervals import Actions
from trainer.train.step import to_device

TIMESTEPS_PER_IMAGE = 4  # kohya's NUM_VALIDATION_TIMESTEPS


def validation_timesteps(low: int, high: int, count: int = TIMESTEPS_PER_IMAGE) -> list[int]:
    """`count` timesteps spread evenly inside [low, high) with the ends left out, as kohya's
    np.linspace(low, high, count + 2, dtype=int)[1:-1]: [200, 400, 600, 800] for [0, 1000) and 4. Each is at least
    `low` and below `high` (the training's training.min_timestep and max_timestep)."""
    return [low + (high - low) * (k + 1) // (count + 1) for k in range(count)]


def validation_generator(seed: int, position: int, k: int) -> torch.Generator:
    """A CPU generator for the latent draw and noise of the validation image at `position` (its place in the
    validation plan) at its k-th timestep: the same numbers at every measurement, and none taken from the global
    RNGs that training uses."""
    digest = hashlib.blake2b(f"{seed}-validation-{position}-{k}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") & (2**63 - 1))


@contextlib.contextmanager
def on_device(modules: list[torch.nn.Module], device: torch.device):
    """The modules on `device` for the block, and back where they were afterwards: on a GPU the VAE and a frozen
    text encoder wait in CPU memory once their outputs are cached (training_model.TrainingModel.prepare)."""
    moved = [(m, next(m.parameters()).device) for m in modules
             if next(m.parameters()).device != device]
    for module, _ in moved:
        module.to(device)
    try:
        yield
    finally:
        for module, where in moved:
            module.to(where)


class Validation:
    """The run's validation loss: measured when it is due (`at_boundary`, with intervals.Actions.validate, from
    sampling.validate_every/unit), before the first step (`start`) and at the end of a completed run (`finish`),
    and reported as an events.ValidationLoss, a log line and TensorBoard's loss/validation. Its history
    ([step, epoch, loss] per point) is kept in backups (backup.TrainingState) and sent again when a run resumes,
    so its chart goes on where it was.

    Nothing happens without an enabled concept of role validation, with validate_unit never, or on a process
    other than the main one (`active` is False)."""

    def __init__(self, preset: Preset, items: list, model: TrainingModel, accelerator, tensorboard,
                 emit: Callable, evaluation_weights: Callable = contextlib.nullcontext):
        """items: collect_items' images (the validation ones are picked out here); tensorboard: outputs.TensorBoard;
        evaluation_weights: a context manager that puts the weights to evaluate in the model
        (optim.Stepper.evaluation_weights). On the main process the validation images' latents (and, when the
        text encoder is frozen, captions) are cached as training's are."""
        self.preset, self.model, self.accelerator, self.tensorboard, self.emit = (preset, model, accelerator,
                                                                                  tensorboard, emit)
        self.evaluation_weights = evaluation_weights
        self.history: list[list] = []  # [step, epoch (Position.epoch_number), loss]
        self.last_step: int | None = None  # the step of the last measurement
        self.plan: EpochPlan | None = None
        plan = EpochPlan(preset, items, validation=True)
        if not plan.items or not accelerator.is_main_process:
            return
        sampling = preset.sampling
        if sampling.validate_unit == "never":
            emit(ev.Log("warning", f"{len(plan.items)} validation image(s) are never trained on, and no validation "
                                   "loss is measured (sampling.validate_unit is never)"))
            return
        parts = model.unwrapped(accelerator)
        with on_device([parts.vae, parts.text_encoder], accelerator.device):
            plan.prepare(parts, accelerator.device, model.frozen_dtype, encode_text=not model.text_learns, emit=emit)
        self.plan = plan
        names = sorted({preset.concepts[i.concept_index].name for i in plan.items})
        emit(ev.Log("info", f"Validation: {len(plan.items)} image(s) of {', '.join(map(repr, names))}, never trained "
                            f"on; the loss at {TIMESTEPS_PER_IMAGE} fixed timesteps each, every "
                            f"{sampling.validate_every} {sampling.validate_unit}, before the first step and at the "
                            "end"))

    @property
    def active(self) -> bool:
        """Whether this process measures a validation loss."""
        return self.plan is not None

    def start(self, position: Position) -> None:
        """As training starts at `position`: a resumed run sends its history again (ValidationLoss events, not
        written to TensorBoard again), a fresh one measures the loss before its first step."""
        if not self.active:
            return
        if self.history:
            for step, epoch, loss in self.history:
                self.emit(ev.ValidationLoss(step, epoch, loss, len(self.plan.items)))
        elif position.step == 0:
            self.run(position)

    def at_boundary(self, due: Actions, position: Position) -> None:
        """Measure when a step or epoch boundary makes it due (intervals.Boundaries); before the outputs, so a
        backup written at the same boundary keeps this point."""
        if due.validate:
            self.run(position)

    def finish(self, completed: bool, position: Position) -> None:
        """The end of a completed run: the last point (unless it was just measured). A stopped run measures
        nothing more: its resume goes on from its backup."""
        if completed:
            self.run(position)

    def run(self, position: Position) -> float | None:
        """Measure and report the loss at `position` (once per step); returns it, or None when nothing was
        measured."""
        if not self.active or self.last_step == position.step:
            return None
        self.emit(ev.Status(f"Validating at step {position.step}"))
        loss = self.measure()
        self.last_step = position.step
        self.history.append([position.step, position.epoch_number, loss])
        self.emit(ev.ValidationLoss(position.step, position.epoch_number, loss, len(self.plan.items)))
        self.emit(ev.Log("info", f"Validation loss at step {position.step}: {loss:.6g}"))
        self.tensorboard.write(lambda w: w.add_scalar("loss/validation", loss, position.step))
        self.emit(ev.Status("Training"))
        return loss

    def measure(self) -> float:
        """The validation loss of the weights as they are: the mean over every validation image and each of its
        validation_timesteps of the training's per-sample loss (losses.diffusion_loss, no concept loss weight).
        Each image's latent draw and noise come from validation_generator, so unchanged weights give the same
        number. The UNet and text encoder are in eval mode (no dropout) for it and go back to their mode after; the
        weights are evaluation_weights' (a schedule-free optimizer's average, the trained ones otherwise)."""
        model, accelerator, training = self.model, self.accelerator, self.preset.training
        parts, device = model.unwrapped(accelerator), accelerator.device
        timesteps = validation_timesteps(training.min_timestep, training.max_timestep)
        modes = parts.unet.training, parts.text_encoder.training
        parts.unet.eval(), parts.text_encoder.eval()
        total, count = 0.0, 0
        try:
            with torch.no_grad(), self.evaluation_weights():
                for planned in (p for step in self.plan.layout(0) for p in step):
                    batch = self.plan.load(planned)
                    # 1. Latent distributions: cached, or encoded now; (B, 4, H/8, W/8), and the captions'
                    #    conditioning (cached while nothing in the text learns).
                    mean, std = batch.latent_mean, batch.latent_std
                    if mean is None:
                        pixels = torch.from_numpy(batch.pixels).permute(0, 3, 1, 2)
                        with on_device([parts.vae], device):
                            dist = parts.vae.encode(to_device(pixels, device).to(model.frozen_dtype)).latent_dist
                        mean, std = dist.mean, dist.std
                    mean, std = to_device(mean, device).float(), to_device(std, device).float()
                    if batch.text_embeddings is not None and not model.text_learns:
                        hidden = to_device(batch.text_embeddings, device)
                    else:
                        with on_device([parts.text_encoder], device), accelerator.autocast():
                            hidden = encode_prompts(parts.tokenizer, parts.text_encoder, batch.captions,
                                                    training.max_token_length, device)
                    # 2. Each fixed timestep with each image's fixed latent draw and noise: the training's loss.
                    for k, t in enumerate(timesteps):
                        total += float(self._loss_at(batch, mean, std, hidden, k, t)) * len(batch.positions)
                        count += len(batch.positions)
        finally:
            parts.unet.train(modes[0]), parts.text_encoder.train(modes[1])
        return total / count

    def _loss_at(self, batch, mean: torch.Tensor, std: torch.Tensor, hidden: torch.Tensor, k: int,
                 t: int) -> torch.Tensor:
        """The mean loss of one micro-batch at timestep `t` (its k-th), as step.micro_batch_loss computes it but
        with the timestep fixed, the generators validation_generator's and no concept loss weight."""
        model, accelerator, training = self.model, self.accelerator, self.preset.training
        parts, device = model.unwrapped(accelerator), accelerator.device
        scheduler = parts.noise_scheduler
        generators = [validation_generator(self.preset.general.seed, p, k) for p in batch.positions]
        eps = torch.cat([torch.randn(mean[:1].shape, generator=g) for g in generators])
        latents = (mean + std * to_device(eps, device)) * parts.vae.config.scaling_factor
        noise = to_device(torch.cat([losses.make_noise(torch.empty(latents[:1].shape), generator=g,
                                                       noise_offset=training.noise_offset) for g in generators]),
                          device)
        timesteps = torch.full((len(generators),), t, dtype=torch.long, device=device)
        noisy = scheduler.add_noise(latents, noise, timesteps)
        with accelerator.autocast():
            pred = parts.unet(noisy.to(model.weight_dtype), timesteps, hidden.to(model.weight_dtype)).sample
        target = losses.training_target(scheduler, latents, noise, timesteps)
        return losses.diffusion_loss(pred.float(), target.float(), timesteps, scheduler, training.min_snr_gamma,
                                     loss_type=training.loss_type, huber_c=training.huber_c,
                                     huber_schedule=training.huber_schedule,
                                     debiased_estimation=training.debiased_estimation,
                                     element_weight=None if batch.mask_weights is None
                                     else to_device(batch.mask_weights, device))  # masked as in training

    def state_dict(self) -> dict:
        """{"history": [[step, epoch, loss], ...]}: what a backup keeps (plain numbers, for torch.load's
        weights_only)."""
        return {"history": [list(point) for point in self.history]}

    def load_state_dict(self, state: dict) -> None:
        """Restore what state_dict() gave; the last point's step counts as measured."""
        self.history = [[int(step), int(epoch), float(loss)] for step, epoch, loss in state.get("history", [])]
        self.last_step = self.history[-1][0] if self.history else None
