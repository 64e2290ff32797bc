"""SD 1.5 as the loop trains it: which parts learn, on which device and in which dtype, wrapped for several
processes and torch.compile, and read back unwrapped for samples, saves and backups. No UI here."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from trainer import events as ev
from trainer.config import Preset, TrainingConfig
from trainer.data.cache import frozen_dtype
from trainer.errors import InputError
from trainer.model import lora
from trainer.model.embedding import Embedding
from trainer.model.models import SDComponents, load_model
from trainer.train import losses
from trainer.train.checks import check_model_inputs


@dataclass
class TrainingModel:
    """The components (models.SDComponents; the UNet and text encoder become accelerate's wrappers once
    prepared), the objective trained ("epsilon" | "v_prediction"), the dtype of the frozen VAE (and frozen text
    encoder), the dtype the trained weights are kept in (float32, or bfloat16 with optim.Stepper's master
    weights), whether the text encoder (its weights, or its LoRA) learns now (it stops at
    training.text_encoder_stop_epoch), and the new word being trained (an embedding.Embedding, or None).

    What trains is training.method's: "full" the UNet's and text encoder's weights; "lora" a LoRA-family adapter
    (trainer.model.lora) on them, the base weights frozen in the frozen dtype; "embedding" nothing but the new word.
    The word (training.embedding_placeholder) trains beside a full or LoRA run too."""
    components: SDComponents
    prediction_type: str
    frozen_dtype: torch.dtype
    weight_dtype: torch.dtype
    text_encoder_trains: bool
    method: str = "full"
    embedding: Embedding | None = None

    @property
    def text_learns(self) -> bool:
        """Whether the captions' conditioning changes as the run trains (the text encoder or a new word learns):
        then captions are encoded every step, with gradients, never cached."""
        return self.text_encoder_trains or self.embedding is not None

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
        # A LoRA's or an embedding's base weights are frozen: they are kept in the frozen dtype.
        full = training.method == "full"
        weight_dtype = torch.bfloat16 if training.weight_dtype == "bfloat16" else torch.float32
        unet_learns, text_encoder_learns = (training.method != "embedding" and training.train_unet,
                                            training.method != "embedding" and training.train_text_encoder)
        components.unet.requires_grad_(full and unet_learns).train(unet_learns)
        components.unet.to(device, weight_dtype if full else frozen)
        components.text_encoder.requires_grad_(full and text_encoder_learns).train(text_encoder_learns)
        components.text_encoder.to(device, weight_dtype if full and text_encoder_learns else frozen)
        if training.method == "lora":
            add_lora(components, preset, emit)
        embedding = None
        if training.method == "embedding" or training.embedding_placeholder:
            embedding = Embedding(components.tokenizer, components.text_encoder, training.embedding_placeholder,
                                  training.embedding_vectors, training.embedding_init_text)
            embedding.module.to(device)
        if device.type == "cuda":
            components.unet.to(memory_format=torch.channels_last)  # faster convolutions on tensor cores
            torch.backends.cudnn.benchmark = True  # few shapes (one per bucket): time cuDNN's algorithms once each
        if training.gradient_checkpointing:
            components.unet.enable_gradient_checkpointing()
            if text_encoder_learns:  # not reentrant: a LoRA's inputs come from frozen layers
                components.text_encoder.gradient_checkpointing_enable({"use_reentrant": False})
        return cls(components, prediction_type, frozen, weight_dtype, text_encoder_learns, training.method, embedding)

    def parameter_groups(self, training: TrainingConfig) -> list[dict]:
        """The optimizer's parameter groups: the UNet's (weights or adapter) at training.learning_rate, the text
        encoder's in its own group at text_encoder_learning_rate (or the same rate), a new word's vectors at
        embedding_learning_rate without weight decay (it would pull the word towards zero, off the vocabulary)."""
        groups = []
        if self.components.unet.training:
            groups.append({"params": [p for p in self.components.unet.parameters() if p.requires_grad],
                           "lr": training.learning_rate})
        if self.text_encoder_trains:
            groups.append({"params": [p for p in self.components.text_encoder.parameters() if p.requires_grad],
                           "lr": training.text_encoder_learning_rate or training.learning_rate})
        if self.embedding is not None:
            groups.append({"params": list(self.embedding.module.parameters()),
                           "lr": training.embedding_learning_rate, "weight_decay": 0.0})
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
        if self.embedding is not None:  # its gradients are averaged over processes as a module's of its own
            self.embedding.call = accelerator.prepare_model(self.embedding.module)
        if accelerator.device.type == "cuda":  # after prepare, whose device placement would move them back
            if not needs_vae_encoder:
                components.vae.to("cpu")
            if not self.text_learns and not needs_text_encoder:
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

    def trained_weights(self, accelerator, training: TrainingConfig) -> dict[str, dict[str, torch.Tensor]]:
        """What trains, as tensors by part: "unet", "text_encoder" (their weights for a full fine-tune, their
        adapter in kohya's layout for a LoRA), "embedding" (the new word's vectors). A backup's weights."""
        unwrapped, weights = self.unwrapped(accelerator), {}
        for part, on in (("unet", training.train_unet), ("text_encoder", training.train_text_encoder)):
            if on and self.method == "full":
                weights[part] = getattr(unwrapped, part).state_dict()
            elif on and self.method == "lora":
                weights[part] = lora.kohya_tensors(getattr(unwrapped, part), part)
        if self.embedding is not None:
            weights["embedding"] = self.embedding.module.state_dict()
        return weights

    def load_weights(self, accelerator, tensors: dict[str, dict[str, torch.Tensor]], source: str = "") -> None:
        """Load weights as trained_weights gives them (a backup's, from `source`; any part may be absent)."""
        components = self.unwrapped(accelerator)
        for part, state in tensors.items():
            if part == "embedding":
                self.embedding.module.load_state_dict(state)
            elif self.method == "lora":
                lora.load_kohya_tensors(getattr(components, part), part, state, source)
            else:
                getattr(components, part).load_state_dict(state)

    def freeze_text_encoder_at(self, stop_epoch: int, epoch: int, emit: Callable) -> None:
        """From training.text_encoder_stop_epoch on (0: never) the text encoder learns no more: no gradients,
        its weights stay as they are."""
        if self.text_encoder_trains and stop_epoch and epoch >= stop_epoch:
            self.text_encoder_trains = False
            self.components.text_encoder.requires_grad_(False).eval()
            emit(ev.Log("info", f"Text encoder frozen from epoch {epoch}"))


