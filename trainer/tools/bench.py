"""`python -m trainer bench`: SeaChange's training step against the reference loop, speed and memory. No UI here.

The reference is the way diffusers' train_text_to_image example trains (see ../shared anchors): fp32 UNet weights,
bf16 autocast, the VAE and text encoder run every step, torch AdamW, gradient clipping. SeaChange runs its real
training loop (trainer.train.loop.train) on a preset with a synthetic dataset, timed from its Progress events. Both run
in one process on the same random-weight model: full SD 1.5 shapes at 512 px on a GPU, the tiny demo model on a
CPU (where the number that matters is the trainer's overhead per step against a bare loop).
"""
from __future__ import annotations

import collections
import json
import queue
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from trainer.config import ConceptConfig, Preset, load_preset
from trainer.fields import atomic_write_text

PRESETS_DIR = Path(__file__).resolve().parents[2] / "presets"


def build_model(kind: str, seed: int = 0):
    """Random-weight components: "sd15" (full SD 1.5 shapes from the bundled configs) or "tiny" (the demo's)."""
    if kind == "tiny":
        from trainer.tools.demo import build_tiny_components
        return build_tiny_components(seed)
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from trainer.model.models import BUNDLED_SD15, SDComponents
    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(BUNDLED_SD15 / "unet"))
    vae = AutoencoderKL.from_config(AutoencoderKL.load_config(BUNDLED_SD15 / "vae"))
    text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(BUNDLED_SD15 / "text_encoder"))
    tokenizer = CLIPTokenizer.from_pretrained(BUNDLED_SD15 / "tokenizer")
    scheduler = DDPMScheduler.from_config(DDPMScheduler.load_config(BUNDLED_SD15 / "scheduler"))
    return SDComponents(unet, vae, text_encoder, tokenizer, scheduler)


def timed_windows(stamps: list[float], warmup: int, window: int) -> float:
    """Steps per second: the median over windows of `window` steps after `warmup` steps."""
    rates = []
    for start in range(warmup, len(stamps) - window, window):
        rates.append(window / (stamps[start + window] - stamps[start]))
    if not rates:
        raise ValueError(f"too few steps ({len(stamps)}) for {warmup} warm-up steps and windows of {window}")
    return statistics.median(rates)


def peak_gib(device: str) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None


