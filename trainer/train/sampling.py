"""Sample images from the modules in memory (no reload) with a named diffusers scheduler. No UI here."""
from __future__ import annotations

from pathlib import Path

import torch

from trainer.config import MAX_TOKEN_LENGTHS, SamplePrompt
from trainer.data.prompts import CHUNK, chunk_count, chunks_needed, encode_prompts, first_words, token_count


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


def sample_embeds(pipe, prompt: SamplePrompt, device, max_token_length: int = 75):
    """(prompt_embeds, negative_prompt_embeds) for one sample prompt, each (1, n * 77, D); the negative one is None
    when cfg_scale <= 1 (diffusers then uses no guidance).

    Encoded as training encodes captions (trainer.data.prompts), with the fewest chunks n that hold the longer of prompt
    and negative prompt, at most max_token_length / 75: a short prompt renders the same at 75, 150 or 225, as in
    A1111 and ComfyUI, and the shorter text gets empty chunks (BOS + EOS), as A1111 pads cond and uncond. An empty
    negative prompt is encoded as "", what diffusers uses for none. Each text is encoded on its own, as diffusers
    does, so at 75 the embeddings equal the pipeline's own from the prompt strings. ValueError for a
    max_token_length other than 75, 150 or 225.
    """
    guided = prompt.cfg_scale > 1  # diffusers' condition for classifier-free guidance
    texts = [prompt.prompt, prompt.negative_prompt] if guided else [prompt.prompt]
    length = CHUNK * chunks_needed(pipe.tokenizer, texts, max_token_length)
    embeds = [encode_prompts(pipe.tokenizer, pipe.text_encoder, [text], length, device) for text in texts]
    return embeds[0], embeds[1] if guided else None


@torch.no_grad()
def generate(pipe, prompt: SamplePrompt, device, output_type: str = "pil", max_token_length: int = 75):
    """One image for one sample prompt, seeded; output_type 'latent' returns the latents.

    The prompts reach the pipeline as embeddings from sample_embeds (long prompts in 75-token chunks, up to
    max_token_length tokens); at 75 the image is the one diffusers makes from the prompt strings. Runs under the
    caller's autocast, if any.
    """
    generator = torch.Generator(device="cpu").manual_seed(prompt.seed)
    cond, uncond = sample_embeds(pipe, prompt, device, max_token_length)
    result = pipe(
        prompt_embeds=cond, negative_prompt_embeds=uncond, width=prompt.width,
        height=prompt.height, num_inference_steps=prompt.steps, guidance_scale=prompt.cfg_scale,
        generator=generator, output_type=output_type,
    )
    return result.images[0]


def sample_prompt_warnings(tokenizer, prompts: list[SamplePrompt], max_token_length: int) -> list[str]:
    """One warning per sample prompt or negative prompt longer than max_token_length CLIP tokens (those words are
    ignored), naming sampling.prompts.<index>, its first words, its token count and the limit."""
    chunk_count(max_token_length)
    warnings = []
    for index, prompt in enumerate(prompts):
        for kind, text in (("prompt", prompt.prompt), ("negative prompt", prompt.negative_prompt)):
            count = token_count(tokenizer, text)
            if count <= max_token_length:
                continue
            fits = [n for n in MAX_TOKEN_LENGTHS if n >= count]
            advice = (f"raise training.max_token_length to {fits[0]} to use them" if fits else
                      f"shorten it: {MAX_TOKEN_LENGTHS[-1]} tokens is the most training.max_token_length allows")
            warnings.append(f"sampling.prompts.{index}: the {kind} \"{first_words(text)}\" has {count} CLIP "
                            f"tokens, over the limit of {max_token_length} (training.max_token_length); the words "
                            f"past token {max_token_length} are ignored: {advice}.")
    return warnings


def sample_path(folder: Path, step: int, epoch: int, index: int, seed: int) -> Path:
    return folder / f"step{step:07d}-epoch{epoch:04d}-prompt{index:02d}-seed{seed}.png"
