"""The embedded demo: a tiny SD-1.5-shaped model and a generated concept of coloured shapes. No UI here."""
from __future__ import annotations

import itertools
import random
from pathlib import Path

from PIL import Image, ImageDraw

from trainer.models import SDComponents

TOKENIZER_DIR = Path(__file__).parent / "assets" / "sd15" / "tokenizer"

COLORS = {"red": (220, 30, 30), "blue": (30, 60, 220), "green": (30, 170, 60), "yellow": (235, 205, 20)}
BACKGROUNDS = {"white": (250, 250, 250), "black": (10, 10, 10)}
SHAPES = ("circle", "square", "triangle")


def build_tiny_components(seed: int = 0) -> SDComponents:
    """A randomly initialised model with SD 1.5's structure and tokenizer but tiny widths (runs on a CPU)."""
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32, attention_head_dim=8,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, sample_size=64,
        block_out_channels=(32, 64, 64), down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
    )
    text_config = CLIPTextConfig(
        vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=77, projection_dim=32, hidden_act="quick_gelu",
        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
    )
    with torch.no_grad():  # a near-deterministic posterior, like SD's VAE: log-variance ~ -12 everywhere
        vae.quant_conv.weight[4:].zero_()
        vae.quant_conv.bias[4:].fill_(-12.0)
    calibrate_latent_scale(vae)
    text_encoder = CLIPTextModel(text_config)
    tokenizer = CLIPTokenizer.from_pretrained(TOKENIZER_DIR)
    scheduler = DDPMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        clip_sample=False, steps_offset=1,
    )
    return SDComponents(unet, vae, text_encoder, tokenizer, scheduler)


def calibrate_latent_scale(vae) -> float:
    """Set the VAE's scaling_factor so latents of demo images have unit variance, as SD 1.5's 0.18215 does for
    its VAE (Rombach et al. 2022, section 3.3); without it the diffusion model sees latents far below the noise."""
    import numpy as np
    import torch
    rng = random.Random(0)
    images = [draw_shape(c, s, b, 64, rng) for c, s, b in itertools.product(COLORS, SHAPES, BACKGROUNDS)]
    pixels = torch.from_numpy(np.stack([np.asarray(im, dtype=np.float32) for im in images]) / 127.5 - 1)
    with torch.no_grad():
        latents = vae.encode(pixels.permute(0, 3, 1, 2)).latent_dist.mean
    scale = float(1.0 / latents.std())
    vae.register_to_config(scaling_factor=scale)
    return scale


def save_diffusers_folder(components: SDComponents, folder: str | Path) -> Path:
    """Write the components as a diffusers folder (model_index.json + one subfolder each)."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=components.vae, text_encoder=components.text_encoder, tokenizer=components.tokenizer,
        unet=components.unet, scheduler=components.noise_scheduler, safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(str(folder))
    return Path(folder)


def draw_shape(color: str, shape: str, background: str, size: int, rng: random.Random) -> Image.Image:
    """One demo image: a coloured shape with a little random placement on a plain background."""
    image = Image.new("RGB", (size, size), BACKGROUNDS[background])
    draw = ImageDraw.Draw(image)
    r = size * rng.uniform(0.28, 0.36)
    cx = size / 2 + rng.uniform(-0.08, 0.08) * size
    cy = size / 2 + rng.uniform(-0.08, 0.08) * size
    fill = COLORS[color]
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif shape == "square":
        draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=fill)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r * 0.8), (cx + r, cy + r * 0.8)], fill=fill)
    return image


def make_demo_images(folder: str | Path, size: int = 64, per_combo: int = 1, seed: int = 0) -> int:
    """Write PNGs of every colour x shape x background with matching .txt captions; returns the count."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    count = 0
    for color, shape, background in itertools.product(COLORS, SHAPES, BACKGROUNDS):
        for k in range(per_combo):
            stem = f"{color}_{shape}_{background}_{k}"
            draw_shape(color, shape, background, size, rng).save(folder / f"{stem}.png")
            (folder / f"{stem}.txt").write_text(f"a {color} {shape} on a {background} background\n")
            count += 1
    return count


def make_demo(folder: str | Path, seed: int = 0) -> Path:
    """Build the demo under `folder`: model/ (diffusers folder) and images/ (captioned PNGs)."""
    folder = Path(folder).expanduser()
    model_dir = folder / "model"
    if not (model_dir / "model_index.json").exists():
        tmp = folder / "model.tmp"
        save_diffusers_folder(build_tiny_components(seed), tmp)
        tmp.replace(model_dir)
    if not (folder / "images").exists():
        make_demo_images(folder / "images.tmp", seed=seed)
        (folder / "images.tmp").replace(folder / "images")
    return folder
