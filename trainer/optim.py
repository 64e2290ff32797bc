"""Optimizers and learning-rate schedules, chosen by name from the preset. No UI here."""
from __future__ import annotations

import contextlib
import io
import math
from typing import Any, Iterable

import torch
from diffusers.optimization import get_scheduler

from trainer.config import LR_SCHEDULERS, OPTIMIZERS, TrainingConfig


def _normalize_groups(param_groups: Iterable[Any]) -> list[dict]:
    """Copy the groups with their params as lists (so devices can be checked); bare tensors make one group."""
    items = list(param_groups)
    if items and isinstance(items[0], torch.Tensor):
        items = [{"params": items}]
    groups = [dict(group, params=list(group["params"])) for group in items]
    if not any(group["params"] for group in groups):
        raise ValueError("the optimizer got no parameters to train")
    return groups


def _device_types(groups: list[dict]) -> set[str]:
    return {p.device.type for group in groups for p in group["params"]}


def make_optimizer(
    name: str,
    param_groups: list[dict],
    lr: float,
    weight_decay: float = 1e-2,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> torch.optim.Optimizer:
    """Build the optimizer called `name` over `param_groups` ([{"params": [...], "lr": optional}, ...]).

    `lr` is the default; a group's own "lr" (e.g. the text encoder's) wins. Choices:
      adamw      torch AdamW (Loshchilov & Hutter 2019), its fused kernel (CUDA and CPU).
      adamw8bit  bitsandbytes AdamW8bit (Dettmers et al. 2022, "8-bit Optimizers via Block-wise Quantization"):
                 8-bit moments for tensors of 4096+ elements; works on CUDA and (bitsandbytes >= 0.49) CPU.
      adafactor  transformers Adafactor (Shazeer & Stern 2018) with a fixed external lr (no relative step).
      lion       Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms"): bitsandbytes on
                 CUDA/CPU, else lion_pytorch. Usually wants a 3-10x smaller lr and larger weight decay than AdamW.
      prodigy    Prodigy (Mishchenko & Defazio 2023), which estimates the step size itself: use lr = 1.0.
                 safeguard_warmup is on, as its authors advise when an LR warmup scales lr early on.
      sgd        SGD with momentum 0.9.
    """
    key = name.lower().strip()
    if key not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose one of: {', '.join(OPTIMIZERS)}")
    groups = _normalize_groups(param_groups)
    devices = _device_types(groups)

    if key == "adamw":
        fused = devices <= {"cuda", "cpu"}  # one kernel for all tensors; it can also skip a step on the device
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, fused=fused)
    if key == "adamw8bit":
        bnb = _import_bitsandbytes("adamw8bit")
        if not devices <= {"cuda", "cpu"}:
            raise ValueError(f"adamw8bit needs a CUDA GPU or the CPU; parameters are on {sorted(devices)}")
        return bnb.optim.AdamW8bit(groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    if key == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(
            groups, lr=lr, weight_decay=weight_decay, scale_parameter=False, relative_step=False, warmup_init=False
        )
    if key == "lion":
        return _make_lion(groups, devices, lr=lr, betas=betas, weight_decay=weight_decay)
    if key == "prodigy":
        from prodigyopt import Prodigy

        with contextlib.redirect_stdout(io.StringIO()):  # it prints "Using decoupled weight decay"
            return Prodigy(
                groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                safeguard_warmup=True,
            )
    return torch.optim.SGD(groups, lr=lr, momentum=0.9, weight_decay=weight_decay)


def _import_bitsandbytes(optimizer_name: str) -> Any:
    try:
        import bitsandbytes
    except ImportError as error:  # a broken or missing install
        raise ValueError(f"{optimizer_name} needs the bitsandbytes package: {error}") from error
    return bitsandbytes


def _make_lion(groups: list[dict], devices: set[str], lr: float, betas, weight_decay: float) -> torch.optim.Optimizer:
    """bitsandbytes' Lion where its kernels run (CUDA, CPU), else the pure-PyTorch lion_pytorch."""
    if devices <= {"cuda", "cpu"}:
        try:
            import bitsandbytes

            return bitsandbytes.optim.Lion(groups, lr=lr, betas=betas, weight_decay=weight_decay)
        except ImportError:
            pass
    from lion_pytorch import Lion

    return Lion(groups, lr=lr, betas=betas, weight_decay=weight_decay)


def make_lr_scheduler(
    name: str,
    optimizer: torch.optim.Optimizer,
    warmup_steps: int,
    total_steps: int,
) -> torch.optim.lr_scheduler.LambdaLR:
    """The diffusers LR schedule called `name`, counted in optimizer steps: call .step() once per optimizer step,
    not per micro-batch.

    Every schedule here warms up linearly from 0 over `warmup_steps`, "constant" included (diffusers' plain
    "constant" ignores warmup, which surprises anyone who set one). "linear", "cosine" and
    "cosine_with_restarts" (one cycle) end at 0, "polynomial" (power 1) at 1e-7.

    accelerate's prepare() wraps a scheduler so that each .step() advances it once per process; if you prepare it,
    pass warmup and total steps multiplied by the number of processes, as diffusers' training scripts do.
    """
    key = name.lower().strip()
    if key not in LR_SCHEDULERS:
        raise ValueError(f"unknown LR scheduler {name!r}; choose one of: {', '.join(LR_SCHEDULERS)}")
    if total_steps < 1:
        raise ValueError(f"total_steps must be at least 1, got {total_steps}")
    warmup_steps = max(0, min(int(warmup_steps), int(total_steps)))
    if key == "constant" and warmup_steps > 0:
        key = "constant_with_warmup"
    return get_scheduler(key, optimizer, num_warmup_steps=warmup_steps, num_training_steps=int(total_steps))


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    """The first param group's learning rate; for Prodigy the effective one, d * lr."""
    group = optimizer.param_groups[0]
    lr = float(group["lr"])
    if "d" in group and "d0" in group:  # Prodigy keeps its step-size estimate d beside lr
        return float(group["d"]) * lr
    return lr


def make_stepper(training: TrainingConfig, param_groups: list[dict], accelerator,
                 defer_loss_reads: bool | None = None) -> "Stepper":
    """The Stepper the preset's training section (config.TrainingConfig `training`) asks for: its optimizer, learning
    rate and weight decay; master weights for bf16 weights with stochastic rounding; the fused back pass; gradient
    clipping. defer_loss_reads: None reads losses back in batches on a GPU only (see Stepper)."""
    return Stepper(training.optimizer, param_groups, training.learning_rate, training.weight_decay,
                   accelerator=accelerator,
                   master_weights=(training.weight_dtype == "bfloat16" and training.stochastic_rounding
                                   and training.method == "full"),  # adapters and words train in float32
                   fused_backward=training.fused_backward, max_grad_norm=training.max_grad_norm,
                   defer_loss_reads=accelerator.device.type == "cuda" if defer_loss_reads is None else defer_loss_reads)


# ---- bf16 weights with stochastic rounding, and the fused back pass ----------------------------------------

@torch.no_grad()
def stochastic_round_(target: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """Write float32 `source` into bfloat16 `target`, rounding up or down at random with the probability that
    makes the result unbiased (E[target] = source), on the tensors' device. Round-to-nearest would drop every
    update smaller than half a bf16 step (about 0.4% of the weight), which is most fine-tuning updates
    (Zamirai et al. 2020, "Revisiting BFloat16 Training"). bf16 is the upper 16 bits of a float32: add random
    low bits, then truncate them. One int32 temporary the size of `source`."""
    bits = source.detach().to(torch.float32).contiguous().view(torch.int32)
    noisy = torch.randint_like(bits, 0, 1 << 16)
    noisy.add_(bits).bitwise_and_(-65536)
    target.copy_(noisy.view(torch.float32))
    return target


class Stepper:
    """Owns the optimizer and steps it the way the preset asks, behind one interface: `backward(loss, scale)` for
    each micro-batch, then `step(step_loss)` once per optimizer step. The modes:

    - plain: the optimizer's own step after the back pass, all parameters at once (fused where it can be);
    - deferred loss reads (`defer_loss_reads`, on a GPU): the step's loss is not read back to decide whether to
      step; the optimizer skips a non-finite step on the device (torch's fused AdamW and SGD take the grad
      scaler's found_inf flag), so the GPU never waits for the host. Only where the optimizer can do that, without
      master weights, the fused back pass or the fp16 grad scaler; otherwise the loss is read every step;
    - master weights (`master_weights`, bf16 weights with stochastic rounding): the optimizer works on float32
      proxies that exist only while a bucket of parameters is stepped; its state lives with the proxies (float32,
      or 8-bit for adamw8bit); the new weights are rounded stochastically into the bf16 parameters;
    - fused back pass (`fused_backward`): parameters are stepped during the back pass as their gradients
      complete, and their gradients freed, so the full set of gradients never exists. A non-finite loss is not
      backpropagated at all, so that it never reaches the weights.

    Master weights and the fused back pass step parameters in buckets of about BUCKET elements: one optimizer
    call per bucket (one multi-tensor kernel for torch's AdamW), and for master weights one float32 copy of the
    bucket's weights and gradients and one stochastic rounding over it, so that the per-parameter cost of
    launching small kernels does not eat the step time. A bucket also bounds the memory that waits: about BUCKET
    gradients during the fused back pass, and 10 bytes per element of float32 temporaries while a bucket of
    master weights steps. Per-bucket calls swap the optimizer's param_groups for the bucket's parameters, so every
    optimizer (torch, bitsandbytes, transformers) works unchanged and its state stays keyed by the same tensors.

    A step whose loss is not finite (NaN or inf) never reaches the weights: its gradients are dropped (or, when
    deferred, the optimizer skips it on the device). Gradients are clipped to `max_grad_norm` (0: off) before a
    step, except with the fused back pass, which steps before the whole gradient is known (config refuses it).
    `accelerator` (an accelerate.Accelerator) does the back pass, clipping and wraps the optimizer (mixed
    precision's grad scaler, several processes); without one, plain torch does.
    """

    BUCKET = 1 << 24  # elements; about the largest single weight of SD 1.5's UNet (14.7M)

    def __init__(self, name: str, param_groups: list[dict], lr: float, weight_decay: float, *,
                 master_weights: bool = False, fused_backward: bool = False, max_grad_norm: float = 0.0,
                 accelerator=None, defer_loss_reads: bool = False):
        """name: an optimizer of config.OPTIMIZERS; param_groups: [{"params": [...], "lr": optional}, ...] (a
        group's own lr wins over `lr`). Raises ValueError for an unknown optimizer or no parameters."""
        self.master_weights, self.fused_backward, self.max_grad_norm = master_weights, fused_backward, max_grad_norm
        self.accelerator = accelerator
        self.params = [p for g in param_groups for p in g["params"]]
        self.empty = {p.device: torch.empty(0, device=p.device) for p in self.params}
        if master_weights:
            self.proxies = {p: torch.nn.Parameter(self.empty[p.device]) for p in self.params}
            groups = [dict(g, params=[self.proxies[p] for p in g["params"]]) for g in param_groups]
        else:
            self.proxies = {}
            groups = param_groups
        self.optimizer = make_optimizer(name, groups, lr, weight_decay=weight_decay)  # the library's own
        # What steps and what backups save: accelerate's wrapper (the fp16 grad scaler) or the optimizer itself.
        self.prepared_optimizer = accelerator.prepare_optimizer(self.optimizer) if accelerator else self.optimizer
        self.group_of = {p: index for index, group in enumerate(param_groups) for p in group["params"]}
        self.bucket: list[torch.Tensor] = []
        self.bucket_size = 0
        self.deferred = (defer_loss_reads and getattr(self.optimizer, "_step_supports_amp_scaling", False)
                         and not master_weights and not fused_backward
                         and (accelerator is None or accelerator.scaler is None))
        if fused_backward:
            for p in self.params:
                p.register_post_accumulate_grad_hook(self.add_to_bucket)

    # -- the interface: a back pass per micro-batch, a step per optimizer step ------------------------------

    def backward(self, loss: torch.Tensor, scale: float) -> torch.Tensor:
        """Backpropagate `loss * scale` (a 0-d tensor; scale: the micro-batch's share of the step's samples, so
        the accumulated gradient is the mean over them). Returns the scaled loss, detached, float32, on the device.
        With the fused back pass a non-finite loss is not backpropagated (that would step the weights with it)."""
        scaled = loss.detach().float() * scale
        if not self.fused_backward or torch.isfinite(scaled):
            if self.accelerator is not None:
                self.accelerator.backward(loss * scale)
            else:
                (loss * scale).backward()
        return scaled

    def step(self, step_loss: torch.Tensor) -> tuple[float | torch.Tensor, bool]:
        """Finish the optimizer step whose micro-batches were backpropagated; `step_loss` is its 0-d loss on the
        device. Returns (the loss: a float, or the same tensor unread when reads are deferred; whether the weights
        were stepped: False for a non-finite loss read here, True when deferred, where the optimizer itself skips
        a non-finite step on the device). Gradients are gone afterwards either way."""
        if self.deferred:
            self.optimizer.grad_scale, self.optimizer.found_inf = None, (~torch.isfinite(step_loss)).float()
            loss, finite = step_loss, True
        else:
            loss = step_loss.item()
            finite = math.isfinite(loss)
        if not finite:
            self.zero_grad()
            return loss, False
        if self.fused_backward:
            self.step_bucket()  # full buckets were stepped during the back pass; now the last one
        else:
            if self.max_grad_norm > 0:
                self._clip()
            if self.master_weights:
                for p in self.params:
                    if p.grad is not None:
                        self.add_to_bucket(p)
                self.step_bucket()
            else:
                self.prepared_optimizer.step()
        self.prepared_optimizer.zero_grad(set_to_none=True)
        return loss, True

    def zero_grad(self) -> None:
        """Drop every gradient (and a bucket that waits to be stepped)."""
        for p in self.params:
            p.grad = None
        self.bucket, self.bucket_size = [], 0

    # -- clipping and buckets -----------------------------------------------------------------------

    def _clip(self) -> None:
        if self.accelerator is not None:  # unscales fp16 gradients first; the same norm on every process
            self.accelerator.clip_grad_norm_(self.params, self.max_grad_norm)
        else:
            torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)

    def add_to_bucket(self, p: torch.Tensor) -> None:
        """Put `p` (its gradient complete) in the bucket; step the bucket when it is full. A bucket holds
        weights of one device."""
        if self.bucket and (self.bucket_size + p.numel() > self.BUCKET or p.device != self.bucket[0].device):
            self.step_bucket()
        self.bucket.append(p)
        self.bucket_size += p.numel()
        if self.bucket_size >= self.BUCKET:
            self.step_bucket()

    def step_bucket(self) -> None:
        """Step what is in the bucket now (Stepper.step does it; a caller stepping buckets itself, as the
        benchmarks do, calls it after add_to_bucket)."""
        bucket, self.bucket, self.bucket_size = self.bucket, [], 0
        self._run(bucket)

    @torch.no_grad()
    def _run(self, params: list[torch.Tensor]) -> None:
        """One optimizer call over `params` (their grads set, all on one device); grads are freed afterwards."""
        if not params:
            return
        opt = self.optimizer
        saved = opt.param_groups
        by_group: dict[int, list] = {}
        for p in params:
            by_group.setdefault(self.group_of[p], []).append(p)
        if self.master_weights:  # one float32 copy of the bucket's weights and one of its gradients; proxies view them
            weights = torch.cat([p.detach().reshape(-1) for p in params]).float()
            grads = torch.cat([p.grad.reshape(-1) for p in params]).float()
            sizes = [p.numel() for p in params]
            for p, w, g in zip(params, weights.split(sizes), grads.split(sizes)):
                proxy = self.proxies[p]  # shaped: Adafactor factors its state by the weight's shape
                proxy.data, proxy.grad = w.view(p.shape), g.view(p.shape)
            del grads
        opt.param_groups = [dict(saved[i], params=[self.proxies[p] if self.master_weights else p for p in ps])
                            for i, ps in by_group.items()]
        try:
            opt.step()
        finally:
            opt.param_groups = saved
        if self.master_weights:
            for p in params:
                proxy = self.proxies[p]
                proxy.data, proxy.grad = self.empty[p.device], None
            rounded = stochastic_round_(torch.empty_like(weights, dtype=torch.bfloat16), weights)
            del weights
            torch._foreach_copy_([p.data for p in params],
                                 [r.view(p.shape) for r, p in zip(rounded.split(sizes), params)])
        for p in params:
            p.grad = None
