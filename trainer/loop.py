"""The training loop: one readable function over accelerate, a comment per step. No UI here.

It follows diffusers' train_text_to_image.py (Ho et al. 2020, "Denoising Diffusion Probabilistic Models";
Rombach et al. 2022, "High-Resolution Image Synthesis with Latent Diffusion Models"), with per-sample seeded
noise so that a batch of 2 and two accumulated batches of 1 compute the same update.
"""
from __future__ import annotations

import contextlib
import math
import queue
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from trainer import events as ev
from trainer import losses, optim
from trainer.config import Preset, preset_to_json, atomic_write_text, validate
from trainer.data import EpochPlan, collect_items
from trainer.ema import EMA
from trainer.errors import InputError
from trainer.intervals import Interval
from trainer.models import SDComponents, load_model, save_model
from trainer.sampling import generate, make_pipeline, sample_path


def check_inputs(preset: Preset, emit: Callable) -> list:
    """Everything that can be checked before a model loads; raises InputError naming the problem."""
    if preset.general.demo_dir and not (Path(preset.general.demo_dir).expanduser() / "model").exists():
        from trainer.demo import make_demo
        emit(ev.Status(f"Building the demo in {preset.general.demo_dir}"))
        make_demo(preset.general.demo_dir, seed=preset.general.seed)
    problems = validate(preset, check_paths=True)
    if problems:
        raise InputError(problems[0])
    if preset.general.device == "cuda" and not torch.cuda.is_available():
        raise InputError("general.device: 'cuda' was chosen but no CUDA GPU is visible")
    on_gpu = preset.general.device != "cpu" and torch.cuda.is_available()
    if preset.training.mixed_precision == "fp16" and not on_gpu:
        raise InputError("training.mixed_precision: fp16 needs a CUDA GPU; use bf16 or no on the CPU")
    return collect_items(preset)


