"""SD 1.5 as the loop trains it: which parts learn, on which device and in which dtype, wrapped for several
processes and torch.compile, and read back unwrapped for samples, saves and backups. No UI here."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from trainer import events as ev
from trainer import losses
from trainer.cache import frozen_dtype
from trainer.checks import check_model_inputs
from trainer.config import Preset, TrainingConfig
from trainer.models import SDComponents, load_model


@dataclass
class TrainingModel:
    """The components (models.SDComponents; the UNet and text encoder become accelerate's wrappers once
    prepared), the objective trained ("epsilon" | "v_prediction"), the dtype of the frozen VAE (and frozen text
    encoder), the dtype the trained weights are kept in (float32, or bfloat16 with optim.Stepper's master
    weights), and whether the text encoder learns now (it stops at training.text_encoder_stop_epoch)."""
    components: SDComponents
    prediction_type: str
    frozen_dtype: torch.dtype
    weight_dtype: torch.dtype
    text_encoder_trains: bool

    @classmethod
    def load(cls, preset: Preset, items: list, device: torch.device, emit: Callable) -> "TrainingModel":
        """Load the base model offline (models.load_model), check it against the inputs (checks.check_model_inputs:
        the objective, over-long texts), and put each part on `device` in its dtype: the VAE frozen in the mixed
        precision's dtype, the UNet and text encoder trainable (or frozen) as the preset says, gradient
        checkpointing on when asked. Raises errors.ModelLoadError or errors.InputError naming the problem."""
        training = preset.training
        emit(ev.Status(f"Loading {preset.model.base_model}"))
        model = preset.model
        components = load_model(model.base_model, model.base_config or None, load_ema=model.load_ema)
        prediction_type = check_model_inputs(preset, items, components, emit)
        components.noise_scheduler = losses.configure_noise_scheduler(
            dict(components.noise_scheduler.config), prediction_type, training.zero_terminal_snr)
        frozen = frozen_dtype(training.mixed_precision, device)  # the same rule as `python -m trainer cache`
        components.vae.requires_grad_(False).eval().to(device, frozen)
        # Trained weights in float32, or bfloat16 (half the memory; updates rounded stochastically, see optim.py).
        weight_dtype = torch.bfloat16 if training.weight_dtype == "bfloat16" else torch.float32
        components.unet.requires_grad_(training.train_unet).train(training.train_unet).to(device, weight_dtype)
        components.text_encoder.requires_grad_(training.train_text_encoder).train(training.train_text_encoder)
        components.text_encoder.to(device, weight_dtype if training.train_text_encoder else frozen)
        if device.type == "cuda":
            components.unet.to(memory_format=torch.channels_last)  # faster convolutions on tensor cores
            torch.backends.cudnn.benchmark = True  # few shapes (one per bucket): time cuDNN's algorithms once each
        if training.gradient_checkpointing:
            components.unet.enable_gradient_checkpointing()
            if training.train_text_encoder:
                components.text_encoder.gradient_checkpointing_enable()
        return cls(components, prediction_type, frozen, weight_dtype, training.train_text_encoder)

    def parameter_groups(self, training: TrainingConfig) -> list[dict]:
        """The optimizer's parameter groups: the UNet's at training.learning_rate, the text encoder's in its own
        group at text_encoder_learning_rate (or the same rate)."""
        groups = []
        if training.train_unet:
            groups.append({"params": [p for p in self.components.unet.parameters() if p.requires_grad],
                           "lr": training.learning_rate})
        if training.train_text_encoder:
            groups.append({"params": list(self.components.text_encoder.parameters()),
                           "lr": training.text_encoder_learning_rate or training.learning_rate})
        return groups

    def prepare(self, accelerator, preset: Preset, needs_vae_encoder: bool, needs_text_encoder: bool,
                emit: Callable) -> None:
        """Hand the UNet and text encoder to accelerate (a frozen one is prepared for evaluation: no DDP
        wrapper, which refuses a module without trainable parameters); on a GPU move what only encodes to CPU
        memory once its outputs are cached (samples bring it back); compile the UNet when asked."""
        components = self.components
        for name in ("unet", "text_encoder"):
            module = getattr(components, name)
            frozen = not any(p.requires_grad for p in module.parameters())
            setattr(components, name, accelerator.prepare_model(module, evaluation_mode=frozen))
        if accelerator.device.type == "cuda":  # after prepare, whose device placement would move them back
            if not needs_vae_encoder:
                components.vae.to("cpu")
            if not self.text_encoder_trains and not needs_text_encoder:
                components.text_encoder.to("cpu")
        if preset.training.compile:
            # Compiled kernels are cached beside the latents, so the next run of this preset compiles faster.
            os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path(preset.general.cache_dir).expanduser()
                                                                 / "compile"))
            emit(ev.Status("Compiling the UNet (torch.compile; the first steps are slow)"))
            components.unet = torch.compile(components.unet)

    def unwrapped(self, accelerator) -> SDComponents:
        """The components without accelerate's and torch.compile's wrappers (whose state_dict keys carry
        prefixes no other program reads): what samples, saves and backups use."""
        parts = self.components
        return SDComponents(accelerator.unwrap_model(parts.unet, keep_torch_compile=False), parts.vae,
                            accelerator.unwrap_model(parts.text_encoder), parts.tokenizer, parts.noise_scheduler)

    def trained_modules(self, accelerator, training: TrainingConfig) -> dict[str, torch.nn.Module]:
        """{"unet": ..., "text_encoder": ...}, the modules that train (unwrapped): a backup's weights."""
        unwrapped = self.unwrapped(accelerator)
        return {name: getattr(unwrapped, name) for name, trains in (("unet", training.train_unet),
                                                                    ("text_encoder", training.train_text_encoder))
                if trains}

    def load_weights(self, accelerator, tensors: dict[str, dict[str, torch.Tensor]]) -> None:
        """Load a backup's weights ({"unet": state_dict, "text_encoder": state_dict}, either may be absent)."""
        components = self.unwrapped(accelerator)
        for name, state in tensors.items():
            getattr(components, name).load_state_dict(state)

    def freeze_text_encoder_at(self, stop_epoch: int, epoch: int, emit: Callable) -> None:
        """From training.text_encoder_stop_epoch on (0: never) the text encoder learns no more: no gradients,
        its weights stay as they are."""
        if self.text_encoder_trains and stop_epoch and epoch >= stop_epoch:
            self.text_encoder_trains = False
            self.components.text_encoder.requires_grad_(False).eval()
            emit(ev.Log("info", f"Text encoder frozen from epoch {epoch}"))
