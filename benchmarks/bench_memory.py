"""Peak memory of one low-VRAM training step on full SD 1.5 shapes, estimated without a GPU.

The UNet (and with --train-text-encoder the CLIP text encoder) is built with fake tensors (shapes and dtypes, no
data: torch's FakeTensorMode) and trained for two steps as presets/sd15_finetune_lowvram.json trains it: bf16
weights, gradient checkpointing, bf16 autocast, 8-bit AdamW stepped by trainer.optim.Stepper (float32 proxies
in buckets, stochastic rounding, the fused back pass). torch's MemTracker counts the bytes of every live tensor;
the peak over both steps is the number (the second has the whole optimizer state from its start). It is an estimate of
torch.cuda.max_memory_allocated: no allocator rounding or kernel workspaces, and CPU attention kernels' shapes.
About five minutes per run on a 2-core CPU.

    python benchmarks/bench_memory.py [--batch 1] [--train-text-encoder]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def meta_module(build):
    """A module built on the meta device in bf16: no storage until to_empty() under fake tensors."""
    with torch.device("meta"):
        return build().to(torch.bfloat16)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--train-text-encoder", action="store_true")
    args = parser.parse_args()
    import bitsandbytes.functional as bnb_functional
    from diffusers import UNet2DConditionModel
    from torch._subclasses.fake_tensor import FakeTensorMode, unset_fake_temporarily
    from torch.distributed._tools.mem_tracker import MemTracker
    from transformers import CLIPTextConfig, CLIPTextModel

    from trainer import optim
    from trainer.models import BUNDLED_SD15

    make_map = bnb_functional.create_dynamic_map  # bitsandbytes computes its quantisation map from real numbers

    def real_map(*a, **kw):
        with unset_fake_temporarily():
            return make_map(*a, **kw)
    bnb_functional.create_dynamic_map = real_map

    started = time.time()
    b = args.batch
    unet = meta_module(lambda: UNet2DConditionModel.from_config(
        UNet2DConditionModel.load_config(BUNDLED_SD15 / "unet")))
    te = None
    if args.train_text_encoder:
        te = meta_module(lambda: CLIPTextModel(CLIPTextConfig.from_pretrained(BUNDLED_SD15 / "text_encoder")))
    with FakeTensorMode(allow_non_fake_inputs=True):
        unet = unet.to_empty(device="cpu").train()
        unet.enable_gradient_checkpointing()
        groups = [{"params": list(unet.parameters()), "lr": 1e-6}]
        if te is not None:
            te = te.to_empty(device="cpu").train()
            te.gradient_checkpointing_enable()
            groups.append({"params": list(te.parameters()), "lr": 1e-6})
        stepper = optim.Stepper("adamw8bit", groups, 1e-6, 1e-2, master_weights=True, fused_backward=True)
        tracker = MemTracker()
        tracker.track_external(*(m for m in (unet, te, stepper.optimizer) if m is not None))
        with tracker:
            for step in range(2):
                noisy, noise = torch.randn(b, 4, 64, 64), torch.randn(b, 4, 64, 64)
                timesteps = torch.randint(0, 1000, (b,))
                with torch.autocast("cpu", torch.bfloat16):
                    if te is not None:
                        hidden = te(torch.randint(0, 49408, (b, 77)))[0]
                    else:  # cached text embeddings
                        hidden = torch.randn(b, 77, 768)
                    pred = unet(noisy.to(torch.bfloat16), timesteps, hidden.to(torch.bfloat16)).sample
                loss = torch.nn.functional.mse_loss(pred.float(), noise)
                loss.backward()  # the Stepper's hooks step full buckets during it
                stepper.step_bucket()  # the last one (Stepper.step would read the loss, which fake tensors lack)
                if step == 0:
                    tracker.reset_mod_stats()
        peak = tracker.get_tracker_snapshot("peak")
    (cats,) = peak.values()
    result = {"batch": b, "train_text_encoder": args.train_text_encoder,
              "peak_gib": round(cats["Total"] / 2**30, 3),
              "by_kind_gib": {getattr(k, "value", str(k)): round(v / 2**30, 3) for k, v in cats.items()
                              if k != "Total"},
              "seconds": round(time.time() - started)}
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
