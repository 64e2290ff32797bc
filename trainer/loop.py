"""The training loop: one readable function over accelerate, a comment per step. No UI here.

It follows diffusers' train_text_to_image.py (Ho et al. 2020, "Denoising Diffusion Probabilistic Models";
Rombach et al. 2022, "High-Resolution Image Synthesis with Latent Diffusion Models"), with per-sample seeded
noise so that a batch of 2 and two accumulated batches of 1 compute the same update.
"""
from __future__ import annotations

import contextlib
import datetime
import math
import os
import queue
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from trainer import events as ev
from trainer import losses, optim
from trainer.backup import Position, check_backup, check_folders_and_disk, load_backup, set_rng_state
from trainer.config import Preset, preset_to_json, validate
from trainer.fields import atomic_write_text
from trainer.cache import frozen_dtype as cache_dtype
from trainer.data import EpochPlan, collect_items
from trainer.inputs import dataset_record, input_report, long_caption_report
from trainer.ema import EMA
from trainer.errors import InputError, RunFailure
from trainer.intervals import Interval
from trainer.models import load_model
from trainer.objective import resolve_prediction_type
from trainer.outputs import Run
from trainer.prompts import encode_prompts
from trainer.sampling import sample_prompt_warnings
from trainer.runs import claim_workspace


def check_inputs(preset: Preset, emit: Callable) -> list:
    """Everything that can be checked before a model loads; raises InputError naming the problem."""
    demo = Path(preset.general.demo_dir).expanduser() if preset.general.demo_dir else None
    if demo and not ((demo / "model" / "model_index.json").is_file() and (demo / "images").is_dir()):
        from trainer.demo import make_demo
        emit(ev.Status(f"Building the demo in {preset.general.demo_dir}"))
        make_demo(preset.general.demo_dir, seed=preset.general.seed)
    problems = validate(preset, check_paths=True)
    if problems:
        raise InputError(problems[0])
    if preset.general.device == "cuda" and not torch.cuda.is_available():
        raise InputError("general.device: 'cuda' was chosen but no CUDA GPU is visible")
    check_folders_and_disk(preset)
    on_gpu = preset.general.device != "cpu" and torch.cuda.is_available()
    if preset.training.mixed_precision == "fp16" and not on_gpu:
        raise InputError("training.mixed_precision: fp16 needs a CUDA GPU; use bf16 or no on the CPU")
    return collect_items(preset)


def check_resume(folder: Path | None, preset: Preset, num_processes: int, dataset: dict, allow_changed_data: bool,
                 emit: Callable) -> Position:
    """Where the run starts: step 0, or the position of the backup in `folder` once backup.check_backup accepts
    it (InputError otherwise, before the model loads); what changed since the backup is said in the log."""
    if folder is None:
        return Position(0, 0, 0)
    start, harmless, data_notes = check_backup(folder, preset, num_processes, dataset, allow_changed_data)
    if harmless:
        emit(ev.Log("info", f"Changed since the backup (harmless): {', '.join(harmless)}"))
    for note in data_notes:
        emit(ev.Log("warning", note))
    return start


