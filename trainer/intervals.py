"""When something periodic is due (samples, backups, saves): by steps, epochs or minutes. No UI here."""
from __future__ import annotations

import time


class Interval:
    """`due_after_step` / `due_after_epoch` say whether the event is due; units: steps, epochs, minutes, never."""

    def __init__(self, every: int, unit: str, clock=time.monotonic):
        self.every, self.unit, self.clock = every, unit, clock
        self.last_time = clock()

    def due_after_step(self, step: int) -> bool:
        if self.unit == "steps":
            return step % self.every == 0
        if self.unit == "minutes" and self.clock() - self.last_time >= self.every * 60:
            self.last_time = self.clock()
            return True
        return False

    def due_after_epoch(self, epochs_done: int) -> bool:
        return self.unit == "epochs" and epochs_done % self.every == 0

    def reset(self) -> None:
        self.last_time = self.clock()
