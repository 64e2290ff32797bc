"""Exponential moving average of trainable weights, kept on the training device or in CPU memory. No UI here."""
from __future__ import annotations

import torch

from trainer.config import TrainingConfig


class EMA:
    """Shadow copies in float32. Decay warms up as (1 + n) / (10 + n), capped at `decay`, like diffusers' EMAModel."""

    def __init__(self, params, decay: float, device: str | torch.device):
        self.params = [p for p in params]
        self.decay = decay
        self.updates = 0
        self.shadow = [p.detach().to(device=device, dtype=torch.float32, copy=True) for p in self.params]
        self.same_place = all(p.dtype == s.dtype and p.device == s.device for p, s in zip(self.params, self.shadow))
        self._backup: list[torch.Tensor] | None = None

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def step(self) -> None:
        weight = 1.0 - self.current_decay()
        if self.same_place:  # one multi-tensor kernel on a GPU instead of one per weight
            torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], weight)
        else:
            for shadow, param in zip(self.shadow, self.params):
                shadow.lerp_(param.detach().to(shadow.device, torch.float32), weight)
        self.updates += 1

    @torch.no_grad()
    def swap_in(self) -> None:
        """Put the averaged weights into the model (keeping the raw ones) until swap_out()."""
        self._backup = [p.detach().clone() for p in self.params]
        for shadow, param in zip(self.shadow, self.params):
            param.copy_(shadow.to(param.device, param.dtype))

    @torch.no_grad()
    def swap_out(self) -> None:
        for saved, param in zip(self._backup, self.params):
            param.copy_(saved)
        self._backup = None

    def state_dict(self) -> dict:
        return {"updates": self.updates, "decay": self.decay, "shadow": [s.cpu() for s in self.shadow]}

    def load_state_dict(self, state: dict) -> None:
        """Restore the shadows and the update count of state_dict(); the decay stays this EMA's (the preset's
        training.ema_decay, which may change on resume)."""
        self.updates = state["updates"]
        for shadow, saved in zip(self.shadow, state["shadow"]):
            shadow.copy_(saved)


def training_ema(training: TrainingConfig, params: list, accelerator) -> EMA | None:
    """The EMA the preset's training section (config.TrainingConfig `training`) asks for (training.ema: off, gpu, cpu;
    training.ema_decay), on the main process only: only it samples and saves. None when off or elsewhere."""
    if training.ema == "off" or not accelerator.is_main_process:
        return None
    return EMA(params, training.ema_decay, accelerator.device if training.ema == "gpu" else "cpu")
