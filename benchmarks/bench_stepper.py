"""The cost of stepping bf16 weights through float32 proxies, per optimizer step, over SD 1.5's UNet weights.

SD 1.5's 686 UNet weights are recreated 1024 times smaller (at least one element each; the bucket size is scaled
alike), so what is timed is the per-call and per-weight overhead that a GPU pays on its host CPU, not the
arithmetic. Three ways for each optimizer: the optimizer's own step over plain bf16 weights (no stochastic
rounding: the floor), trainer.train.optim.Stepper as the fused back pass uses it (buckets), and the same Stepper with
buckets of one weight (a step per weight, as in a gradient hook).

    python benchmarks/bench_stepper.py [--optimizers adamw,adamw8bit] [--scale 1024]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def sd15_sizes() -> list[int]:
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    from trainer.model.models import BUNDLED_SD15
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(BUNDLED_SD15 / "unet"))
    return [p.numel() for p in unet.parameters()]


def median_ms(fn, params, repeats: int = 12) -> float:
    times = []
    for i in range(repeats + 3):
        for p in params:
            p.grad = torch.randn_like(p)
        start = time.perf_counter()
        fn()
        if i >= 3:
            times.append(time.perf_counter() - start)
    return round(statistics.median(times) * 1e3, 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--optimizers", default="adamw,adamw8bit")
    parser.add_argument("--scale", type=int, default=1024)
    args = parser.parse_args()
    from trainer.train import optim
    torch.set_num_threads(1)
    torch.manual_seed(0)
    sizes = sd15_sizes()
    rows = []
    for name in args.optimizers.split(","):
        make = lambda: [torch.nn.Parameter(torch.randn(max(1, n // args.scale)).to(torch.bfloat16)) for n in sizes]
        params = make()
        plain = optim.make_optimizer(name, [{"params": params}], 1e-5)
        row = {"optimizer": name, "weights": len(sizes),
               "plain_step_ms": median_ms(lambda: (plain.step(), plain.zero_grad(set_to_none=True)), params)}
        for label, bucket in (("bucketed_ms", max(1, optim.Stepper.BUCKET // args.scale)), ("per_weight_ms", 1)):
            params = make()
            stepper = optim.Stepper(name, [{"params": params}], 1e-5, 1e-2, master_weights=True)
            stepper.BUCKET = bucket
            order = list(reversed(params))  # roughly the order in which backward completes them

            def fused_step():
                for p in order:
                    stepper.add_to_bucket(p)
                stepper.step_bucket()
            row[label] = median_ms(fused_step, params)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