def quiet_libraries() -> None:
    """diffusers and transformers print loading bars and casting notes; the run reports its own progress."""
    import diffusers
    import transformers
    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def make_accelerator(preset: Preset):
    """The one place that builds an Accelerator. accelerate keeps process-wide state, so a second run in the
    same process (the window runs many) with other precision settings must reset it first."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState, PartialState
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    PartialState._reset_state()
    return Accelerator(cpu=preset.general.device == "cpu", mixed_precision=preset.training.mixed_precision)


def sample_generator(seed: int, epoch: int, position: int) -> torch.Generator:
    """A generator for one sample of one epoch: its noise, timestep and latent draw depend on nothing else."""
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 1_000_003 + position)


def encode_text(tokenizer, text_encoder, captions: list[str], device) -> torch.Tensor:
    ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids.to(device)
    return text_encoder(ids)[0]


class Run:
    """Per-run helpers around the loop: events, samples, saves, TensorBoard. The loop itself is `train`."""

    def __init__(self, preset: Preset, emit: Callable, accelerator, components: SDComponents):
        self.preset, self.emit, self.acc, self.c = preset, emit, accelerator, components
        self.workspace = Path(preset.general.workspace_dir).expanduser()
        self.samples_dir = self.workspace / "samples"
        self.writer = None
        self.ema: EMA | None = None
        if preset.general.tensorboard and accelerator.is_main_process:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(str(self.workspace / "tensorboard"))

    def unwrapped(self) -> SDComponents:
        c = self.c
        return SDComponents(self.acc.unwrap_model(c.unet), c.vae, self.acc.unwrap_model(c.text_encoder),
                            c.tokenizer, c.noise_scheduler)

    def sample(self, step: int, epoch: int) -> None:
        """Render every sample prompt from the modules in memory (EMA weights swapped in when EMA is on)."""
        if not self.preset.sampling.prompts or not self.acc.is_main_process:
            return
        self.emit(ev.Status(f"Sampling at step {step}"))
        m = self.unwrapped()
        training = m.unet.training, m.text_encoder.training
        m.unet.eval(); m.text_encoder.eval()
        if self.ema:
            self.ema.swap_in()
        try:
            self.samples_dir.mkdir(parents=True, exist_ok=True)
            for index, prompt in enumerate(self.preset.sampling.prompts):
                pipe = make_pipeline(m.unet, m.vae, m.text_encoder, m.tokenizer, m.noise_scheduler.config,
                                     prompt.sampler)
                with self.acc.autocast():
                    image = generate(pipe, prompt, self.acc.device)
                path = sample_path(self.samples_dir, step, epoch, index, prompt.seed)
                image.save(path)
                if self.writer:
                    self.writer.add_image(f"samples/{index}", np.asarray(image), step, dataformats="HWC")
                self.emit(ev.SampleReady(str(path), index, prompt.prompt, step, epoch))
        finally:
            if self.ema:
                self.ema.swap_out()
            m.unet.train(training[0]); m.text_encoder.train(training[1])
        self.emit(ev.Status("Training"))

    def save(self, path: Path, kind: str, step: int) -> Path:
        """Write the model (EMA weights when on) in the preset's output format and dtype."""
        if not self.acc.is_main_process:
            return path
        self.emit(ev.Status(f"Saving {path}"))
        metadata = {
            "seachange.preset": preset_to_json(self.preset), "seachange.step": str(step),
            "modelspec.sai_model_spec": "1.0.0", "modelspec.architecture": "stable-diffusion-v1",
            "modelspec.implementation": "https://github.com/CompVis/stable-diffusion",
            "modelspec.title": path.stem, "modelspec.date": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "modelspec.resolution": self.preset.training.resolution.split(",")[0].strip(),
            "modelspec.prediction_type": self.preset.training.prediction_type,
        }
        if self.ema:
            self.ema.swap_in()
        try:
            written = save_model(self.unwrapped(), path, self.preset.model.output_format,
                                 self.preset.model.output_dtype, metadata)
        finally:
            if self.ema:
                self.ema.swap_out()
        self.emit(ev.CheckpointWritten(kind, str(written), step))
        return written

    def save_now_path(self, step: int, epoch: int) -> Path:
        suffix = ".safetensors" if self.preset.model.output_format == "single_file" else ""
        return self.workspace / "save" / f"step{step:07d}-epoch{epoch:04d}{suffix}"

    def log_scalars(self, step: int, loss: float, smooth: float, lr: float) -> None:
        if self.writer:
            self.writer.add_scalar("loss/raw", loss, step)
            self.writer.add_scalar("loss/smoothed", smooth, step)
            self.writer.add_scalar("lr", lr, step)

    def close(self) -> None:
        if self.writer:
            self.writer.close()


def drain_commands(commands: queue.Queue | None) -> set[str]:
    names = set()
    while commands is not None:
        try:
            names.add(commands.get_nowait().name)
        except queue.Empty:
            break
    return names