def check_model_inputs(preset: Preset, items: list, c, emit: Callable) -> str:
    """Once the model is loaded: which weights were loaded, the objective to train (training.prediction_type resolved against the base
    model's own, with a warning when they differ) and the texts longer than its tokenizer's window (captions,
    sample prompts), said once in the log. Returns the objective; InputError if zero-terminal SNR is asked of
    an epsilon objective."""
    t = preset.training
    if c.weights_note:  # raw or EMA weights, when the file holds both
        emit(ev.Log("info", f"Loaded the {c.weights_note}"))
    prediction_type, warning = resolve_prediction_type(t.prediction_type, c)
    how = f"the base model's own ({c.prediction_source})" if t.prediction_type == "auto" else "as chosen"
    emit(ev.Log("info", f"Training objective: {prediction_type}, {how}"))
    if warning:
        emit(ev.Log("warning", warning))
    if t.zero_terminal_snr and prediction_type != "v_prediction":
        raise InputError(f"training.zero_terminal_snr: needs the v_prediction objective, and this run trains "
                         f"{prediction_type} (training.prediction_type {t.prediction_type}); set "
                         "training.prediction_type to v_prediction or turn zero terminal SNR off")
    for log in long_caption_report(preset, items, c.tokenizer):
        emit(log)
    for text in sample_prompt_warnings(c.tokenizer, preset.sampling.prompts, t.max_token_length):
        emit(ev.Log("warning", text))
    return prediction_type


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
    same process (the window runs many) with other precision settings must reset it first.

    Under `accelerate launch` the processes wait for the main one while it fills caches, samples or writes a
    backup; the process group's timeout (30 min for gloo, 10 for NCCL by default) is raised so that such a
    wait is not taken for a hang."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState, PartialState
    from accelerate.utils import InitProcessGroupKwargs
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    PartialState._reset_state()
    patience = InitProcessGroupKwargs(timeout=datetime.timedelta(hours=3))
    return Accelerator(cpu=preset.general.device == "cpu", mixed_precision=preset.training.mixed_precision,
                       kwargs_handlers=[patience])


def main_process_only(emit: Callable, accelerator) -> Callable:
    """Under `accelerate launch` only the main process reports (progress, samples, logs); the others pass on
    errors alone, so a failure on any process is still seen."""
    if accelerator.is_main_process:
        return emit
    return lambda event: emit(event) if isinstance(event, ev.Log) and event.level == "error" else None


@contextlib.contextmanager
def main_process_first(accelerator):
    """The main process runs the block first (it may write: the demo, the file index, the caches) while the
    others wait, then they run it (and find its files). Unlike accelerate's own, this one also lets the others
    go when the block fails on the main process, so they fail the same way instead of waiting for ever."""
    if not accelerator.is_main_process:
        accelerator.wait_for_everyone()
    try:
        yield
    finally:
        if accelerator.is_main_process:
            accelerator.wait_for_everyone()


DEFER_LOSS_READS: bool | None = None  # None: on a GPU only (tests force it on the CPU)
LOSS_READ_SECONDS = 0.25  # deferred losses are read at least this far apart (and at every boundary)


def mean_over_processes(accelerator, value: torch.Tensor) -> torch.Tensor:
    """The mean of a per-process 0-d tensor over all processes (the tensor itself with one process), on the
    device. A NaN on any process makes the mean NaN everywhere, so every process takes the same decision."""
    if accelerator.num_processes == 1:
        return value
    return accelerator.reduce(value.reshape(1).float(), "mean").reshape(())


def agree_on_commands(accelerator, names: set[str]) -> set[str]:
    """The commands that reached any process, on every process. They must take effect at the same step
    everywhere: a process that stopped alone would leave the others waiting in the next gradient exchange.
    (The window runs one process; a signal or Ctrl-C under `accelerate launch` may reach one process or all.)"""
    if accelerator.num_processes == 1:
        return names
    flags = torch.tensor([float(name in names) for name in ev.COMMANDS], device=accelerator.device)
    flags = accelerator.reduce(flags, "sum")
    return {name for name, flag in zip(ev.COMMANDS, flags.tolist()) if flag > 0}


