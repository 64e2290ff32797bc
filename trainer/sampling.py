"""Sample images from the modules in memory (no reload) with a named diffusers scheduler. No UI here."""
from __future__ import annotations

from pathlib import Path

import torch

from trainer.config import SamplePrompt


def make_sampler(name: str, noise_scheduler_config):
    """A diffusers scheduler by SeaChange's sampler name, configured like the training noise schedule."""
    from diffusers import (DDIMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler,
                           EulerDiscreteScheduler, UniPCMultistepScheduler)
    classes = {"ddim": DDIMScheduler, "euler": EulerDiscreteScheduler, "euler_a": EulerAncestralDiscreteScheduler,
               "dpmpp_2m": DPMSolverMultistepScheduler, "unipc": UniPCMultistepScheduler}
    if name not in classes:
        raise ValueError(f"unknown sampler {name!r}; expected one of {', '.join(classes)}")
    config = dict(noise_scheduler_config)
    if config.get("rescale_betas_zero_snr"):
        config["timestep_spacing"] = "trailing"
    return classes[name].from_config(config)


def make_pipeline(unet, vae, text_encoder, tokenizer, noise_scheduler_config, sampler: str):
    """StableDiffusionPipeline over the given (unwrapped) modules; nothing is copied or reloaded."""
    from diffusers import StableDiffusionPipeline
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=make_sampler(sampler, noise_scheduler_config), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def generate(pipe, prompt: SamplePrompt, device, output_type: str = "pil"):
    """One image for one sample prompt, seeded; output_type 'latent' returns the latents."""
    generator = torch.Generator(device="cpu").manual_seed(prompt.seed)
    result = pipe(
        prompt=prompt.prompt, negative_prompt=prompt.negative_prompt or None, width=prompt.width,
        height=prompt.height, num_inference_steps=prompt.steps, guidance_scale=prompt.cfg_scale,
        generator=generator, output_type=output_type,
    )
    return result.images[0]


def sample_path(folder: Path, step: int, epoch: int, index: int, seed: int) -> Path:
    return folder / f"step{step:07d}-epoch{epoch:04d}-prompt{index:02d}-seed{seed}.png"
