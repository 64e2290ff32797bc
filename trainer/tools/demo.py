"""The embedded demo: a tiny SD-1.5-shaped model and a generated concept of coloured shapes. No UI here."""
from __future__ import annotations

import contextlib
import itertools
import os
import random
import time
from pathlib import Path
from typing import Callable

from PIL import Image, ImageDraw

from trainer import events as ev
from trainer.model.models import SDComponents

TOKENIZER_DIR = Path(__file__).parents[1] / "assets" / "sd15" / "tokenizer"

COLORS = {"red": (220, 30, 30), "blue": (30, 60, 220), "green": (30, 170, 60), "yellow": (235, 205, 20)}
BACKGROUNDS = {"white": (250, 250, 250), "black": (10, 10, 10)}
SHAPES = ("circle", "square", "triangle")
DEMO_PER_COMBO = 2  # images per colour x shape x background
DEMO_VAE_SECONDS = 50.0  # the VAE fit when the demo is built: about a minute with the rest


def build_tiny_components(seed: int = 0, vae_norm_groups: int = 32) -> SDComponents:
    """A randomly initialised model with SD 1.5's structure and tokenizer but tiny widths (runs on a CPU).

    vae_norm_groups: GroupNorm groups in the VAE. SD's 32 makes each 32-channel layer normalise every channel on
    its own, erasing its mean level (a flat image's colour), which slows fitting the VAE; the demo uses 8.
    """
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    # Two departures from SD 1.5's UNet hyperparameters that change no weight shape: 8 norm groups, not 32 (at
    # 32 channels, 32 groups normalise each channel on its own and erase its mean level); 2 attention heads of
    # 16, not 8 of 4 (CPU attention kernels are slow for tiny heads: this halves the step time).
    # "attention_head_dim" is diffusers' legacy name for the number of heads.
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32, attention_head_dim=2,
        norm_num_groups=8,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, sample_size=64,
        block_out_channels=(32, 64, 64), down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3, norm_num_groups=vae_norm_groups,
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


def demo_pixels(size: int = 64, per_combo: int = 1, seed: int = 0):
    """Demo images (every colour x shape x background) as a float tensor B, 3, H, W in [-1, 1]."""
    import numpy as np
    import torch
    rng = random.Random(seed)
    images = [draw_shape(c, s, b, size, rng) for c, s, b in itertools.product(COLORS, SHAPES, BACKGROUNDS)
              for _ in range(per_combo)]
    pixels = np.stack([np.asarray(im, dtype=np.float32) for im in images]) / 127.5 - 1
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous()


def reconstruction_error(vae, pixels) -> float:
    """Mean squared error of encode (posterior mean) -> decode, in [-1, 1] pixel units."""
    import torch
    with torch.no_grad():
        decoded = vae.decode(vae.encode(pixels).latent_dist.mean).sample
    return float(((decoded - pixels) ** 2).mean())


def fit_demo_vae(vae, pixels, seconds: float = 60.0, seed: int = 0, crop: int = 32, batch_size: int = 4,
                 learning_rate: float = 2e-3, max_steps: int | None = None,
                 on_step: Callable[[int, float], None] | None = None) -> int:
    """Train the VAE's encoder and decoder to reconstruct `pixels` (B, 3, H, W in [-1, 1]) for about `seconds`
    of wall time (or max_steps); returns the steps taken. Leaves the VAE in eval mode, frozen. `on_step(steps,
    done)` hears after each step how many were taken and how far the fit is (0 to 1: time or steps, whichever
    ends it). Runs on one torch thread (one_thread).

    Random flips and random crops (shifts) of the demo images; MSE + 0.5 L1 reconstruction loss, Adam with a
    short warm-up and a cosine decay over the time budget. No KL term: the posterior is kept near-deterministic
    (log-variance -12, which gets no gradient from the mean). Two additions make a minute of CPU enough:
    - the mid-block attention starts as the identity (zeroed output projection; its residual passes the input),
      since a random global attention mixes the whole image and slows the early fit;
    - the first three latent channels are anchored to the 4x-downsampled RGB image. The encoder gets a direct
      signal from the first step, the decoder gets informative latents at once, and the latent space becomes a
      smooth colour map that the diffusion model learns quickly. The fourth channel is free (shape edges) with
      a weak L2 that keeps it in range.
    """
    with one_thread():
        return _fit_demo_vae(vae, pixels, seconds, seed, crop, batch_size, learning_rate, max_steps, on_step)