def sample_generator(seed: int, epoch: int, position: int) -> torch.Generator:
    """A generator for one sample of one epoch: its noise, timestep and latent draw depend on nothing else."""
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 1_000_003 + position)


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on the training device without waiting for it. On a GPU a plain copy first waits for all
    the work queued before it, so every step's inputs would wait for the previous step to end and the GPU would
    idle while the next one is prepared. From page-locked memory the copy is queued like a kernel (the host
    allocator keeps the buffer until the copy has run)."""
    if device.type != "cuda" or x.device.type != "cpu":
        return x.to(device)
    return (x if x.is_pinned() else x.pin_memory()).to(device, non_blocking=True)


def drain_commands(commands: queue.Queue | None) -> set[str]:
    names = set()
    while commands is not None:
        try:
            names.add(commands.get_nowait().name)
        except queue.Empty:
            break
    return names


def train(preset: Preset, emit: Callable, commands: queue.Queue | None = None, resume: str | None = None,
          fresh: bool = False, allow_changed_data: bool = False) -> ev.RunFinished:
    """Train as the preset says; returns the RunFinished event (the session sends it).

    resume: 'latest' or a backup folder (else backup.resume); fresh: start over where an earlier run left its
    files (moved aside, see trainer.runs); allow_changed_data: resume although the concepts' files changed.
    Raises InputError for the user's mistakes, before anything heavy loads."""
    t = preset.training
    # 1. The accelerator (device, mixed precision, processes) first: under `accelerate launch` only the main
    #    process reports and writes. Then every input is checked before anything heavy loads (the main process
    #    first: it may build the demo, or move an earlier run aside), and the images of the concepts gathered.
    accelerator = make_accelerator(preset)
    emit = main_process_only(emit, accelerator)
    emit(ev.Status("Checking inputs"))
    quiet_libraries()
    resume = resume or preset.backup.resume or None
    with main_process_first(accelerator):
        items = check_inputs(preset, emit)
        run_id, backup_folder = claim_workspace(preset, resume, fresh, emit, accelerator.is_main_process)
    dataset = dataset_record(items)
    start = check_resume(backup_folder, preset, accelerator.num_processes, dataset, allow_changed_data, emit)
    for log in input_report(preset, items):
        emit(log)
    workspace = Path(preset.general.workspace_dir).expanduser()
    if accelerator.is_main_process:
        workspace.mkdir(parents=True, exist_ok=True)
        atomic_write_text(workspace / "preset.json", preset_to_json(preset))

    # 2. Seeds.
    device = accelerator.device
    torch.manual_seed(preset.general.seed)
    np.random.seed(preset.general.seed % 2**32)

    # 3. Load the model offline. The VAE (and the text encoder when not trained) only runs forward.
    emit(ev.Status(f"Loading {preset.model.base_model}"))
    c = load_model(preset.model.base_model, preset.model.base_config or None, load_ema=preset.model.load_ema)
    prediction_type = check_model_inputs(preset, items, c, emit)
    c.noise_scheduler = losses.configure_noise_scheduler(dict(c.noise_scheduler.config), prediction_type,
                                                         t.zero_terminal_snr)
    frozen_dtype = cache_dtype(t.mixed_precision, device)  # the same rule as `python -m trainer cache`
    c.vae.requires_grad_(False).eval().to(device, frozen_dtype)
    # Trained weights in float32, or bfloat16 (half the memory; updates rounded stochastically, see optim.py).
    weight_dtype = torch.bfloat16 if t.weight_dtype == "bfloat16" else torch.float32
    c.unet.requires_grad_(t.train_unet).train(t.train_unet).to(device, weight_dtype)
    train_te = t.train_text_encoder
    c.text_encoder.requires_grad_(train_te).train(train_te)
    c.text_encoder.to(device, weight_dtype if train_te else frozen_dtype)
    if device.type == "cuda":
        c.unet.to(memory_format=torch.channels_last)  # faster convolutions on tensor cores
        torch.backends.cudnn.benchmark = True  # few shapes (one per bucket): time cuDNN's algorithms once each
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
    master = t.weight_dtype == "bfloat16" and t.stochastic_rounding
    stepper = optim.Stepper(t.optimizer, groups, t.learning_rate, t.weight_decay, master=master)
    if t.fused_backward:
        if accelerator.num_processes > 1:
            raise InputError("training.fused_backward: works with one process only (gradients are averaged "
                             "across processes after the backward pass, too late for a step inside it)")
        stepper.attach()
    optimizer = stepper.optimizer
    plan = EpochPlan(preset, items, accelerator.process_index, accelerator.num_processes)
    with main_process_first(accelerator):  # the main process fills the caches; the others then only read them
        plan.prepare(c, device, frozen_dtype, encode_text=not train_te, emit=emit)
    total_steps = t.max_steps or plan.total_steps(t.epochs)
    total_epochs = t.epochs if not t.max_steps else math.ceil(total_steps / plan.epoch_steps(0))
    lr_scheduler = optim.make_lr_scheduler(t.lr_scheduler, optimizer, t.lr_warmup_steps, total_steps)
    # A frozen module is prepared for evaluation: no DDP wrapper (which refuses a module without trainable
    # parameters; accelerate's multi-CPU path would wrap it anyway).
    frozen = {m: not any(p.requires_grad for p in m.parameters()) for m in (c.unet, c.text_encoder)}
    c.unet = accelerator.prepare_model(c.unet, evaluation_mode=frozen[c.unet])
    c.text_encoder = accelerator.prepare_model(c.text_encoder, evaluation_mode=frozen[c.text_encoder])
    optimizer = accelerator.prepare_optimizer(optimizer)
    if device.type == "cuda":  # what only encodes leaves the GPU once its outputs are cached (back for samples);
        # after prepare, whose device placement would move them back
        if not plan.needs_vae_encoder:
            c.vae.to("cpu")
        if not train_te and not plan.needs_text_encoder:
            c.text_encoder.to("cpu")
    if t.compile:
        # Compiled kernels are cached beside the latents, so the next run of this preset compiles faster.
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path(preset.general.cache_dir).expanduser() / "compile"))
        emit(ev.Status("Compiling the UNet (torch.compile; the first steps are slow)"))
        c.unet = torch.compile(c.unet)

    run = Run(preset, emit, accelerator, c, run_id=run_id, dataset=dataset, prediction_type=prediction_type)
    if t.ema != "off" and accelerator.is_main_process:  # only rank 0 samples and saves, so only it averages
        run.ema = EMA(trainable, t.ema_decay, device if t.ema == "gpu" else "cpu")

    # 5. Resume: weights, optimizer, LR schedule, grad scaler, EMA, RNGs and the position inside the epoch.
    extra = {"smooth": None, "nan_skipped": 0}
    if backup_folder is not None:
        tensors, state = load_backup(backup_folder)
        if start.epoch_step >= plan.epoch_steps(start.epoch):  # resumed on fewer images: that epoch is over
            start = Position(start.step, start.epoch + 1, 0)
        if "unet" in tensors:
            accelerator.unwrap_model(c.unet, keep_torch_compile=False).load_state_dict(tensors["unet"])
        if "text_encoder" in tensors:
            accelerator.unwrap_model(c.text_encoder).load_state_dict(tensors["text_encoder"])
        optimizer.load_state_dict(state["optimizer"])
        lr_scheduler.load_state_dict(state["lr_scheduler"])
        if state["scaler"] is not None and accelerator.scaler is not None:
            accelerator.scaler.load_state_dict(state["scaler"])
        if run.ema and state["ema"]:
            run.ema.load_state_dict(state["ema"])
        set_rng_state(state["rng"])
        extra = {"smooth": state.get("smooth"), "nan_skipped": state.get("nan_skipped", 0)}
        emit(ev.Log("info", f"Resumed from {backup_folder} at step {start.step} (epoch {start.epoch}, "
                            f"{start.epoch_step} steps into it)"))

    b = preset.backup
    sample_every = Interval(preset.sampling.every, preset.sampling.unit)
    backup_every = Interval(b.backup_every, b.backup_unit)
    save_every = Interval(b.save_every, b.save_unit)
    periodic_saves = 0
    emit(ev.RunStarted(str(workspace), total_steps, total_epochs, str(device)))
    if preset.sampling.before_training and start.step == 0:
        run.sample(0, 0)

    step, epoch, outcome, smooth, here = start.step, start.epoch, "completed", extra["smooth"], start
    # Step losses stay on the device and are read back in batches: a read waits for the device to finish all it
    # was given, and on a GPU it would idle while the next step is prepared. That needs an optimizer that skips
    # a step on the device when the loss is not finite (torch's fused AdamW and SGD take the grad scaler's
    # found_inf flag); other optimizers, fp16 and the fused back pass read every step.
    # On a CPU a read costs nothing, and reading every step keeps commands exact to the step they follow.
    inner = stepper.optimizer
    deferred = (getattr(inner, "_step_supports_amp_scaling", False) and not master and not t.fused_backward
                and accelerator.scaler is None and (DEFER_LOSS_READS if DEFER_LOSS_READS is not None
                                                    else device.type == "cuda"))
    pending: list[tuple] = []  # (step, epoch, epoch step, epoch steps, lr, loss) of steps not reported yet
    last_read = time.monotonic()
    started, window_start, window_steps = time.monotonic(), time.monotonic(), 0
    emit(ev.Status("Training"))
    try:
        while step < total_steps:
            # 6. An epoch: a seeded order of every image use, cut into optimizer steps of micro-batches.
            if train_te and t.text_encoder_stop_epoch and epoch >= t.text_encoder_stop_epoch:
                # The text encoder stops learning after its stop epoch: no more gradients, weights stay put.
                train_te = False
                c.text_encoder.requires_grad_(False).eval()
                emit(ev.Log("info", f"Text encoder frozen from epoch {epoch}"))
            epoch_steps = plan.epoch_steps(epoch)
            first = start.epoch_step if epoch == start.epoch else 0
            for epoch_step, micro_batches in enumerate(plan.iter_epoch(epoch, first), start=first):
                # The step's samples over all processes, per process: each scales its loss by its samples over
                # this, so the mean of the processes' gradients (DDP averages them) is the mean over all samples.
                group_size = plan.step_samples(epoch, epoch_step) / accelerator.num_processes
                step_loss = torch.zeros((), device=device)
                for k, batch in enumerate(micro_batches):
                    positions = batch.positions
                    run.note_batch(epoch, batch)
                    gens = [sample_generator(preset.general.seed, epoch, p) for p in positions]
                    # 7. Images -> VAE latent distributions (cached or encoded now) -> one draw per sample, scaled.
                    mean, std = batch.latent_mean, batch.latent_std
                    if mean is None:
                        pixels = to_device(torch.from_numpy(batch.pixels).permute(0, 3, 1, 2), device)
                        pixels = pixels.to(frozen_dtype)
                        with torch.no_grad():
                            dist = c.vae.encode(pixels).latent_dist
                        mean, std = dist.mean, dist.std
                    eps = torch.cat([torch.randn(mean[:1].shape, generator=g) for g in gens])
                    latents = (to_device(mean, device).float() + to_device(std, device).float()
                               * to_device(eps, device))
                    latents = latents * c.vae.config.scaling_factor
                    # 8. Noise (with optional offset noise) and uniformly drawn timesteps, per sample.
                    noise = torch.cat([losses.make_noise(torch.empty(latents[:1].shape), generator=g,
                                                         noise_offset=t.noise_offset) for g in gens])
                    noise = to_device(noise, device)
                    timesteps = to_device(torch.cat([losses.sample_timesteps(
                        1, c.noise_scheduler.config.num_train_timesteps, "cpu", generator=g) for g in gens]), device)
                    # 9. Forward diffusion: noisy latents at those timesteps.
                    noisy = c.noise_scheduler.add_noise(latents, noise, timesteps)
                    # 10. Condition on the captions (with gradients only when the text encoder trains).
                    if batch.text_embeddings is not None and not train_te:
                        hidden = to_device(batch.text_embeddings, device)
                    else:
                        with torch.set_grad_enabled(train_te), accelerator.autocast():
                            hidden = encode_prompts(c.tokenizer, c.text_encoder, batch.captions,
                                                    t.max_token_length, device)
                    # 11. UNet prediction, target (epsilon or v), loss with optional min-SNR weights.
                    #     Only the last micro-batch of a step synchronises gradients across processes.
                    last = k == len(micro_batches) - 1
                    with contextlib.nullcontext() if last else accelerator.no_sync(c.unet):
                        with accelerator.autocast():
                            pred = c.unet(noisy.to(weight_dtype), timesteps, hidden.to(weight_dtype)).sample
                        target = losses.training_target(c.noise_scheduler, latents, noise, timesteps)
                        weights = to_device(torch.tensor(batch.loss_weights), device)
                        loss = losses.diffusion_loss(pred.float(), target.float(), timesteps, c.noise_scheduler,
                                                     t.min_snr_gamma, per_sample_weight=weights)
                        # 12. Backward, scaled so the accumulated gradient is the mean over the step's samples.
                        #     With the fused back pass the weights are stepped during it: a non-finite loss
                        #     is caught before, so that it never reaches them.
                        part = loss.detach().float() * (len(positions) / group_size)
                        if not t.fused_backward or torch.isfinite(part):
                            accelerator.backward(loss * (len(positions) / group_size))
                    step_loss = step_loss + part
                step_loss = mean_over_processes(accelerator, step_loss)  # the same loss and decision everywhere
                step += 1
                window_steps += 1
                # 13. Clip the gradient norm, step the optimizer and the LR schedule, update the EMA. A NaN/inf
                #     loss never reaches the weights. Deferred: the optimizer skips the step on the device.
                #     Otherwise the loss is read now and the step's gradients are dropped before any update.
                finite = True
                if deferred:
                    inner.grad_scale, inner.found_inf = None, (~torch.isfinite(step_loss)).float()
                else:
                    step_loss = step_loss.item()
                    finite = math.isfinite(step_loss)
                if finite:
                    if t.fused_backward:
                        stepper.finish()  # full buckets were stepped during backward; now the last one
                    else:
                        if t.max_grad_norm > 0:
                            accelerator.clip_grad_norm_(trainable, t.max_grad_norm)
                        stepper.step() if master else optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    if run.ema:
                        run.ema.step()
                else:
                    stepper.zero_grad()
                lr_scheduler.step()  # skipped steps count too: the schedule follows the step counter
                pending.append((step, epoch, epoch_step + 1, epoch_steps, optim.current_lr(optimizer), step_loss))

                # 14. Report: loss, smoothed loss, LR, speed, ETA (and VRAM on a GPU), for every step read back.
                #     Deferred losses are read at most four times a second, and before anything that records them.
                at_epoch_end = epoch_step + 1 == epoch_steps
                do_sample = sample_every.due_after_step(step)
                do_backup = backup_every.due_after_step(step) and step < total_steps
                do_save = save_every.due_after_step(step)
                now = time.monotonic()
                it_s = window_steps / max(now - window_start, 1e-9)
                if (not deferred or now - last_read > LOSS_READ_SECONDS or do_sample or do_backup or do_save
                        or at_epoch_end or step >= total_steps):
                    smooth = report_steps(pending, deferred, smooth, extra, t.skip_nan_steps, (total_steps,
                                          total_epochs), it_s, emit, run)
                    last_read = now
                    if t.compile and step == start.step + 1:
                        emit(ev.Log("info", f"First step, torch.compile included: {now - started:.1f} s"))
                if now - window_start > 10:
                    window_start, window_steps = now, 0
                wanted = agree_on_commands(accelerator, drain_commands(commands))
                if wanted and pending:  # a command acts on the step the window last showed: report it first
                    smooth = report_steps(pending, deferred, smooth, extra, t.skip_nan_steps, (total_steps,
                                          total_epochs), it_s, emit, run)
                do_sample = do_sample or ev.SAMPLE_NOW in wanted
                do_backup = do_backup or (ev.BACKUP_NOW in wanted and step < total_steps)

                # 15. Step boundary: commands from the window or CLI, periodic samples, backups and saves.
                here = Position(step, epoch + 1, 0) if at_epoch_end else Position(step, epoch, epoch_step + 1)
                if do_sample:
                    run.sample(step, epoch)
                if do_backup:
                    run.backup(here, optimizer, lr_scheduler, {**extra, "smooth": smooth})
                if do_save:
                    periodic_saves += 1
                    if periodic_saves > b.save_skip_first:
                        run.save(run.save_now_path(step, epoch), "save", step)
                elif ev.SAVE_NOW in wanted:
                    run.save(run.save_now_path(step, epoch), "save", step)
                if ev.STOP in wanted:
                    outcome = "stopped"
                    break
                if step >= total_steps:
                    break
            if outcome == "stopped" or step >= total_steps:
                break
            epoch += 1
            if step < total_steps:
                if sample_every.due_after_epoch(epoch):
                    run.sample(step, epoch)
                if backup_every.due_after_epoch(epoch):
                    run.backup(here, optimizer, lr_scheduler, {**extra, "smooth": smooth})
                if save_every.due_after_epoch(epoch):
                    periodic_saves += 1
                    if periodic_saves > b.save_skip_first:
                        run.save(run.save_now_path(step, epoch), "save", step)

        # 16. The end (completed or stopped): last samples, a backup to continue from, the final model.
        sampled_now = preset.sampling.unit == "steps" and step % preset.sampling.every == 0
        if outcome == "completed" and preset.sampling.unit != "never" and not sampled_now:
            run.sample(step, epoch)
        if b.backup_before_save:
            run.backup(here, optimizer, lr_scheduler, {**extra, "smooth": smooth})
        output = run.save_final(here, optimizer, lr_scheduler, {**extra, "smooth": smooth})
        accelerator.wait_for_everyone()  # several processes end together, once the main one has saved
        elapsed = time.monotonic() - started
        message = (f"{outcome} after {step} steps in {elapsed:.0f} s; model written to {output}"
                   + sampling_hint(prediction_type, t.zero_terminal_snr))
        emit(ev.Log("info", message))
        return ev.RunFinished(outcome, message, str(output), step)
    finally:
        run.close()
        accelerator.free_memory()


