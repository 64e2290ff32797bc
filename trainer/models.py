"""Load SD 1.5 offline (diffusers folder, single .safetensors, .ckpt) and save it in each format. No UI here."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class SDComponents:
    unet: Any          # diffusers UNet2DConditionModel
    vae: Any           # diffusers AutoencoderKL
    text_encoder: Any  # transformers CLIPTextModel
    tokenizer: Any     # transformers CLIPTokenizer
    noise_scheduler: Any  # diffusers DDPMScheduler configured like the model's scheduler
