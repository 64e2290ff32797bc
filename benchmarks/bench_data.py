"""Data pipeline benchmark: images/s through EpochPlan with and without the latent cache (prints JSON)."""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
EPILOG = ("Makes N photo-like JPEGs of mixed aspect ratios, then times: the first scan (every file decoded and "
          "hashed) and a second one (file index hit); one epoch of decode + crop + augment (no cache) per worker "
          "count; filling the latent cache with the VAE (tiny demo VAE by default, or --model); one epoch from the "
          "cache per worker count. images/s counts samples delivered to the loop; the loop's own work is not "
          "included. Set OMP_NUM_THREADS to keep a shared machine usable.")

ASPECTS = [(4, 3), (3, 4), (1, 1), (16, 9), (9, 16), (3, 2)]


def make_photos(folder: Path, count: int, long_side: int, seed: int = 0) -> None:
    """Smooth gradients plus noise (JPEG work similar to photos), various aspect ratios, with captions."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        a, b = ASPECTS[i % len(ASPECTS)]
        w, h = (long_side, long_side * b // a) if a >= b else (long_side * a // b, long_side)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        base = np.stack([xx / w, yy / h, (xx + yy) / (w + h)], -1) * 255
        noise = rng.normal(0, 20, (h // 4 + 1, w // 4 + 1, 3)).repeat(4, 0).repeat(4, 1)[:h, :w]
        Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)).save(folder / f"{i:04d}.jpg", quality=90)
        (folder / f"{i:04d}.txt").write_text(f"photo {i}, gradient, noise\n")


def epoch_rate(plan, workers: int) -> float:
    plan.workers = workers
    start, count = time.perf_counter(), 0
    for step in plan.iter_epoch(0):
        count += sum(len(b.positions) for b in step)
    return count / (time.perf_counter() - start)


def run(args) -> dict:
    import torch
    from trainer.config import preset_from_dict
    from trainer.data.data import EpochPlan, collect_items
    work = Path(tempfile.mkdtemp(prefix="bench_data_"))
    make_photos(work / "images", args.images, args.long_side)
    preset = preset_from_dict({
        "version": 1, "general": {"cache_dir": str(work / "cache"), "device": "cpu"},
        "concepts": [{"path": str(work / "images"), "random_flip": True, "crop_jitter": args.augment,
                      "random_brightness": args.augment, "image_variations": 2}],
        "training": {"resolution": str(args.resolution), "batch_size": args.batch_size}})
    result = {"images": args.images, "source_long_side": args.long_side, "resolution": args.resolution,
              "batch_size": args.batch_size, "torch_threads": torch.get_num_threads(), "augment": args.augment}
    start = time.perf_counter()
    items = collect_items(preset)
    result["scan_first_s"] = round(time.perf_counter() - start, 3)
    start = time.perf_counter()
    items = collect_items(preset)
    result["scan_again_s"] = round(time.perf_counter() - start, 3)
    workers = [int(w) for w in args.workers.split(",")]
    plan = EpochPlan(preset, items)
    result["uncached_images_per_s"] = {w: round(epoch_rate(plan, w), 1) for w in workers}
    if args.no_cache:
        return result
    if args.model:
        from trainer.model.models import load_model
        components = load_model(args.model)
    else:
        from trainer.tools.demo import build_tiny_components
        components = build_tiny_components()
    components.vae.requires_grad_(False).eval()
    plan = EpochPlan(preset, items)
    plan.workers = workers[-1]
    start = time.perf_counter()
    plan.prepare(components, "cpu", torch.float32, False, lambda e: None)
    elapsed = time.perf_counter() - start
    result["cache_fill"] = {"entries": plan.report["latents_encoded"], "seconds": round(elapsed, 2),
                            "entries_per_s": round(plan.report["latents_encoded"] / elapsed, 1),
                            "vae": args.model or "tiny demo VAE"}
    start = time.perf_counter()
    plan.prepare(components, "cpu", torch.float32, False, lambda e: None)
    result["cache_check_again_s"] = round(time.perf_counter() - start, 3)
    result["cached_images_per_s"] = {w: round(epoch_rate(plan, w), 1) for w in workers}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, epilog=EPILOG)
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--long-side", type=int, default=1536, help="long side of the generated photos")
    parser.add_argument("--resolution", type=int, default=256, help="training resolution (the tiny VAE is "
                        "slow on a CPU at 512: its mid-block attention is quadratic in the pixels)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--workers", default="0,2", help="comma list of DataLoader worker counts to time")
    parser.add_argument("--augment", action="store_true", help="crop jitter and brightness on")
    parser.add_argument("--no-cache", action="store_true", help="time only the scan and uncached loading")
    parser.add_argument("--model", default="", help="a real SD 1.5 model for the cache fill (GPU advised)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    print(json.dumps(run(args), indent=2))


if __name__ == "__main__":
    main()