def _fit_demo_vae(vae, pixels, seconds, seed, crop, batch_size, learning_rate, max_steps, on_step) -> int:
    import math

    import torch
    import torch.nn.functional as F
    generator = torch.Generator().manual_seed(seed)
    start_attention_as_identity(vae)
    vae.requires_grad_(True).train()
    optimizer = torch.optim.Adam(vae.parameters(), lr=learning_rate)
    factor = 2 ** (len(vae.config.block_out_channels) - 1)  # pixels per latent cell along each side
    started, step = time.monotonic(), 0
    while True:
        progress = (time.monotonic() - started) / seconds
        if max_steps is not None:
            progress = max(progress, step / max_steps)
        if on_step is not None and step:
            on_step(step, min(progress, 1.0))
        if progress >= 1:
            break
        warmup = min(1.0, (step + 1) / 20)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate * warmup * 0.5 * (1 + math.cos(math.pi * progress))
        x = augmented_batch(pixels, batch_size, crop, generator)
        latents = vae.encode(x).latent_dist.mean
        decoded = vae.decode(latents).sample
        loss = F.mse_loss(decoded, x) + 0.5 * F.l1_loss(decoded, x)
        loss = loss + F.mse_loss(latents[:, :3], F.avg_pool2d(x, factor)) + 0.01 * latents[:, 3].pow(2).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
    vae.requires_grad_(False).eval()
    return step