def add_lora(components: SDComponents, preset: Preset, emit: Callable) -> None:
    """Put the preset's LoRA-family adapter (trainer.model.lora) on the UNet and, with train_text_encoder, the text
    encoder; with model.lora_weights, start it from that file. Raises InputError naming the field when the file
    is for another model or does not match the LoRA settings."""
    training, start = preset.training, preset.model.lora_weights
    parts = [part for part, on in (("unet", training.train_unet), ("text_encoder", training.train_text_encoder)) if on]
    for part in parts:
        module = getattr(components, part)
        specs = lora.target_layers(module, part, training.lora_conv_rank, training.lora_rank, training.lora_alpha,
                                   training.lora_conv_alpha)
        lora.add_adapter(module, part, training.lora_type, specs, training.lora_dropout)
    if start:
        found = lora.read_lora_file(start)
        if found.kind != training.lora_type:
            raise InputError(f"model.lora_weights: {start} is a {found.kind}; set training.lora_type to {found.kind}")
        extra = sorted(set(found.parts) - set(parts))
        if extra:
            raise InputError(f"model.lora_weights: {start} has {extra[0].replace('_', ' ')} layers: turn on "
                             f"training.train_{extra[0]} to train them on")
        for part in parts:
            lora.load_kohya_tensors(getattr(components, part), part, found.tensors, start)
        emit(ev.Log("info", f"LoRA started from {start}"))