def train(preset: Preset, emit: Callable, commands: queue.Queue | None = None,
          resume: str | None = None) -> ev.RunFinished:
    """Train as the preset says; returns the RunFinished event (the session sends it)."""
    t = preset.training
    # 1. Check every input before loading anything heavy; gather the images of the enabled concepts.
    emit(ev.Status("Checking inputs"))
    quiet_libraries()
    items = check_inputs(preset, emit)
    workspace = Path(preset.general.workspace_dir).expanduser()
    workspace.mkdir(parents=True, exist_ok=True)
    atomic_write_text(workspace / "preset.json", preset_to_json(preset))

    # 2. Accelerator (device, mixed precision) and seeds.
    accelerator = make_accelerator(preset)
    device = accelerator.device
    torch.manual_seed(preset.general.seed)
    np.random.seed(preset.general.seed % 2**32)

    # 3. Load the model offline. The VAE (and the text encoder when not trained) only runs forward.
    emit(ev.Status(f"Loading {preset.model.base_model}"))
    c = load_model(preset.model.base_model, preset.model.base_config or None)
    c.noise_scheduler = losses.configure_noise_scheduler(dict(c.noise_scheduler.config), t.prediction_type,
                                                         t.zero_terminal_snr)
    frozen_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(t.mixed_precision, torch.float32)
    if device.type == "cpu":
        frozen_dtype = torch.float32 if frozen_dtype == torch.float16 else frozen_dtype
    c.vae.requires_grad_(False).eval().to(device, frozen_dtype)
    c.unet.requires_grad_(t.train_unet).train(t.train_unet).to(device)
    train_te = t.train_text_encoder
    c.text_encoder.requires_grad_(train_te).train(train_te)
    c.text_encoder.to(device, torch.float32 if train_te else frozen_dtype)
    if t.gradient_checkpointing:
        c.unet.enable_gradient_checkpointing()
        if train_te:
            c.text_encoder.gradient_checkpointing_enable()

    # 4. Optimizer over the trainable parameters (the text encoder in its own group with its own LR), LR schedule.
    groups = []
    if t.train_unet:
        groups.append({"params": [p for p in c.unet.parameters() if p.requires_grad], "lr": t.learning_rate})
    if train_te:
        groups.append({"params": list(c.text_encoder.parameters()),
                       "lr": t.text_encoder_learning_rate or t.learning_rate})
    trainable = [p for g in groups for p in g["params"]]
    optimizer = optim.make_optimizer(t.optimizer, groups, t.learning_rate, weight_decay=t.weight_decay)
    plan = EpochPlan(preset, items)
    total_steps = t.max_steps or plan.total_steps(t.epochs)
    total_epochs = t.epochs if not t.max_steps else math.ceil(total_steps / plan.epoch_steps(0))
    lr_scheduler = optim.make_lr_scheduler(t.lr_scheduler, optimizer, t.lr_warmup_steps, total_steps)
    c.unet, c.text_encoder, optimizer = accelerator.prepare(c.unet, c.text_encoder, optimizer)

    run = Run(preset, emit, accelerator, c)
    if t.ema != "off":
        run.ema = EMA(trainable, t.ema_decay, device if t.ema == "gpu" else "cpu")
    sample_every = Interval(preset.sampling.every, preset.sampling.unit)
    emit(ev.RunStarted(str(workspace), total_steps, total_epochs, str(device)))
    if preset.sampling.before_training:
        run.sample(0, 0)

    step, epoch, outcome, smooth = 0, 0, "completed", None
    started, window_start, window_steps = time.monotonic(), time.monotonic(), 0
    emit(ev.Status("Training"))
    try:
        while step < total_steps:
            # 5. An epoch: a seeded order of every image use, cut into optimizer steps of micro-batches.
            if train_te and t.text_encoder_stop_epoch and epoch >= t.text_encoder_stop_epoch:
                # The text encoder stops learning after its stop epoch: no more gradients, weights stay put.
                train_te = False
                c.text_encoder.requires_grad_(False).eval()
                emit(ev.Log("info", f"Text encoder frozen from epoch {epoch}"))
            epoch_steps = plan.epoch_steps(epoch)
            for epoch_step, micro_batches in enumerate(plan.iter_epoch(epoch)):
                group_size = sum(len(mb.positions) for mb in micro_batches)
                step_loss = 0.0
                for k, batch in enumerate(micro_batches):
                    positions = batch.positions
                    gens = [sample_generator(preset.general.seed, epoch, p) for p in positions]
                    # 6. Images -> VAE latent distributions (cached or encoded now) -> one draw per sample, scaled.
                    mean, std = batch.latent_mean, batch.latent_std
                    if mean is None:
                        pixels = torch.from_numpy(batch.pixels).permute(0, 3, 1, 2).to(device, frozen_dtype)
                        with torch.no_grad():
                            dist = c.vae.encode(pixels).latent_dist
                        mean, std = dist.mean, dist.std
                    eps = torch.cat([torch.randn(mean[:1].shape, generator=g) for g in gens])
                    latents = (mean.to(device).float() + std.to(device).float() * eps.to(device))
                    latents = latents * c.vae.config.scaling_factor
                    # 7. Noise (with optional offset noise) and uniformly drawn timesteps, per sample.
                    noise = torch.cat([losses.make_noise(torch.empty(latents[:1].shape), generator=g,
                                                         noise_offset=t.noise_offset) for g in gens]).to(device)
                    timesteps = torch.cat([losses.sample_timesteps(1, c.noise_scheduler.config.num_train_timesteps,
                                                                   "cpu", generator=g) for g in gens]).to(device)
                    # 8. Forward diffusion: noisy latents at those timesteps.
                    noisy = c.noise_scheduler.add_noise(latents, noise, timesteps)
                    # 9. Condition on the captions (with gradients only when the text encoder trains).
                    if batch.text_embeddings is not None and not train_te:
                        hidden = batch.text_embeddings.to(device)
                    else:
                        with torch.set_grad_enabled(train_te), accelerator.autocast():
                            hidden = encode_text(c.tokenizer, c.text_encoder, batch.captions, device)
                    # 10. UNet prediction, target (epsilon or v), loss with optional min-SNR weights.
                    #     Only the last micro-batch of a step synchronises gradients across processes.
                    last = k == len(micro_batches) - 1
                    with contextlib.nullcontext() if last else accelerator.no_sync(c.unet):
                        with accelerator.autocast():
                            pred = c.unet(noisy, timesteps, hidden if train_te else hidden.float()).sample
                        target = losses.training_target(c.noise_scheduler, latents, noise, timesteps)
                        weights = torch.tensor(batch.loss_weights, device=device)
                        loss = losses.diffusion_loss(pred.float(), target.float(), timesteps, c.noise_scheduler,
                                                     t.min_snr_gamma, per_sample_weight=weights)
                        # 11. Backward, scaled so the accumulated gradient is the mean over the step's samples.
                        accelerator.backward(loss * (len(positions) / group_size))
                    step_loss += loss.detach().float().item() * len(positions) / group_size
                if not math.isfinite(step_loss):
                    raise FloatingPointError(
                        f"loss became {step_loss} at step {step + 1}; the weights were not updated. Likely causes: "
                        "a learning rate too high, or fp16 overflow (try bf16)")
                # 12. Clip the gradient norm, step the optimizer and the LR schedule, update the EMA.
                if t.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(trainable, t.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                if run.ema:
                    run.ema.step()
                step += 1
                window_steps += 1

                # 13. Report: loss, smoothed loss, LR, speed, ETA (and VRAM on a GPU).
                smooth = step_loss if smooth is None else 0.9 * smooth + 0.1 * step_loss
                now = time.monotonic()
                it_s = window_steps / max(now - window_start, 1e-9)
                if now - window_start > 10:
                    window_start, window_steps = now, 0
                lr = optim.current_lr(optimizer)
                vram = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
                emit(ev.Progress(step, total_steps, epoch, total_epochs, epoch_step + 1, epoch_steps,
                                 step_loss, smooth, lr, it_s, (total_steps - step) / max(it_s, 1e-9), vram))
                run.log_scalars(step, step_loss, smooth, lr)

                # 14. Step boundary: commands from the window, periodic samples.
                wanted = drain_commands(commands)
                if sample_every.due_after_step(step) or ev.SAMPLE_NOW in wanted:
                    run.sample(step, epoch)
                if ev.SAVE_NOW in wanted:
                    run.save(run.save_now_path(step, epoch), "save", step)
                if ev.BACKUP_NOW in wanted:
                    emit(ev.Log("warning", "Backups are not available in this version; use Save now."))
                if ev.STOP in wanted:
                    outcome = "stopped"
                    break
                if step >= total_steps:
                    break
            if outcome == "stopped":
                break
            epoch += 1
            if sample_every.due_after_epoch(epoch) and step < total_steps:
                run.sample(step, epoch)

        # 15. The final model: samples at the end, then the save to model.output_path.
        sampled_now = preset.sampling.unit == "steps" and step % preset.sampling.every == 0
        if outcome == "completed" and preset.sampling.unit != "never" and not sampled_now:
            run.sample(step, epoch)
        output = run.save(Path(preset.model.output_path).expanduser(), "final", step)
        elapsed = time.monotonic() - started
        message = f"{outcome} after {step} steps in {elapsed:.0f} s; model written to {output}"
        emit(ev.Log("info", message))
        return ev.RunFinished(outcome, message, str(output), step)
    finally:
        run.close()
        accelerator.free_memory()
