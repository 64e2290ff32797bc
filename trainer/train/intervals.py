"""When something periodic is due (samples, backups, saves, the validation loss: by steps, epochs or minutes), and
what the window's commands add at a step boundary. No UI here."""
from __future__ import annotations

import time
from dataclasses import dataclass

from trainer import events as ev
from trainer.config import Preset


class Interval:
    """`due_after_step` / `due_after_epoch` say whether the event is due; units: steps, epochs, minutes, never."""

    def __init__(self, every: int, unit: str, clock=time.monotonic):
        self.every, self.unit, self.clock = every, unit, clock
        self.last_time = clock()

    def due_after_step(self, step: int) -> bool:
        """Due after optimizer step `step` (1-based): every `every` steps, or `every` minutes since it was last
        due (the clock restarts then)."""
        if self.unit == "steps":
            return step % self.every == 0
        if self.unit == "minutes" and self.clock() - self.last_time >= self.every * 60:
            self.last_time = self.clock()
            return True
        return False

    def due_after_epoch(self, epochs_done: int) -> bool:
        """Due once `epochs_done` whole epochs are done: every `every` epochs."""
        return self.unit == "epochs" and epochs_done % self.every == 0


@dataclass
class Actions:
    """What is due at a boundary: samples, a backup, a save, the validation loss (trainer.train.validation)."""
    sample: bool = False
    backup: bool = False
    save: bool = False
    validate: bool = False

    def any(self) -> bool:
        """Anything due at all."""
        return self.sample or self.backup or self.save or self.validate


class Boundaries:
    """The run's periodic samples, backups and saves (sampling.every/unit, backup.backup_every/unit,
    backup.save_every/unit, the first backup.save_skip_first periodic saves skipped), the validation loss
    (sampling.validate_every/unit, when an enabled concept has role validation), and the commands that ask for
    them now. No backup is due after the last step: the end of the run writes its own."""

    def __init__(self, preset: Preset, total_steps: int, clock=time.monotonic):
        backup = preset.backup
        self.sample_every = Interval(preset.sampling.every, preset.sampling.unit, clock)
        self.backup_every = Interval(backup.backup_every, backup.backup_unit, clock)
        self.save_every = Interval(backup.save_every, backup.save_unit, clock)
        held_out = any(c.enabled and c.role == "validation" for c in preset.concepts)
        self.validate_every = Interval(preset.sampling.validate_every,
                                       preset.sampling.validate_unit if held_out else "never", clock)
        self.save_skip_first, self.total_steps = backup.save_skip_first, total_steps
        self.periodic_saves = 0

    def after_step(self, step: int) -> Actions:
        """What the intervals make due after optimizer step `step` (1-based)."""
        return Actions(self.sample_every.due_after_step(step),
                       self.backup_every.due_after_step(step) and step < self.total_steps,
                       self._periodic_save(self.save_every.due_after_step(step)),
                       self.validate_every.due_after_step(step))

    def after_epoch(self, epochs_done: int, step: int) -> Actions:
        """What the intervals make due once `epochs_done` epochs are done, after step `step`."""
        if step >= self.total_steps:
            return Actions()
        return Actions(self.sample_every.due_after_epoch(epochs_done),
                       self.backup_every.due_after_epoch(epochs_done),
                       self._periodic_save(self.save_every.due_after_epoch(epochs_done)),
                       self.validate_every.due_after_epoch(epochs_done))

    def with_commands(self, due: Actions, commands: set[str], step: int) -> Actions:
        """`due` plus what the commands (events.SAMPLE_NOW, BACKUP_NOW, SAVE_NOW) ask for."""
        return Actions(due.sample or ev.SAMPLE_NOW in commands,
                       due.backup or (ev.BACKUP_NOW in commands and step < self.total_steps),
                       due.save or ev.SAVE_NOW in commands, due.validate)

    def _periodic_save(self, due: bool) -> bool:
        if due:
            self.periodic_saves += 1
        return due and self.periodic_saves > self.save_skip_first