@contextlib.contextmanager
def one_thread():
    """Run torch on one CPU thread inside the block, as it was after. The tiny demo model's operations are too
    small to share out: split over the cores, each one waits for the slowest thread, and on a shared CPU a thread
    that lost its core stalls them all (on 2 shared cores the VAE fit took 60 times fewer steps on 2 threads)."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def start_attention_as_identity(model) -> None:
    """Zero the output projection of every attention layer: with its residual connection each one then passes
    its input through unchanged, and learns from there (like zero-initialised residual branches)."""
    import torch
    with torch.no_grad():
        for module in model.modules():
            if type(module).__name__ == "Attention":
                module.to_out[0].weight.zero_()
                if module.to_out[0].bias is not None:
                    module.to_out[0].bias.zero_()


def augmented_batch(pixels, batch_size: int, crop: int, generator):
    """A random batch of `pixels` (B, 3, H, W), each image flipped left-right at random, all cut to one random
    crop x crop window (a random shift)."""
    import torch
    n, _, height, width = pixels.shape
    crop = min(crop, height, width)
    x = pixels[torch.randint(0, n, (batch_size,), generator=generator)]
    flip = torch.rand(batch_size, generator=generator) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    top = int(torch.randint(0, height - crop + 1, (1,), generator=generator))
    left = int(torch.randint(0, width - crop + 1, (1,), generator=generator))
    return x[:, :, top:top + crop, left:left + crop]


def calibrate_latent_scale(vae, pixels=None) -> float:
    """Set the VAE's scaling_factor so latents of `pixels` (default: the demo images) have unit variance, as SD
    1.5's 0.18215 does for its VAE (Rombach et al. 2022, section 3.3); without it the diffusion model sees
    latents far below the noise."""
    import torch
    with torch.no_grad():
        latents = vae.encode(demo_pixels() if pixels is None else pixels).latent_dist.mean
    scale = float(1.0 / latents.std())
    vae.register_to_config(scaling_factor=scale)
    return scale


def save_diffusers_folder(components: SDComponents, folder: str | Path) -> Path:
    """Write the components as a diffusers folder (model_index.json + one subfolder each)."""
    from diffusers import StableDiffusionPipeline

    from trainer.fields import give_umask_mode
    pipe = StableDiffusionPipeline(
        vae=components.vae, text_encoder=components.text_encoder, tokenizer=components.tokenizer,
        unet=components.unet, scheduler=components.noise_scheduler, safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(str(folder))
    give_umask_mode(Path(folder))  # safetensors writes 0600 whatever the umask
    return Path(folder)


def draw_shape(color: str, shape: str, background: str, size: int, rng: random.Random) -> Image.Image:
    """One demo image: a coloured shape on a plain background. Size and place vary only a little, so that a
    tiny model learns the three shapes within minutes on a CPU."""
    image = Image.new("RGB", (size, size), BACKGROUNDS[background])
    draw = ImageDraw.Draw(image)
    r = size * rng.uniform(0.30, 0.34)
    cx = size / 2 + rng.uniform(-0.03, 0.03) * size
    cy = size / 2 + rng.uniform(-0.03, 0.03) * size
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


def load_pixels(folder: str | Path):
    """The PNGs of a folder (sorted by name, all one size) as a float tensor B, 3, H, W in [-1, 1]."""
    import numpy as np
    import torch
    arrays = []
    for path in sorted(Path(folder).glob("*.png")):
        with Image.open(path) as im:
            arrays.append(np.asarray(im.convert("RGB"), dtype=np.float32))
    return torch.from_numpy(np.stack(arrays) / 127.5 - 1).permute(0, 3, 1, 2).contiguous()


def make_demo(folder: str | Path, seed: int = 0, vae_seconds: float | None = None,
              per_combo: int = DEMO_PER_COMBO, emit: Callable = lambda event: None) -> Path:
    """Build the demo under `folder`: images/ (captioned PNGs) and model/ (a diffusers folder whose tiny VAE is
    fitted to those images, so that samples can look like them). Parts already there are kept; each part is
    written under a temporary name and renamed when complete. `emit` hears what it does as events: a Status for
    each of the three stages (the VAE fit's about once a second, with its share done), a Log line for each part.

    vae_seconds: time for the VAE fit; None reads the SEACHANGE_DEMO_VAE_SECONDS environment variable (a shorter
    build on a slow machine, at the cost of blurrier demo images; the test suite sets 3), else 50.
    """
    import shutil
    started = time.monotonic()
    folder = Path(folder).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    images_dir, model_dir = folder / "images", folder / "model"
    if images_dir.exists() and (model_dir / "model_index.json").exists():
        return folder
    if vae_seconds is None:
        vae_seconds = float(os.environ.get("SEACHANGE_DEMO_VAE_SECONDS", DEMO_VAE_SECONDS))
    emit(ev.Log("info", f"Building the demo in {folder}: captioned images of coloured shapes, and a tiny SD "
                        f"1.5-shaped model whose VAE is fitted to them for {vae_seconds:.0f} s"))
    if not images_dir.exists():
        count = len(COLORS) * len(SHAPES) * len(BACKGROUNDS) * per_combo
        emit(ev.Status(f"Demo 1/3: drawing {count} images"))
        tmp = folder / "images.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        make_demo_images(tmp, per_combo=per_combo, seed=seed)
        tmp.replace(images_dir)
        emit(ev.Log("info", f"Demo: {count} captioned images written to {images_dir}"))
    if not (model_dir / "model_index.json").exists():
        emit(ev.Status("Demo 2/3: making a tiny model"))
        components = build_tiny_components(seed, vae_norm_groups=8)
        pixels = load_pixels(images_dir)
        fit_started = time.monotonic()
        steps = fit_demo_vae(components.vae, pixels, seconds=vae_seconds, seed=seed,
                             on_step=vae_fit_reporter(vae_seconds, emit))
        emit(ev.Log("info", f"Demo: VAE fitted to the images in {steps} steps, "
                            f"{time.monotonic() - fit_started:.0f} s"))
        calibrate_latent_scale(components.vae, pixels)
        from diffusers import DDPMScheduler
        # The demo trains its random UNet for v-prediction with zero terminal SNR (presets/demo.json): its
        # scheduler says so, as a real v-prediction model's does, so the objective is the model's own.
        components.noise_scheduler = DDPMScheduler.from_config(components.noise_scheduler.config,
                                                               prediction_type="v_prediction",
                                                               rescale_betas_zero_snr=True)
        emit(ev.Status("Demo 3/3: writing the model"))
        tmp = folder / "model.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        save_diffusers_folder(components, tmp)
        shutil.rmtree(model_dir, ignore_errors=True)
        tmp.replace(model_dir)
    emit(ev.Log("info", f"Demo built in {time.monotonic() - started:.0f} s: model in {model_dir}"))
    return folder


def vae_fit_reporter(seconds: float, emit: Callable) -> Callable[[int, float], None]:
    """An on_step for fit_demo_vae that emits "Demo 2/3: fitting its VAE, 12 of 50 s (24%)" about once a second
    and at the end."""
    last = [-1.0]

    def report(step: int, done: float) -> None:
        now = time.monotonic()
        if now - last[0] >= 1.0 or done >= 1.0:
            last[0] = now
            emit(ev.Status(f"Demo 2/3: fitting its VAE, {done * seconds:.0f} of {seconds:.0f} s ({done:.0%})"))
    return report
