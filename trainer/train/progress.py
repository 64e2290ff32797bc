"""Loss bookkeeping: each step's loss read back (in batches when reads are deferred), the smoothed loss, non-finite
steps counted against the allowance, speed and time left, reported as Progress events. No UI here."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import torch

from trainer import events as ev
from trainer.errors import NonFiniteLoss

LOSS_READ_SECONDS = 0.25  # deferred losses are read at least this far apart (and whenever a report is forced)
SPEED_WINDOW_SECONDS = 10.0  # it/s is counted over the steps of the last window of about this length
SMOOTHING = 0.9  # the smoothed loss: an exponential moving average, this much of the old value per step


@dataclass
class StepLoss:
    """One optimizer step's loss, waiting to be reported. epoch_step counts the steps done in the epoch
    (1-based); loss is a float, or a 0-d tensor on the device not read back yet (deferred reads)."""
    step: int
    epoch: int
    epoch_step: int
    epoch_steps: int
    lr: float
    loss: float | torch.Tensor


class LossTracker:
    """The run's losses: `add()` each step's loss, `report()` to read back what waits and emit one Progress per
    step (and its TensorBoard scalars through `log_scalars(step, loss, smoothed, lr)`).

    With deferred reads the losses stay on the device and are read at most every LOSS_READ_SECONDS, in one
    wait for the device, unless the report is forced (before anything that records them: a sample, backup or
    save, the end of an epoch or run, a command). A non-finite loss (its step was skipped, see optim.Stepper)
    is reported with a warning and counted; past `skip_nan_steps` of them the run fails with NonFiniteLoss.
    `state_dict()` is what backups keep: the smoothed loss and the count of skipped steps.

    Speed (it/s) is counted over about the last SPEED_WINDOW_SECONDS; the time left over the whole run, from the
    mean step time since training (or its resume) started, leaving out the first step (warm-up, compilation):
    samples and backups along the way count in that mean, and one slow stretch moves it little."""

    def __init__(self, total_steps: int, total_epochs: int, skip_nan_steps: int, deferred: bool, emit: Callable,
                 log_scalars: Callable, time_first_step: bool = False, clock: Callable = time.monotonic):
        """time_first_step: say in the log how long the first step took (torch.compile compiles during it)."""
        self.total_steps, self.total_epochs, self.skip_nan_steps = total_steps, total_epochs, skip_nan_steps
        self.deferred, self.emit, self.log_scalars, self.clock = deferred, emit, log_scalars, clock
        self.smooth: float | None = None
        self.nan_skipped = 0
        self.pending: list[StepLoss] = []
        self.time_first_step = time_first_step
        self.started = self.last_read = self.window_start = clock()
        self.window_steps = 0
        self.steps_timed = 0  # steps added since start()
        self.first_step_at = self.last_step_at = self.started  # when the first and the newest of them were added

    def start(self) -> float:
        """Start the clocks (speed, time left, the first step's time) as training starts; returns the time (clock's
        units)."""
        self.started = self.last_read = self.window_start = self.clock()
        self.steps_timed, self.first_step_at = 0, self.started
        return self.started

    def eta(self, step: int) -> float:
        """Seconds left after `step`: the steps to go times the mean step time since start(), counted from the
        first step's end (warm-up and compilation make the first step no measure); inf before the second step."""
        if self.steps_timed < 2:
            return math.inf
        per_step = (self.last_step_at - self.first_step_at) / (self.steps_timed - 1)
        return (self.total_steps - step) * per_step

    def add(self, step_loss: StepLoss) -> None:
        """Queue one step's loss for the next report."""
        if self.time_first_step:
            self.time_first_step = False
            self.emit(ev.Log("info", f"First step, torch.compile included: {self.clock() - self.started:.1f} s"))
        self.pending.append(step_loss)
        self.window_steps += 1
        self.steps_timed += 1
        self.last_step_at = self.clock()
        if self.steps_timed == 1:
            self.first_step_at = self.last_step_at

    def report(self, force: bool = False) -> None:
        """Emit a Progress for every queued step: at once unless reads are deferred, else when forced or due.
        Raises NonFiniteLoss when more steps were skipped than training.skip_nan_steps allows."""
        now = self.clock()
        it_s = self.window_steps / max(now - self.window_start, 1e-9)
        if self.pending and (force or not self.deferred or now - self.last_read > LOSS_READ_SECONDS):
            self._read_and_emit(it_s)
            self.last_read = now
        if now - self.window_start > SPEED_WINDOW_SECONDS:
            self.window_start, self.window_steps = now, 0

    def _read_and_emit(self, it_s: float) -> None:
        values = [p.loss for p in self.pending]
        if self.deferred:
            values = torch.stack([torch.as_tensor(v) for v in values]).tolist()  # one wait for the device
        vram = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
        pending, self.pending = self.pending, []
        for p, value in zip(pending, values):
            if not math.isfinite(value):
                value = self._skipped(p.step, value)
            self.smooth = value if self.smooth is None else SMOOTHING * self.smooth + (1 - SMOOTHING) * value
            self.emit(ev.Progress(p.step, self.total_steps, p.epoch, self.total_epochs, p.epoch_step, p.epoch_steps,
                                  value, self.smooth, p.lr, it_s, self.eta(p.step), vram))
            self.log_scalars(p.step, value, self.smooth, p.lr)

    def _skipped(self, step: int, value: float) -> float:
        """Count a skipped step; returns the value shown for it (the smoothed loss, so the curve stays readable)."""
        self.nan_skipped += 1
        if self.nan_skipped > self.skip_nan_steps:
            raise NonFiniteLoss(
                f"The loss became {value} at step {step}; the weights were not updated and the last backup is "
                "intact. Likely causes: a learning rate too high, or fp16 overflow (try bf16 or no mixed "
                "precision). training.skip_nan_steps lets a run skip a few bad batches.")
        self.emit(ev.Log("warning", f"Skipped step {step}: the loss was {value} "
                                    f"({self.nan_skipped} of {self.skip_nan_steps} allowed)"))
        return self.smooth if self.smooth is not None else 0.0

    def state_dict(self) -> dict:
        """{"smooth": float or None, "nan_skipped": int}: what a backup keeps (read losses only: report first)."""
        return {"smooth": self.smooth, "nan_skipped": self.nan_skipped}

    def load_state_dict(self, state: dict) -> None:
        """Restore what state_dict() gave."""
        self.smooth, self.nan_skipped = state.get("smooth"), state.get("nan_skipped", 0)