def reset_peak(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def reference_loop(c, device: str, batch: int, size: int, steps: int, warmup: int, window: int,
                   lowvram: bool = False) -> dict:
    """The diffusers train_text_to_image step: VAE encode and text encoder every step, fp32 UNet under bf16
    autocast, AdamW (bitsandbytes AdamW8bit + gradient checkpointing for the low-memory variant), clip norm 1."""
    import copy
    unet = copy.deepcopy(c.unet).to(device).train()
    vae, text_encoder = c.vae.to(device).eval(), c.text_encoder.to(device).eval()
    unet.requires_grad_(True)
    if lowvram:
        import bitsandbytes as bnb
        unet.enable_gradient_checkpointing()
        optimizer = bnb.optim.AdamW8bit(unet.parameters(), lr=1e-6)
    else:
        optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-6)
    scheduler = c.noise_scheduler
    torch.backends.cudnn.benchmark = False  # the example leaves it off (SeaChange's loop turns it on)
    autocast = torch.autocast(device_type=device, dtype=torch.bfloat16)
    g = torch.Generator(device="cpu").manual_seed(0)
    reset_peak(device)
    stamps = []
    for _ in range(steps):
        pixels = (torch.rand(batch, 3, size, size, generator=g) * 2 - 1).to(device)
        ids = torch.randint(0, 49408, (batch, 77), generator=g).to(device)
        with torch.no_grad(), autocast:
            latents = vae.encode(pixels).latent_dist.sample() * vae.config.scaling_factor
            hidden = text_encoder(ids)[0]
        noise = torch.randn_like(latents)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (batch,), device=device)
        with autocast:
            pred = unet(scheduler.add_noise(latents.float(), noise.float(), t), t, hidden).sample
        loss = torch.nn.functional.mse_loss(pred.float(), noise.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()  # the example logs the loss every step
        stamps.append(time.perf_counter())
    result = {"img_s": batch * timed_windows(stamps, warmup, window), "peak_gib": peak_gib(device)}
    del unet, optimizer
    c.vae.to("cpu"), c.text_encoder.to("cpu")
    reset_peak(device)
    return result


def bare_loop(c, device: str, batch: int, size: int, steps: int, warmup: int, window: int) -> dict:
    """The CPU yardstick: the same step as SeaChange's default preset (cached latents and text embeddings,
    fp32, AdamW, clip norm 1) with nothing around it."""
    import copy
    unet = copy.deepcopy(c.unet).to(device).train().requires_grad_(True)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-6)
    g = torch.Generator().manual_seed(0)
    cells = size // 2 ** (len(c.vae.config.block_out_channels) - 1)  # latent side: size / 8 for SD 1.5's VAE
    latents = torch.randn(batch, 4, cells, cells, generator=g).to(device)
    hidden = torch.randn(batch, 77, c.text_encoder.config.hidden_size, generator=g).to(device)
    stamps = []
    for _ in range(steps):
        noise = torch.randn(latents.shape, generator=g).to(device)
        t = torch.randint(0, 1000, (batch,), generator=g).to(device)
        pred = unet(c.noise_scheduler.add_noise(latents, noise, t), t, hidden).sample
        loss = torch.nn.functional.mse_loss(pred, noise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()
        stamps.append(time.perf_counter())
    return {"img_s": batch * timed_windows(stamps, warmup, window), "peak_gib": None}


def make_dataset(folder: Path, count: int, size: int) -> Path:
    """`count` smooth random images of size x size with captions (content does not change the speed)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        small = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
        Image.fromarray(small).resize((size, size), Image.BILINEAR).save(folder / f"{i:04d}.png")
        (folder / f"{i:04d}.txt").write_text(f"a photo of thing {i}\n")
    return folder


BARE_STEP = {"mixed_precision": "no", "ema": "off", "min_snr_gamma": 0.0, "weight_dtype": "float32",
             "fused_backward": False, "gradient_checkpointing": False, "optimizer": "adamw", "max_grad_norm": 1.0}
TRAINER_BARE_STEP = "trainer, bare loop's step"


def bench_preset(preset_name: str, model_dir: Path, data: Path, work: Path, device: str, batch: int, size: int,
                 steps: int, bare_step: bool = False) -> Preset:
    """A built-in preset as seachange_run trains it: model, data, batch, size and length replaced, no samples,
    backups or saves. Raises ValueError when it does not validate."""
    from trainer.config import validate
    from trainer.fields import set_value
    preset = load_preset(PRESETS_DIR / f"{preset_name}.json")
    for key, value in {
        "general.workspace_dir": str(work / "ws"), "general.cache_dir": str(work / "cache"),
        "general.device": device, "general.tensorboard": False, "general.demo_dir": "",
        "model.base_model": str(model_dir), "model.output_path": str(work / "out.safetensors"),
        "model.output_dtype": "float16", "training.batch_size": batch, "training.max_steps": steps,
        "training.resolution": str(size), "training.lr_warmup_steps": 0, "sampling.unit": "never",
        "backup.backup_unit": "never", "backup.save_unit": "never", "backup.backup_before_save": False,
    }.items():
        set_value(preset, key, value)
    preset.concepts = [ConceptConfig(name="bench", path=str(data))]
    for key, value in BARE_STEP.items() if bare_step else ():
        setattr(preset.training, key, value)
    if device == "cpu" and preset.training.mixed_precision == "fp16":
        preset.training.mixed_precision = "bf16"
    problems = validate(preset)
    if problems:
        raise ValueError(problems[0])
    return preset


def seachange_run(preset_name: str, model_dir: Path, data: Path, work: Path, device: str, batch: int, size: int,
                  steps: int, warmup: int, window: int, bare_step: bool = False) -> dict:
    """The real training loop on a built-in preset (bench_preset: model, data, batch and length replaced), timed
    per step. bare_step: train exactly the step bare_loop takes, to measure what the trainer costs around it."""
    from trainer import events as ev
    from trainer.train.loop import train
    preset = bench_preset(preset_name, model_dir, data, work, device, batch, size, steps, bare_step)
    stamps, started = [], {}

    def emit(event):
        if isinstance(event, ev.RunStarted):
            reset_peak(device)  # the model is loaded and the caches are filled: measure the training alone
            started["t"] = time.perf_counter()
            watch_syncs(device, True)
        elif isinstance(event, ev.Progress):
            stamps.append(time.perf_counter())
            if event.step == steps:
                watch_syncs(device, False)  # the final save reads the weights back: not a step's sync
                started["peak"] = peak_gib(device)  # the steps' peak, before the final save
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            finished = train(preset, emit, queue.Queue(), fresh=True)  # each batch size starts over in `work`
        finally:
            watch_syncs(device, False)
    if finished.outcome != "completed":
        raise RuntimeError(f"{preset_name} batch {batch}: {finished.message}")
    result = {"img_s": batch * timed_windows(stamps, warmup, window), "peak_gib": started.get("peak"),
              "setup_s": round(started["t"] - t0, 1), "first_step_s": round(stamps[0] - started["t"], 2)}
    if device == "cuda":
        sites = collections.Counter(f"{Path(w.filename).name}:{w.lineno}" for w in caught
                                    if "synchronizing CUDA operation" in str(w.message))
        result["syncs_per_step"] = round(sum(sites.values()) / steps, 2)
        result["sync_sites"] = dict(sites.most_common(6))
    reset_peak(device)
    return result


def watch_syncs(device: str, on: bool) -> None:
    """On a GPU, have torch warn at every operation that makes the host wait for the device (the warnings name
    the line): the steps should make none but the loss reads."""
    if device == "cuda":
        torch.cuda.set_sync_debug_mode("warn" if on else "default")


# What runs at which batch sizes by default. The compiled preset runs at batch 16 only, the size of the
# throughput target: compiling takes about two minutes per shape on a GPU.
GPU_PLAN = {"sd15_finetune": [1, 4, 16], "sd15_finetune_lowvram": [1, 4], "sd15_finetune_fast": [16]}
CPU_PLAN = {"sd15_finetune": [1, 4], "sd15_finetune_lowvram": [1, 4]}


def run_bench(device: str = "auto", model: str | None = None, batch_sizes: list[int] | None = None,
              presets: list[str] | None = None, steps: int | None = None, work: Path | None = None,
              log=print, json_path: Path | None = None) -> dict:
    """Every measurement as a dict (see format_table); `model` defaults to sd15 on a GPU, tiny on a CPU.
    Each preset runs at `batch_sizes`, or at its sizes in the plan; the reference runs at every size used.
    With `json_path` the results so far are written after every run (a run cut short keeps what it measured)."""
    device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    model = model or ("sd15" if device == "cuda" else "tiny")
    size = 512 if model == "sd15" else 64
    plan = GPU_PLAN if device == "cuda" else CPU_PLAN
    presets = presets or list(plan)
    sizes = {name: batch_sizes or plan.get(name, [1, 4]) for name in presets}
    steps = steps or (40 if device == "cuda" else 24)
    warmup, window = max(2, steps // 4), max(2, steps // 8)
    work = Path(work or tempfile.mkdtemp(prefix="seachange-bench-"))
    log(f"building {model} model ({device})")
    c = build_model(model)
    from trainer.tools.demo import save_diffusers_folder
    model_dir = save_diffusers_folder(c, work / "model")
    all_sizes = sorted({b for bs in sizes.values() for b in bs})
    data = make_dataset(work / "data", max(all_sizes) * 4, size)
    out = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "model": model, "size": size,
           "torch": torch.__version__, "steps": steps, "warmup": warmup, "window": window,
           "date": time.strftime("%Y-%m-%d"), "rows": []}
    for batch in all_sizes:
        runs = [("reference", lambda: reference_loop(c, device, batch, size, steps, warmup, window))]
        if device == "cuda" and batch == 1:
            runs.append(("reference lowvram", lambda: reference_loop(c, device, batch, size, steps, warmup, window,
                                                                     lowvram=True)))
        if device == "cpu":
            runs.append(("bare loop", lambda: bare_loop(c, device, batch, size, steps, warmup, window)))
            runs.append((TRAINER_BARE_STEP, lambda: seachange_run("sd15_finetune", model_dir, data, work / "bare",
                                                                   device, batch, size, steps, warmup, window,
                                                                   bare_step=True)))
        for name in presets:
            if batch in sizes[name]:
                runs.append((name, lambda name=name: seachange_run(name, model_dir, data, work / name, device,
                                                                    batch, size, steps, warmup, window)))
        for name, fn in runs:
            log(f"batch {batch}: {name}")
            try:
                row = {"name": name, "batch": batch, **fn()}
            except Exception as e:  # noqa: BLE001 - an OOM at one size must not lose the other results
                row = {"name": name, "batch": batch, "error": f"{type(e).__name__}: {str(e).splitlines()[0]}"}
                reset_peak(device)
            out["rows"].append(row)
            add_ratios(out["rows"])
            if json_path:
                atomic_write_text(Path(json_path), json.dumps(out, indent=2) + "\n")
    return out


def add_ratios(rows: list[dict]) -> None:
    """Each run's speed against the reference at its batch size; the trainer's step time against the bare loop."""
    for row in rows:
        base = next((r for r in rows if r["batch"] == row["batch"] and r["name"] == "reference"), None)
        if base and "img_s" in row and "img_s" in base:
            row["vs_reference"] = round(row["img_s"] / base["img_s"], 2)
        bare = next((r for r in rows if r["batch"] == row["batch"] and r["name"] == "bare loop"), None)
        if bare and "img_s" in row and row["name"] == TRAINER_BARE_STEP:
            row["step_time_vs_bare"] = round(bare["img_s"] / row["img_s"], 3)


def format_table(result: dict) -> str:
    lines = [f"{result['device']}, {result['model']} at {result['size']} px, torch {result['torch']}",
             f"{'run':<26}{'batch':>6}{'img/s':>9}{'peak GiB':>10}{'vs ref':>8}{'vs bare':>9}{'syncs/step':>12}"]
    for r in result["rows"]:
        if "error" in r:
            lines.append(f"{r['name']:<26}{r['batch']:>6}  {r['error']}")
            continue
        peak = f"{r['peak_gib']:.2f}" if r.get("peak_gib") is not None else "-"
        lines.append(f"{r['name']:<26}{r['batch']:>6}{r['img_s']:>9.2f}{peak:>10}"
                     f"{r.get('vs_reference', '-'):>8}{r.get('step_time_vs_bare', '-'):>9}"
                     f"{r.get('syncs_per_step', '-'):>12}")
    return "\n".join(lines)


def main(args) -> int:
    result = run_bench(args.device, args.model, [int(b) for b in args.batch_sizes.split(",")] if args.batch_sizes
                       else None, args.presets.split(",") if args.presets else None, args.steps,
                       json_path=args.json)
    print(format_table(result))
    return 0
