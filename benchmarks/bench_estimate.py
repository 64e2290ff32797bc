"""The memory estimate before Start (trainer.tools.memory) against the real peak, for each built-in preset.

For each built-in SD 1.5 preset at batch 1 and 4 (512 px, the preset as `python -m trainer bench` trains it:
trainer.tools.bench.bench_preset, with --set overrides on top), `python -m trainer memory`'s estimate by part and how
long it took; with --real DEVICE also the real training loop's peak over its steps (bench.seachange_run on random
weights: torch.cuda.max_memory_allocated on a GPU, none on a CPU) and the estimate's error. Presets run eager
(training.compile off: the estimate is of eager steps; compiling takes minutes per shape).

    python benchmarks/bench_estimate.py [--real cuda|cpu] [--model sd15|tiny] [--presets a,b] [--batch-sizes 1,4]
        [--set training.gradient_checkpointing=false ...] [--steps 8] [--json OUT]

Without --real the model is the bundled SD 1.5 configs (no weights needed).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PRESETS = ["sd15_finetune", "sd15_finetune_fast", "sd15_finetune_lowvram", "sd15_lora", "sd15_embedding"]


def estimate_rows(presets: list[str], batches: list[int], overrides: list[str], real: str | None = None,
                  model: str = "sd15", steps: int = 8, work: Path | None = None, report=print) -> list[dict]:
    """One dict per preset and batch size: "estimate_gib", "parts_gib", "estimate_s"; with `real` (a device) also
    "real_gib" (None on a CPU), "img_s" and "error_pct". Raises what the runs raise."""
    from trainer.config import save_preset, validate
    from trainer.fields import apply_overrides
    from trainer.model.models import BUNDLED_SD15
    from trainer.tools import bench
    from trainer.tools.memory import GIB, estimate_memory
    work = Path(work or tempfile.mkdtemp(prefix="seachange-bench-estimate-"))
    size = 512 if model == "sd15" else 64
    model_dir, data = BUNDLED_SD15, work / "data"
    if real:
        from trainer.tools.demo import save_diffusers_folder
        model_dir = save_diffusers_folder(bench.build_model(model), work / "model")
        data = bench.make_dataset(work / "data", max(batches) * 4, size)
    rows = []
    for name in presets:
        for batch in batches:
            folder = work / f"{name}-{batch}"
            preset = bench.bench_preset(name, model_dir, data, folder, real or "cuda", batch, size, steps)
            preset = apply_overrides(preset, ["training.compile=false", *overrides], validate)
            started = time.perf_counter()
            estimate = estimate_memory(preset)
            row = {"preset": name, "batch": batch, "overrides": overrides,
                   "estimate_gib": round(estimate.total / GIB, 3), "parts_gib": estimate.to_json()["parts_gib"],
                   "estimate_s": round(time.perf_counter() - started, 1)}
            if real:
                (work / "presets").mkdir(exist_ok=True)  # seachange_run reads the preset by name: give it this one
                save_preset(preset, work / "presets" / f"{name}.json")
                saved, bench.PRESETS_DIR = bench.PRESETS_DIR, work / "presets"
                try:
                    result = bench.seachange_run(name, model_dir, data, folder, real, batch, size, steps,
                                                 warmup=2, window=2)
                finally:
                    bench.PRESETS_DIR = saved
                peak = result["peak_gib"]
                row.update(real_gib=peak, img_s=round(result["img_s"], 2),
                           error_pct=None if not peak else round(100 * (row["estimate_gib"] / peak - 1), 1))
            rows.append(row)
            report(json.dumps(row))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", choices=("cuda", "cpu"), default=None, help="also train for real on this device")
    parser.add_argument("--model", choices=("sd15", "tiny"), default="sd15", help="with --real: the random model")
    parser.add_argument("--presets", default=",".join(PRESETS))
    parser.add_argument("--batch-sizes", default="1,4")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override (repeatable)")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    rows = estimate_rows(args.presets.split(","), [int(b) for b in args.batch_sizes.split(",")], args.set,
                         args.real, args.model, args.steps, report=lambda line: print(line, flush=True))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