def sampling_hint(prediction_type: str, zero_terminal_snr: bool) -> str:
    """What the final message adds for a v-prediction model: ComfyUI reads no objective from an SD 1.5 file."""
    if prediction_type != "v_prediction":
        return ""
    return (". It predicts v: in ComfyUI load it through a ModelSamplingDiscrete node set to v_prediction"
            f"{' with zsnr on' if zero_terminal_snr else ''} (A1111 reads the .yaml beside a single file, diffusers "
            "the scheduler config)")


def report_steps(pending: list, deferred: bool, smooth, extra: dict, skip_nan_steps: int, totals: tuple,
                 it_s: float, emit: Callable, run) -> float | None:
    """Read back the pending step losses (one wait for the device when deferred), emit a Progress and the
    TensorBoard scalars for each, count non-finite ones (their steps were skipped) and fail past the allowance.
    Empties `pending`; returns the new smoothed loss."""
    values = [p[-1] for p in pending]
    if deferred and values:
        values = torch.stack(values).tolist()
    total_steps, total_epochs = totals
    vram = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    for (step, epoch, epoch_step, epoch_steps, lr, _), value in zip(pending, values):
        if not math.isfinite(value):
            extra["nan_skipped"] += 1
            if extra["nan_skipped"] > skip_nan_steps:
                raise NonFiniteLoss(
                    f"The loss became {value} at step {step}; the weights were not updated and the last backup is "
                    "intact. Likely causes: a learning rate too high, or fp16 overflow (try bf16 or no mixed "
                    "precision). training.skip_nan_steps lets a run skip a few bad batches.")
            emit(ev.Log("warning", f"Skipped step {step}: the loss was {value} "
                                   f"({extra['nan_skipped']} of {skip_nan_steps} allowed)"))
            value = smooth if smooth is not None else 0.0
        smooth = value if smooth is None else 0.9 * smooth + 0.1 * value
        emit(ev.Progress(step, total_steps, epoch, total_epochs, epoch_step, epoch_steps, value, smooth, lr, it_s,
                         (total_steps - step) / max(it_s, 1e-9), vram))
        run.log_scalars(step, value, smooth, lr)
    pending.clear()
    return smooth


class NonFiniteLoss(RunFailure, FloatingPointError):
    """The loss became NaN or infinite more often than training.skip_nan_steps allows."""
