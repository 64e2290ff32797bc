"""Demo benchmark: build the demo (VAE fit included), train presets/demo.json headless, and report when each sample
prompt's image first shows its caption's colours and its caption's shape (and keeps showing them in every later
sample). Times are wall seconds of training (from the start of `python -m trainer train`, so model load and latent
caching count; the demo build does not) at which each sample was written. Prints JSON; writes a strip of samples.

Colour: the mean colour of the pixels inside the ideal shape is nearest the caption's colour and the mean of those
outside nearest its background. Shape: the sample thresholded against its background (each pixel nearer the shape
colour than the background colour) overlaps the ideal shape of the caption (drawn as the demo draws it, at its mean
size and place) with IoU >= SHAPE_IOU, and overlaps it by SHAPE_MARGIN more than any other demo shape.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from trainer.tools.compare import SAMPLE_NAME  # noqa: E402  (after the path is set)
from trainer.tools.demo import BACKGROUNDS, COLORS, SHAPES, draw_shape  # noqa: E402

SHAPE_IOU = 0.7  # a drawn circle of the smallest demo size against the mean-sized ideal circle: 0.88
SHAPE_MARGIN = 0.05  # a circle and a square of one size overlap with IoU pi / 4 = 0.79


class MidRange:
    """A stand-in for random.Random whose uniform(a, b) is the middle of the range: the demo's mean shape."""

    def uniform(self, a: float, b: float) -> float:
        return (a + b) / 2


def ideal_mask(shape: str, size: int) -> np.ndarray:
    """The mean-sized, centred demo shape as a boolean size x size mask."""
    image = draw_shape("red", shape, "black", size, MidRange())
    return np.asarray(image)[..., 0] > 128


def nearest(rgb, palette: dict) -> str:
    return min(palette, key=lambda name: sum((a - b) ** 2 for a, b in zip(rgb, palette[name])))


def judge(path: Path, prompt: str) -> dict:
    """Colour and shape of one sample of "a COLOR SHAPE on a BACKGROUND background": {"colour": bool, "shape":
    bool, "iou": {shape: IoU of the thresholded sample with that ideal shape}}."""
    words = prompt.split()
    color, shape, background = words[1], words[2], words[-2]
    a = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)
    masks = {s: ideal_mask(s, a.shape[0]) for s in SHAPES}
    inside, outside = a[masks[shape]].mean(0), a[~masks[shape]].mean(0)
    colour_ok = nearest(inside, COLORS) == color and nearest(outside, BACKGROUNDS) == background
    to_fill = ((a - np.array(COLORS[color])) ** 2).sum(-1)
    to_background = ((a - np.array(BACKGROUNDS[background])) ** 2).sum(-1)
    drawn = to_fill < to_background
    iou = {s: float((drawn & m).sum() / max(1, (drawn | m).sum())) for s, m in masks.items()}
    others = max(v for s, v in iou.items() if s != shape)
    shape_ok = iou[shape] >= SHAPE_IOU and iou[shape] >= others + SHAPE_MARGIN
    return {"colour": bool(colour_ok), "shape": bool(shape_ok), "iou": {s: round(v, 2) for s, v in iou.items()}}


def settled(times: list[float], ok: list[bool]) -> float | None:
    """The first time from which every sample is ok, or None."""
    return next((t for i, t in enumerate(times) if all(ok[i:])), None)


def build_demo(demo: Path) -> float:
    """Build the demo under `demo` unless it is there; returns the seconds it took (0 if it was there)."""
    if (demo / "model" / "model_index.json").exists():
        return 0.0
    started = time.time()
    subprocess.run([sys.executable, "-m", "trainer", "make-demo", str(demo)], cwd=ROOT, check=True,
                   capture_output=True)
    return time.time() - started


def train(work: Path, demo: Path, extra: list[str], threads: int) -> tuple[float, float]:
    """Train presets/demo.json on the demo under `demo`, workspace work/ws, with `threads` torch threads (0: torch's
    default, one per core); returns (start time, seconds)."""
    overrides = {"general.workspace_dir": work / "ws", "general.cache_dir": work / "ws" / "cache",
                 "general.demo_dir": demo, "model.base_model": demo / "model",
                 "concepts.0.path": demo / "images", "model.output_path": work / "ws" / "model.safetensors"}
    command = [sys.executable, "-m", "trainer", "train", str(ROOT / "presets" / "demo.json")]
    for setting in [f"{key}={value}" for key, value in overrides.items()] + extra:
        command += ["--set", setting]
    started = time.time()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)} if threads else None
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env, check=False)
    if result.returncode:
        sys.exit(result.stderr[-3000:])
    return started, time.time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--strip", default="benchmarks/demo_samples.png", help="where to write the sample strip")
    parser.add_argument("--demo", type=Path, help="a demo folder to use (built there if missing); default: a "
                                                  "fresh one in a temporary folder")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a preset override for the training, as `trainer train --set` takes")
    parser.add_argument("--threads", type=int, default=0, help="torch threads for the training (OMP_NUM_THREADS); "
                                                                  "0: torch's default")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="seachange-demo-"))
    demo = (args.demo or work / "demo").resolve()
    built = build_demo(demo)
    started, trained = train(work, demo, args.set, args.threads)
    preset = json.loads((work / "ws" / "preset.json").read_text())
    prompts = [p["prompt"] for p in preset["sampling"]["prompts"]]
    by_step: dict[int, dict[int, Path]] = {}
    for path in (work / "ws" / "samples").glob("*.png"):
        step, _, index, _ = map(int, SAMPLE_NAME.match(path.name).groups())
        by_step.setdefault(step, {})[index] = path
    steps = sorted(by_step)
    times = [max(p.stat().st_mtime for p in by_step[s].values()) - started for s in steps]
    report = {"build_s": round(built, 1), "train_s": round(trained, 1), "steps": steps[-1],
              "sample_times_s": [round(t) for t in times], "prompts": {}}
    both = []
    for index, prompt in enumerate(prompts):
        judged = [judge(by_step[s][index], prompt) for s in steps]
        colour = [j["colour"] for j in judged]
        right = [j["colour"] and j["shape"] for j in judged]
        both.append(right)
        colour_s, right_s = settled(times, colour), settled(times, right)
        report["prompts"][prompt] = {
            "colour_from_s": None if colour_s is None else round(colour_s),
            "colour_and_shape_from_s": None if right_s is None else round(right_s),
            "colour_and_shape_from_step": None if right_s is None else steps[times.index(right_s)],
            "right_samples": f"{sum(right)}/{len(right)}",
            "iou_last": judged[-1]["iou"]}
    all_right = settled(times, [all(r) for r in zip(*both)])
    report["both_right_from_s"] = None if all_right is None else round(all_right)
    size = 64
    strip = Image.new("RGB", (size * len(steps), size * len(prompts)), "gray")
    for c, step in enumerate(steps):
        for r in range(len(prompts)):
            with Image.open(by_step[step][r]) as im:
                strip.paste(im.convert("RGB").resize((size, size), Image.NEAREST), (c * size, r * size))
    strip.save(ROOT / args.strip)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
