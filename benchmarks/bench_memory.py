"""Peak memory of one low-VRAM training step on full SD 1.5 shapes, estimated without a GPU.

The UNet (and with --train-text-encoder the CLIP text encoder) is built with fake tensors (shapes and dtypes, no
data: torch's FakeTensorMode) and trained for two steps; torch's MemTracker counts the bytes of every live tensor;
the peak over both steps is the number (the second has the whole optimizer state from its start). It is an estimate
of torch.cuda.max_memory_allocated: no allocator rounding or kernel workspaces, CPU autocast's op lists and CPU
attention kernels' shapes. Several minutes per run on a 2-core CPU.

--method full (the default) trains as presets/sd15_finetune_lowvram.json does: bf16 weights, gradient
checkpointing, bf16 autocast, 8-bit AdamW stepped by trainer.optim.Stepper (float32 proxies in buckets,
stochastic rounding, the fused back pass).

--method lora trains as trainer/training_model.py does for training.method "lora": the base UNet frozen in bf16
(the frozen dtype under bf16 mixed precision), trainer.lora's adapter (rank --rank, alpha --alpha, on the
attention, feed-forward and proj_in/proj_out layers of the transformer blocks, no convolutions) in float32,
bf16 autocast, float32 inputs (step.py casts them to the weight dtype, float32 for a LoRA), the optimizer over the
adapter only through a plain Stepper (weight_dtype float32: no master weights, no fused back pass): torch's fused
AdamW by default, its loss reads deferred as on a GPU, or --optimizer adamw8bit.

    python benchmarks/bench_memory.py [--method full|lora] [--rank 16] [--alpha 8] [--batch 1]
        [--optimizer adamw|adamw8bit] [--no-checkpointing] [--train-text-encoder]

--real DEVICE runs the real trainer instead (trainer.loop.train through trainer.bench.seachange_run) with the same
settings on random-weight SD 1.5 (or --model tiny), and reports torch.cuda.max_memory_allocated from the first
training step on: benchmarks/gpu_bench.sh runs it for a LoRA on the GPU.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FULL_OPTIMIZER = "adamw8bit"  # the full fine-tune's optimizer, as the low-VRAM preset's
LORA_LEARNING_RATE = 1e-4


def meta_module(build):
    """A module built on the meta device in bf16: no storage until to_empty() under fake tensors."""
    with torch.device("meta"):
        return build().to(torch.bfloat16)


def add_lora_on_meta(model: torch.nn.Module, part: str, rank: int, alpha: float) -> int:
    """Put trainer.lora's adapter (kind lora, no conv rank, no dropout) on `model` while it is still on the meta
    device, as training_model.add_lora puts it on a loaded model: the base weights frozen, the adapter float32
    and trainable. On the meta device PEFT's new layers are meta tensors too (their initialisation a no-op), and
    to_empty() under FakeTensorMode then makes them fake tensors with the rest of the model. Returns the adapter's parameter count. Raises InputError when `model` has no layer a LoRA
    adapts."""
    from trainer import lora
    specs = lora.target_layers(model, part, 0, rank, alpha, 1.0)
    lora.add_adapter(model, part, "lora", specs, 0.0)
    return sum(p.numel() for p in lora.adapter_parameters(model))


@contextlib.contextmanager
def real_quantisation_maps():
    """bitsandbytes computes its 8-bit quantisation map from real numbers: while inside, its create_dynamic_map
    runs outside fake-tensor mode (restored on exit)."""
    import bitsandbytes.functional as bnb_functional
    from torch._subclasses.fake_tensor import unset_fake_temporarily
    make_map = bnb_functional.create_dynamic_map

    def real_map(*a, **kw):
        with unset_fake_temporarily():
            return make_map(*a, **kw)
    bnb_functional.create_dynamic_map = real_map
    try:
        yield
    finally:
        bnb_functional.create_dynamic_map = make_map


def finish_step(stepper, loss: torch.Tensor) -> None:
    """What optim.Stepper.step does once the step's loss is known to be finite, without reading it back (a fake
    tensor holds no value): deferred reads step as they are (the optimizer checks the loss on the device); the
    fused back pass steps its last bucket; otherwise the optimizer steps. Gradients are freed after."""
    if stepper.deferred:
        stepper.step(loss.detach().float())
        return
    if stepper.fused_backward:
        stepper.step_bucket()  # full buckets were stepped by the Stepper's hooks during the back pass
    else:
        stepper.prepared_optimizer.step()
    stepper.prepared_optimizer.zero_grad(set_to_none=True)


class _NoHook:
    def remove(self) -> None:
        pass


def frozen_aware_tracker():
    """A torch MemTracker that also works on a model with frozen weights. MemTracker puts a gradient hook on
    every parameter a module's forward sees, which raises for one that does not require gradients; this one marks
    the frozen parameters as hooked already (in its private hook table, with handles whose remove() does
    nothing), so they are still counted as parameters, and gradients are tracked on the trained ones."""
    from torch.distributed._tools.mem_tracker import MemTracker

    class FrozenAwareMemTracker(MemTracker):
        def _track_module_params_and_buffers(self, module, install_grad_hooks=True):
            for param in module.parameters():
                if not param.requires_grad and param not in self._param_to_grad_hook_handles:
                    self._param_to_grad_hook_handles[param] = (_NoHook(), _NoHook())
            return super()._track_module_params_and_buffers(module, install_grad_hooks)
    return FrozenAwareMemTracker()


def gib(n: float) -> float:
    return round(n / 2**30, 3)


def estimate(unet_config: dict, *, method: str = "full", batch: int = 1, latent_side: int = 64,
             optimizer: str | None = None, rank: int = 16, alpha: float = 8.0, checkpointing: bool = True,
             text_encoder_config=None, steps: int = 2) -> dict:
    """The peak over `steps` training steps (2 or more: the second has the whole optimizer state from its
    start) of the UNet built from `unet_config` (a diffusers
    UNet2DConditionModel config dict) on fake tensors, at `batch` latents of latent_side x latent_side
    (64: 512 px for SD 1.5's VAE), trained as `method` says (module docstring). text_encoder_config: a
    transformers CLIPTextConfig to train the text encoder too (its weights, or its LoRA), else cached text
    embeddings. optimizer: "adamw" or "adamw8bit" (None: adamw8bit for full, adamw for lora).

    Returns a dict: the settings, "peak_gib" (GiB, 2**30 bytes) and "by_kind_gib" (MemTracker's categories at
    the peak: Parameter, Buffer, Gradient, Activation, Temp, Optstate, Other), "by_kind_bytes" (the same in
    bytes, with "Total"), "trained_parameters" and
    "frozen_parameters" (counts). Raises ValueError for an unknown method or optimizer."""
    from diffusers import UNet2DConditionModel
    from torch._subclasses.fake_tensor import FakeTensorMode
    from transformers import CLIPTextModel

    from trainer import optim
    if method not in ("full", "lora"):
        raise ValueError(f"method: full or lora, not {method!r}")
    optimizer = optimizer or (FULL_OPTIMIZER if method == "full" else "adamw")
    if optimizer not in ("adamw", "adamw8bit"):
        raise ValueError(f"optimizer: adamw or adamw8bit, not {optimizer!r}")
    if steps < 2:
        raise ValueError("steps: at least 2 (the second holds the optimizer state from its start)")
    lora = method == "lora"
    unet = meta_module(lambda: UNet2DConditionModel.from_config(unet_config))
    te = None
    if text_encoder_config is not None:
        te = meta_module(lambda: CLIPTextModel(text_encoder_config))
    if lora:
        add_lora_on_meta(unet, "unet", rank, alpha)
        if te is not None:
            add_lora_on_meta(te, "text_encoder", rank, alpha)
    maps = real_quantisation_maps() if optimizer == "adamw8bit" else contextlib.nullcontext()
    with maps, FakeTensorMode(allow_non_fake_inputs=True):
        unet = unet.to_empty(device="cpu").train()
        if checkpointing:
            unet.enable_gradient_checkpointing()
        lr = LORA_LEARNING_RATE if lora else 1e-6
        groups = [{"params": [p for p in unet.parameters() if p.requires_grad], "lr": lr}]
        if te is not None:
            te = te.to_empty(device="cpu").train()
            if checkpointing and lora:  # not reentrant, as training_model does (a LoRA's inputs are frozen)
                te.gradient_checkpointing_enable({"use_reentrant": False})
            elif checkpointing:  # as this benchmark always did for a full fine-tune
                te.gradient_checkpointing_enable()
            groups.append({"params": [p for p in te.parameters() if p.requires_grad], "lr": lr})
        if lora:  # make_stepper for weight_dtype float32 on a GPU: plain steps, loss reads deferred where it can
            stepper = optim.Stepper(optimizer, groups, lr, 1e-2, defer_loss_reads=True)
            input_dtype = torch.float32  # step.py: the UNet's inputs in the weight dtype
        else:
            stepper = optim.Stepper(optimizer, groups, lr, 1e-2, master_weights=True, fused_backward=True)
            input_dtype = torch.bfloat16
        trained = sum(p.numel() for g in groups for p in g["params"])
        frozen = sum(p.numel() for m in (unet, te) if m is not None for p in m.parameters()) - trained
        tracker = frozen_aware_tracker()
        tracker.track_external(*(m for m in (unet, te, stepper.optimizer) if m is not None))
        channels, width = unet_config["in_channels"], unet_config["cross_attention_dim"]
        with tracker:
            for step in range(steps):
                noisy = torch.randn(batch, channels, latent_side, latent_side)
                noise = torch.randn(batch, channels, latent_side, latent_side)
                timesteps = torch.randint(0, 1000, (batch,))
                with torch.autocast("cpu", torch.bfloat16):
                    if te is not None:
                        hidden = te(torch.randint(0, te.config.vocab_size, (batch, 77)))[0]
                    else:  # cached text embeddings
                        hidden = torch.randn(batch, 77, width)
                    pred = unet(noisy.to(input_dtype), timesteps, hidden.to(input_dtype)).sample
                loss = torch.nn.functional.mse_loss(pred.float(), noise)
                loss.backward()  # a full fine-tune's Stepper steps full buckets during it
                finish_step(stepper, loss)
                if step == 0:
                    tracker.reset_mod_stats()
        peak = tracker.get_tracker_snapshot("peak")
    (cats,) = peak.values()
    return {"method": method, "batch": batch, "latent_side": latent_side, "optimizer": optimizer,
            "checkpointing": checkpointing, "train_text_encoder": te is not None,
            **({"rank": rank, "alpha": alpha} if lora else {}),
            "trained_parameters": trained, "frozen_parameters": frozen,
            "peak_gib": gib(cats["Total"]),
            "by_kind_gib": {getattr(k, "value", str(k)): gib(v) for k, v in cats.items() if k != "Total"},
            "by_kind_bytes": {getattr(k, "value", str(k)): int(v) for k, v in cats.items()}}


def bench_preset(method: str, optimizer: str | None, checkpointing: bool, rank: int, alpha: float,
                 train_text_encoder: bool) -> dict:
    """The preset the --real run trains, as JSON: presets/sd15_finetune_lowvram.json, and for method lora the
    LoRA settings that the estimate models (weight_dtype float32, so that the float32 adapter gets no bf16
    master-weight rounding; no fused back pass, which config refuses for a LoRA; learning rate 1e-4)."""
    from trainer.bench import PRESETS_DIR
    preset = json.loads((PRESETS_DIR / "sd15_finetune_lowvram.json").read_text())
    training = preset["training"]
    training.update(gradient_checkpointing=checkpointing, train_text_encoder=train_text_encoder)
    if method == "lora":
        training.update(method="lora", lora_type="lora", lora_rank=rank, lora_alpha=alpha, lora_conv_rank=0,
                        weight_dtype="float32", fused_backward=False, learning_rate=LORA_LEARNING_RATE,
                        optimizer=optimizer or "adamw")
    elif optimizer:
        training["optimizer"] = optimizer
    return preset


def real_run(device: str, model: str, preset: dict, batch: int, steps: int, work: Path | None = None) -> dict:
    """Train `preset` (bench_preset) with the real training loop (trainer.bench.seachange_run: model, data,
    batch and length replaced) on `device` with a random-weight `model` ("sd15" at 512 px, "tiny" at 64 px)
    for `steps` steps (8 or more), in folder `work` (None: a new temporary one). Returns seachange_run's dict: img/s, and on a GPU "peak_gib",
    torch.cuda.max_memory_allocated from the first step on (None on a CPU). Raises what the run raises."""
    from trainer import bench
    from trainer.demo import save_diffusers_folder
    size = 512 if model == "sd15" else 64
    work = Path(work or tempfile.mkdtemp(prefix="seachange-bench-memory-"))
    model_dir = save_diffusers_folder(bench.build_model(model), work / "model")
    data = bench.make_dataset(work / "data", batch * 4, size)
    presets = work / "presets"
    presets.mkdir()
    (presets / "bench_memory.json").write_text(json.dumps(preset, indent=1))
    saved = bench.PRESETS_DIR  # seachange_run reads built-in presets by name from there
    bench.PRESETS_DIR = presets
    try:
        return bench.seachange_run("bench_memory", model_dir, data, work / "run", device, batch, size, steps,
                                   warmup=max(2, steps // 4), window=max(2, steps // 8))
    finally:
        bench.PRESETS_DIR = saved


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", choices=("full", "lora"), default="full")
    parser.add_argument("--rank", type=int, default=16, help="LoRA rank (method lora)")
    parser.add_argument("--alpha", type=float, default=8.0, help="LoRA alpha (method lora)")
    parser.add_argument("--optimizer", choices=("adamw", "adamw8bit"), default=None,
                        help="default: adamw8bit for full (the low-VRAM preset's), adamw for lora")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--no-checkpointing", action="store_true", help="gradient checkpointing off")
    parser.add_argument("--train-text-encoder", action="store_true")
    parser.add_argument("--real", choices=("cpu", "cuda"), default=None,
                        help="run the real trainer on this device instead of estimating")
    parser.add_argument("--model", choices=("sd15", "tiny"), default=None,
                        help="with --real: the model (default sd15 on cuda, tiny on cpu)")
    parser.add_argument("--steps", type=int, default=16, help="with --real: training steps")
    args = parser.parse_args()
    from transformers import CLIPTextConfig
    from diffusers import UNet2DConditionModel

    from trainer.models import BUNDLED_SD15
    started = time.time()
    checkpointing = not args.no_checkpointing
    if args.real:
        preset = bench_preset(args.method, args.optimizer, checkpointing, args.rank, args.alpha,
                              args.train_text_encoder)
        model = args.model or ("sd15" if args.real == "cuda" else "tiny")
        result = {"real": args.real, "model": model, "method": args.method, "batch": args.batch,
                  "checkpointing": checkpointing, "training": preset["training"],
                  **real_run(args.real, model, preset, args.batch, args.steps)}
    else:
        te_config = (CLIPTextConfig.from_pretrained(BUNDLED_SD15 / "text_encoder") if args.train_text_encoder
                     else None)
        result = estimate(UNet2DConditionModel.load_config(BUNDLED_SD15 / "unet"), method=args.method,
                          batch=args.batch, optimizer=args.optimizer, rank=args.rank, alpha=args.alpha,
                          checkpointing=checkpointing, text_encoder_config=te_config)
    result["seconds"] = round(time.time() - started)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
