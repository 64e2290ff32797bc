"""The training loop: a spine that reads top to bottom as the phases it runs, one numbered comment per phase, over
accelerate (mixed precision, gradient accumulation, several processes). No UI here.

The pieces live beside it: checks.py (inputs), training_model.py (the model as it trains), data.py (the epoch
plan), step.py (a step's loss), optim.py (the Stepper), progress.py (losses), intervals.py (what is due when),
outputs.py (samples, saves, backups), backup.py (the state a backup keeps).
"""
from __future__ import annotations

import queue
import time
from typing import Callable

import numpy as np
import torch

from trainer import events as ev
from trainer.config import Preset
from trainer.data.data import EpochPlan
from trainer.model.training_model import TrainingModel
from trainer.train import optim
from trainer.train.backup import Position, TrainingState, load_backup
from trainer.train.checks import check_run
from trainer.train.ema import training_ema
from trainer.train.intervals import Boundaries
from trainer.train.outputs import RunOutputs, TensorBoard, sampling_hint
from trainer.train.processes import (commands_now, fill_once_per_folder, main_process_only, make_accelerator,
                                     use_cpu_threads)
from trainer.train.progress import LossTracker, StepLoss
from trainer.train.step import step_loss
from trainer.train.validation import Validation


def train(preset: Preset, emit: Callable, commands: queue.Queue | None = None, resume: str | None = None,
          fresh: bool = False, allow_changed_data: bool = False,
          defer_loss_reads: bool | None = None) -> ev.RunFinished:
    """Train as the preset says; returns the RunFinished event (the session sends it).

    resume: 'latest' or a backup folder (else backup.resume); fresh: start over where an earlier run left its
    files (moved aside, see trainer.train.runs); allow_changed_data: resume although the concepts' files changed;
    defer_loss_reads: read step losses back in batches (optim.Stepper; None: on a GPU only). Raises InputError for
    the user's mistakes, before anything heavy loads; NonFiniteLoss, FinalSaveFailed when the run fails."""
    training = preset.training
    # 1. Processes, then inputs: under `accelerate launch` only the main process reports and writes. Every input
    #    is checked before anything heavy loads, and the concepts' images are gathered.
    accelerator = make_accelerator(preset)
    device, emit = accelerator.device, main_process_only(emit, accelerator)
    inputs = check_run(preset, accelerator, resume, fresh, allow_changed_data, emit)
    # 2. Seeds, and the CPU's threads when it trains (given back at the end).
    threads = use_cpu_threads(preset.general.cpu_threads, device)
    torch.manual_seed(preset.general.seed)
    np.random.seed(preset.general.seed % 2**32)
    # 3. The model, loaded offline: each part on its device and dtype, the objective resolved.
    model = TrainingModel.load(preset, inputs.items, device, emit)
    # 4. The optimizer, stepped as the preset asks (optim.Stepper).
    stepper = optim.make_stepper(training, model.parameter_groups(training), accelerator, defer_loss_reads)
    # 5. The epoch plan; each machine's cache folder is filled once (once in all if shared), the others then read it.
    plan = EpochPlan(preset, inputs.items, accelerator.process_index, accelerator.num_processes)
    with fill_once_per_folder(accelerator, preset.general.cache_dir):
        plan.prepare(model.components, device, model.frozen_dtype, encode_text=not model.text_learns,
                     emit=emit)
    total_steps, total_epochs = plan.run_length(training.epochs, training.max_steps)
    # 6. LR schedule, EMA, loss bookkeeping, the validation images (never in the plan), outputs; the models handed
    #    to accelerate.
    lr_scheduler = optim.make_lr_scheduler(training.lr_scheduler, stepper.optimizer, training.lr_warmup_steps,
                                           total_steps)
    model.prepare(accelerator, preset, plan.needs_vae_encoder, plan.needs_text_encoder, emit)
    ema = training_ema(training, stepper.params, accelerator)
    tensorboard = TensorBoard(preset, accelerator, emit)
    validation = Validation(preset, inputs.items, model, accelerator, tensorboard, emit, stepper.evaluation_weights)
    losses = LossTracker(total_steps, total_epochs, training.skip_nan_steps, stepper.deferred, emit,
                         tensorboard.log_scalars, time_first_step=training.compile)
    state = TrainingState(stepper.prepared_optimizer, lr_scheduler, accelerator.scaler, ema, losses, validation)
    outputs = RunOutputs(preset, emit, accelerator, model, state, tensorboard, inputs.run_id, inputs.dataset,
                         evaluation_weights=stepper.evaluation_weights)
    # 7. Resume: weights, optimizer, LR schedule, grad scaler, EMA, RNGs, losses, the position inside the epoch.
    start = resume_from(inputs.backup_folder, inputs.start, model, state, plan, accelerator, emit)
    boundaries = Boundaries(preset, total_steps)
    emit(ev.RunStarted(str(outputs.workspace), total_steps, total_epochs, str(device)))
    validation.start(start)  # the validation loss before the first step, or a resumed run's points so far
    if preset.sampling.before_training and start.step == 0:
        outputs.sample(0, 0)
    position, epoch, outcome = start, start.epoch, "completed"
    emit(ev.Status("Training"))
    started = losses.start()  # the clock of the speed, the time left and the run's duration
    try:
        while position.step < total_steps and outcome == "completed":
            # 8. An epoch: a seeded order of every image use, cut into optimizer steps of micro-batches.
            model.freeze_text_encoder_at(training.text_encoder_stop_epoch, epoch, emit)
            epoch_steps, first_step = plan.epoch_steps(epoch), start.epoch_step if epoch == start.epoch else 0
            for epoch_step, micro_batches in enumerate(plan.iter_epoch(epoch, first_step), start=first_step):
                # 9. The step's loss over its micro-batches, each backpropagated (step.py).
                loss = step_loss(micro_batches, model, stepper, accelerator, training, seed=preset.general.seed,
                                 epoch=epoch, samples_per_process=plan.step_samples(epoch, epoch_step)
                                 / accelerator.num_processes)
                # 10. The optimizer step (a non-finite loss never reaches the weights), LR schedule, EMA.
                loss, stepped = stepper.step(loss)
                lr_scheduler.step()  # skipped steps count too: the schedule follows the step counter
                if stepped and ema:
                    ema.step()
                step, epoch_done = position.step + 1, epoch_step + 1 == epoch_steps
                position = Position(step, epoch + 1, 0) if epoch_done else Position(step, epoch, epoch_step + 1)
                # 11. Report (deferred losses are read before anything records them), and agree on the commands.
                lr = optim.current_lr(stepper.optimizer)
                losses.add(StepLoss(step, epoch, epoch_step + 1, epoch_steps, lr, loss))
                due = boundaries.after_step(step)
                losses.report(force=due.any() or epoch_done or step >= total_steps)
                asked = commands_now(accelerator, commands)
                if asked:
                    losses.report(force=True)  # a command acts on the step the window last showed
                # 12. Step boundary: the validation loss, samples, backups and saves due or asked for; a stop.
                due = boundaries.with_commands(due, asked, step)
                validation.at_boundary(due, position)  # first: a backup at this boundary keeps its point
                outputs.at_boundary(due, position)
                outcome = "stopped" if ev.STOP in asked else outcome
                if outcome == "stopped" or step >= total_steps:
                    break
            if outcome == "completed":
                # 13. Epoch boundary: what is due after whole epochs (nothing after the last step).
                epoch += 1
                due = boundaries.after_epoch(epoch, position.step)
                validation.at_boundary(due, position)
                outputs.at_boundary(due, position)
        # 14. The end, completed or stopped: the last validation loss and samples, a backup to continue from, the
        #     final model.
        validation.finish(outcome == "completed", position)
        output = outputs.finish(outcome == "completed", position)
        accelerator.wait_for_everyone()  # several processes end together, once the main one has saved
        what = {"full": "model", "lora": "LoRA", "embedding": "embedding"}[training.method]
        message = (f"{outcome} after {position.step} steps in {time.monotonic() - started:.0f} s; {what} written to "
                   f"{output}" + (sampling_hint(model.prediction_type, training.zero_terminal_snr)
                                  if training.method == "full" else ""))
        emit(ev.Log("info", message))
        return ev.RunFinished(outcome, message, str(output), position.step)
    finally:
        tensorboard.close()
        accelerator.free_memory()
        torch.set_num_threads(threads)


def resume_from(folder, start: Position, model: TrainingModel, state: TrainingState, plan: EpochPlan, accelerator,
                emit: Callable) -> Position:
    """Load the backup in `folder` (checks.check_run accepted it) into the model and the training state; returns
    where training goes on: `start`, or the next epoch's beginning when the backup's epoch is already over
    on fewer images. With no folder, `start` (step 0)."""
    if folder is None:
        return start
    tensors, saved = load_backup(folder)
    if start.epoch_step >= plan.epoch_steps(start.epoch):  # resumed on fewer images: that epoch is over
        start = Position(start.step, start.epoch + 1, 0)
    model.load_weights(accelerator, tensors, str(folder))
    state.load_state_dict(saved)
    steps = f"{start.epoch_step} step{'s' if start.epoch_step != 1 else ''}"
    emit(ev.Log("info", f"Resumed from {folder} at step {start.step} (epoch {start.epoch + 1}, {steps} into it)"))
    return start
