"""Demo benchmark: build the demo (VAE fit included), train presets/demo.json headless, and report when each sample
prompt's image first shows its caption's colours (and keeps showing them). Prints JSON; writes a strip of samples."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from trainer.compare import SAMPLE_NAME  # noqa: E402  (after the path is set)
from trainer.demo import BACKGROUNDS, COLORS  # noqa: E402


def nearest(rgb, palette: dict) -> str:
    return min(palette, key=lambda name: sum((a - b) ** 2 for a, b in zip(rgb, palette[name])))


def matches(path: Path, prompt: str) -> bool:
    """The centre's mean colour is nearest the prompt's shape colour, the corners' nearest its background."""
    words = prompt.split()
    color, background = words[1], words[-2]
    a = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)
    h, w = a.shape[:2]
    centre = a[h // 3: 2 * h // 3, w // 3: 2 * w // 3].reshape(-1, 3).mean(0)
    k = max(1, h // 8)
    corners = np.concatenate([a[:k, :k], a[:k, -k:], a[-k:, :k], a[-k:, -k:]]).reshape(-1, 3).mean(0)
    return nearest(centre, COLORS) == color and nearest(corners, BACKGROUNDS) == background


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--strip", default="benchmarks/demo_samples.png", help="where to write the sample strip")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="seachange-demo-"))
    started = time.time()
    subprocess.run([sys.executable, "-m", "trainer", "make-demo", str(work / "demo")], cwd=ROOT, check=True,
                   capture_output=True)
    built = time.time() - started
    overrides = {"general.workspace_dir": work / "ws", "general.cache_dir": work / "ws" / "cache",
                 "general.demo_dir": work / "demo", "model.base_model": work / "demo" / "model",
                 "concepts.0.path": work / "demo" / "images", "model.output_path": work / "ws" / "model.safetensors"}
    command = [sys.executable, "-m", "trainer", "train", str(ROOT / "presets" / "demo.json")]
    for key, value in overrides.items():
        command += ["--set", f"{key}={value}"]
    started = time.time()
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True)
    trained = time.time() - started
    preset = json.loads((work / "ws" / "preset.json").read_text())
    prompts = [p["prompt"] for p in preset["sampling"]["prompts"]]
    samples = sorted((work / "ws" / "samples").glob("*.png"))
    by_step: dict[int, dict[int, Path]] = {}
    for path in samples:
        step, _, index, _ = map(int, SAMPLE_NAME.match(path.name).groups())
        by_step.setdefault(step, {})[index] = path
    steps = sorted(by_step)
    total_steps = preset["training"]["epochs"] * 12  # 48 demo images, batch 4
    report = {"build_s": round(built, 1), "train_s": round(trained, 1), "prompts": {}}
    for index, prompt in enumerate(prompts):
        ok = [matches(by_step[s][index], prompt) for s in steps]
        settled = next((s for i, s in enumerate(steps) if all(ok[i:])), None)
        report["prompts"][prompt] = {
            "matches_from_step": settled,
            "about_s_into_training": None if settled is None else round(trained * settled / total_steps),
            "matching_samples": f"{sum(ok)}/{len(ok)}"}
    strip = Image.new("RGB", (64 * len(steps), 64 * len(prompts)), "gray")
    for c, step in enumerate(steps):
        for r in range(len(prompts)):
            with Image.open(by_step[step][r]) as im:
                strip.paste(im.convert("RGB").resize((64, 64)), (c * 64, r * 64))
    strip.save(ROOT / args.strip)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
