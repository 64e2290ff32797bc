"""Optimizers and learning-rate schedules, chosen by name from the preset. No UI here."""
from __future__ import annotations

import contextlib
import io
import math
from typing import Any, Iterable, Iterator

import schedulefree
import torch
from diffusers.optimization import get_scheduler

from trainer.config import (LR_SCHEDULERS, OPTIMIZER_DEFAULTS, OPTIMIZER_FIELDS, OPTIMIZERS, SCHEDULE_FREE,
                            WHOLE_STEP_OPTIMIZERS, TrainingConfig, optimizer_numbers)


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
    betas: tuple[float, ...] | None = None,
    eps: float | tuple[float, ...] | None = None,
    *,
    d_coef: float = 1.0,
    d0: float = 1e-6,
    warmup_steps: int = 0,
    r: float = 0.0,
    weight_lr_power: float = 2.0,
    alpha: float = 5.0,
    t_alpha_beta3: int = 0,
) -> Any:
    """Build the optimizer called `name` over `param_groups` ([{"params": [...], "lr": optional}, ...]).

    `lr` is the default; a group's own "lr" (e.g. the text encoder's) wins. Weight decay is decoupled (AdamW's)
    for every optimizer that has one. `betas` and `eps`: None for the optimizer's own (config.OPTIMIZER_DEFAULTS);
    `eps` a number, or came's pair (eps1, eps2). The other settings are read by the optimizers named below, under
    their libraries' names. Choices:
      adamw      torch AdamW (Loshchilov & Hutter 2019), its fused kernel (CUDA and CPU).
      adamw8bit  bitsandbytes AdamW8bit (Dettmers et al. 2022, "8-bit Optimizers via Block-wise Quantization"):
                 8-bit moments for tensors of 4096+ elements; works on CUDA and (bitsandbytes >= 0.49) CPU.
      adafactor  transformers Adafactor (Shazeer & Stern 2018) with a fixed external lr (no relative step).
      lion       Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms"): bitsandbytes on
                 CUDA/CPU, else lion_pytorch. Usually wants a 3-10x smaller lr and larger weight decay than AdamW.
      prodigy    Prodigy (Mishchenko & Defazio 2023), which estimates the step size itself: use lr = 1.0.
                 safeguard_warmup is on, as its authors advise when an LR warmup scales lr early on. d_coef
                 multiplies its estimate d, d0 is where d starts.
      sgd        SGD with momentum 0.9.
      adamw_schedulefree  schedulefree's AdamWScheduleFree (Defazio et al. 2024, "The Road Less Scheduled"): no
                 decaying schedule; it steps a point y between its average x and its base sequence z, and x is
                 what samples and saves use (Stepper.evaluation_weights). warmup_steps: its own linear warmup; r and
                 weight_lr_power weigh the average. Returned in train mode (ready to step).
      prodigy_schedulefree  Prodigy as the base optimizer of schedulefree's ScheduleFreeWrapper (its swap made
                 layout-proof: ScheduleFreeWrapper below), which reads Prodigy's d (the average weighs each step
                 by (lr * d) ** weight_lr_power): beta1 is the wrapper's momentum and Prodigy's own beta1 is 0
                 (the wrapper's interpolation replaces it, which its README allows); weight decay is Prodigy's, at z
                 (the wrapper's weight_decay_at_y scales by lr alone, 1.0 here, without d). Use lr = 1.0. Returned
                 in train mode. Not a torch.optim.Optimizer: its schedule is made on its `base`
                 (make_lr_scheduler does that).
      came       pytorch-optimizer's CAME (Luo et al. 2023, "CAME: Confidence-guided Adaptive Memory Efficient
                 Optimization"): Adafactor's factored second moments plus a confidence-weighted momentum; three
                 betas, two eps (eps1, eps2).
      adopt      pytorch-optimizer's ADOPT (Taniguchi et al. 2024, "ADOPT: Modified Adam Can Converge with Any
                 beta2 with the Optimal Rate"): the gradient is normalised by the previous second moment, so its
                 first step only measures it (the weights move from the second step on).
      ademamix   pytorch-optimizer's AdEMAMix (Pagliardini et al. 2024, "The AdEMAMix Optimizer: Better, Faster,
                 Older"): Adam plus a slow momentum (the third beta, beta3) weighted by alpha; t_alpha_beta3 > 0
                 warms alpha up from 0 and beta3 from beta1 over that many steps.
    Raises ValueError for an unknown name or no parameters.
    """
    key = name.lower().strip()
    if key not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose one of: {', '.join(OPTIMIZERS)}")
    groups = _normalize_groups(param_groups)
    devices = _device_types(groups)
    own = OPTIMIZER_DEFAULTS.get(key, {})
    betas = tuple(betas) if betas else own.get("betas", (0.9, 0.999))
    eps_values = own.get("eps", (1e-8,)) if eps is None else tuple(eps) if isinstance(eps, (tuple, list)) else (eps,)

    if key == "adamw":
        fused = devices <= {"cuda", "cpu"}  # one kernel for all tensors; it can also skip a step on the device
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps_values[0], weight_decay=weight_decay,
                                 fused=fused)
    if key == "adamw8bit":
        bnb = _import_bitsandbytes("adamw8bit")
        if not devices <= {"cuda", "cpu"}:
            raise ValueError(f"adamw8bit needs a CUDA GPU or the CPU; parameters are on {sorted(devices)}")
        return bnb.optim.AdamW8bit(groups, lr=lr, betas=betas, eps=eps_values[0], weight_decay=weight_decay)
    if key == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(
            groups, lr=lr, weight_decay=weight_decay, scale_parameter=False, relative_step=False, warmup_init=False
        )
    if key == "lion":
        return _make_lion(groups, devices, lr=lr, betas=betas, weight_decay=weight_decay)
    if key == "prodigy":
        return _make_prodigy(groups, lr, betas, eps_values[0], weight_decay, d_coef, d0)
    if key == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9, weight_decay=weight_decay)
    if key == "adamw_schedulefree":
        optimizer = schedulefree.AdamWScheduleFree(groups, lr=lr, betas=betas, eps=eps_values[0],
                                                   weight_decay=weight_decay, warmup_steps=int(warmup_steps), r=r,
                                                   weight_lr_power=weight_lr_power)
        optimizer.train()
        return optimizer
    if key == "prodigy_schedulefree":
        base = _make_prodigy(groups, lr, (0.0, betas[1]), eps_values[0], weight_decay, d_coef, d0)
        optimizer = ScheduleFreeWrapper(base, momentum=betas[0], weight_decay_at_y=0.0, r=r,
                                        weight_lr_power=weight_lr_power)
        optimizer.train()
        return optimizer
    import pytorch_optimizer

    if key == "came":
        return pytorch_optimizer.CAME(groups, lr=lr, betas=betas, weight_decay=weight_decay, weight_decouple=True,
                                      eps1=eps_values[0], eps2=eps_values[-1])
    if key == "adopt":
        return pytorch_optimizer.ADOPT(groups, lr=lr, betas=betas, weight_decay=weight_decay, weight_decouple=True,
                                       eps=eps_values[0])
    return pytorch_optimizer.AdEMAMix(groups, lr=lr, betas=betas, weight_decay=weight_decay, weight_decouple=True,
                                      alpha=alpha, t_alpha_beta3=t_alpha_beta3 or None, eps=eps_values[0])


class ScheduleFreeWrapper(schedulefree.ScheduleFreeWrapper):
    """schedulefree's ScheduleFreeWrapper, whose swap of a weight with its z buffer (an xor of their bytes, no
    temporary) also works for weights whose last dimension is not the innermost in memory, as channels-last
    convolutions (the UNet's on a GPU) are: the swap runs over both tensors' dimensions in memory order, which is
    the same element pairing. Tensors of different layouts (or none) swap through one temporary copy."""

    @staticmethod
    def swap(x: torch.Tensor, y: torch.Tensor) -> None:
        order = sorted(range(x.dim()), key=x.stride, reverse=True)
        xs, ys = x.permute(order), y.permute(order)
        if x.dim() and x.stride() == y.stride() and xs.is_contiguous() and ys.is_contiguous():
            schedulefree.ScheduleFreeWrapper.swap(xs, ys)
        else:
            kept = x.clone()
            x.copy_(y)
            y.copy_(kept)


def _make_prodigy(groups: list[dict], lr: float, betas, eps: float, weight_decay: float, d_coef: float,
                  d0: float) -> torch.optim.Optimizer:
    from prodigyopt import Prodigy

    with contextlib.redirect_stdout(io.StringIO()):  # it prints "Using decoupled weight decay"
        return Prodigy(groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, d_coef=d_coef, d0=d0,
                       safeguard_warmup=True)


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
    optimizer: Any,
    warmup_steps: int,
    total_steps: int,
) -> torch.optim.lr_scheduler.LambdaLR:
    """The diffusers LR schedule called `name`, counted in optimizer steps: call .step() once per optimizer step,
    not per micro-batch.

    Every schedule here warms up linearly from 0 over `warmup_steps`, "constant" included (diffusers' plain
    "constant" ignores warmup, which surprises anyone who set one). "linear", "cosine" and
    "cosine_with_restarts" (one cycle) end at 0, "polynomial" (power 1) at 1e-7. The schedule-free optimizers take
    "constant" only (ValueError otherwise) and warm up as schedulefree's AdamW does, (step + 1) / warmup_steps,
    never from 0: schedule-free AdamW itself (make_stepper gives it the same warmup steps), so its schedule has
    none; schedulefree's wrapper (prodigy_schedulefree) through a schedule on its base optimizer, whose
    param_groups it shares (the wrapper weighs each step by its lr ** weight_lr_power over their sum, which a first
    step at lr 0 would make 0 / 0).

    accelerate's prepare() wraps a scheduler so that each .step() advances it once per process; if you prepare it,
    pass warmup and total steps multiplied by the number of processes, as diffusers' training scripts do.
    """
    key = name.lower().strip()
    if key not in LR_SCHEDULERS:
        raise ValueError(f"unknown LR scheduler {name!r}; choose one of: {', '.join(LR_SCHEDULERS)}")
    if total_steps < 1:
        raise ValueError(f"total_steps must be at least 1, got {total_steps}")
    warmup_steps = max(0, min(int(warmup_steps), int(total_steps)))
    schedule_free = isinstance(optimizer, (schedulefree.ScheduleFreeWrapper, schedulefree.AdamWScheduleFree))
    if schedule_free and key not in ("constant", "constant_with_warmup"):
        raise ValueError(f"a schedule-free optimizer needs a constant schedule, not {name!r}")
    if isinstance(optimizer, schedulefree.AdamWScheduleFree):  # it warms up itself
        warmup_steps = 0
    elif isinstance(optimizer, schedulefree.ScheduleFreeWrapper):
        ramp = warmup_steps or 1
        return torch.optim.lr_scheduler.LambdaLR(optimizer.base, lambda step: min(1.0, (step + 1) / ramp))
    if key == "constant" and warmup_steps > 0:
        key = "constant_with_warmup"
    return get_scheduler(key, optimizer, num_warmup_steps=warmup_steps, num_training_steps=int(total_steps))


def current_lr(optimizer: Any) -> float:
    """The first param group's learning rate as it steps: for Prodigy (prodigy_schedulefree too) the effective
    one, d * lr; for schedule-free AdamW the one of its own warmup."""
    group = optimizer.param_groups[0]
    lr = float(group["lr"])
    if "d" in group and "d0" in group:  # Prodigy keeps its step-size estimate d beside lr
        return float(group["d"]) * lr
    if group.get("k", 0) > 0 and "scheduled_lr" in group:  # AdamWScheduleFree: lr times its warmup, last step
        return float(group["scheduled_lr"])
    return lr


def optimizer_settings(training: TrainingConfig) -> dict[str, Any]:
    """make_optimizer's settings from the preset's training section (config.TrainingConfig): betas and eps (the
    preset's or the optimizer's own; None where the optimizer reads none, whatever the text), Prodigy's d_coef and
    d0, schedule-free's warmup (lr_warmup_steps), r and weight_lr_power, AdEMAMix's alpha and t_alpha_beta3.
    Raises ValueError for betas or eps that are not numbers where the optimizer reads them (config validation
    names the field first)."""
    def numbers(name: str) -> tuple[float, ...] | None:
        return optimizer_numbers(training, name) if training.optimizer in OPTIMIZER_FIELDS[name] else None
    return {"betas": numbers("betas"), "eps": numbers("eps"),
            "d_coef": training.prodigy_d_coef, "d0": training.prodigy_d0, "warmup_steps": training.lr_warmup_steps,
            "r": training.schedulefree_r, "weight_lr_power": training.schedulefree_weight_lr_power,
            "alpha": training.ademamix_alpha, "t_alpha_beta3": training.ademamix_t_alpha_beta3}


def make_stepper(training: TrainingConfig, param_groups: list[dict], accelerator,
                 defer_loss_reads: bool | None = None) -> "Stepper":
    """The Stepper the preset's training section (config.TrainingConfig `training`) asks for: its optimizer with its
    settings (optimizer_settings), learning rate and weight decay; master weights for bf16 weights with
    stochastic rounding; the fused back pass; gradient clipping. defer_loss_reads: None reads losses back in
    batches on a GPU only (see Stepper)."""
    return Stepper(training.optimizer, param_groups, training.learning_rate, training.weight_decay,
                   settings=optimizer_settings(training), accelerator=accelerator,
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
    optimizer (torch, bitsandbytes, transformers, pytorch-optimizer, schedulefree) works unchanged and its state
    stays keyed by the same tensors. What an optimizer keeps per group rather than per parameter (a step count:
    pytorch-optimizer's "step", schedule-free's k, weight_sum and lr_max) must advance once per step, not once per
    bucket: every bucket of a step starts from the group's values before the step, and the values after it are
    written back once the step's last bucket has run (finish_buckets). An optimizer whose step needs all gradients
    at once (config.WHOLE_STEP_OPTIMIZERS: Prodigy) cannot be stepped in buckets and is refused.

    A step whose loss is not finite (NaN or inf) never reaches the weights: its gradients are dropped (or, when
    deferred, the optimizer skips it on the device). Gradients are clipped to `max_grad_norm` (0: off) before a
    step, except with the fused back pass, which steps before the whole gradient is known (config refuses it).
    `accelerator` (an accelerate.Accelerator) does the back pass, clipping and wraps the optimizer (mixed
    precision's grad scaler, several processes); without one, plain torch does.

    A schedule-free optimizer (config.SCHEDULE_FREE) steps a point y that is not the one to use: samples and saves
    run inside `evaluation_weights()`, which puts its average x in the parameters and the stepped y back after.
    Backups hold y and the optimizer's state (z), which is exactly what it needs to go on.
    """

    BUCKET = 1 << 24  # elements; about the largest single weight of SD 1.5's UNet (14.7M)

    def __init__(self, name: str, param_groups: list[dict], lr: float, weight_decay: float, *,
                 settings: dict[str, Any] | None = None, master_weights: bool = False, fused_backward: bool = False,
                 max_grad_norm: float = 0.0, accelerator=None, defer_loss_reads: bool = False):
        """name: an optimizer of config.OPTIMIZERS; param_groups: [{"params": [...], "lr": optional}, ...] (a
        group's own lr wins over `lr`); settings: make_optimizer's keyword settings (optimizer_settings). Raises
        ValueError for an unknown optimizer, no parameters, or an optimizer that cannot step in buckets (Prodigy)
        with master weights or the fused back pass."""
        self.name = name.lower().strip()
        if self.name in WHOLE_STEP_OPTIMIZERS and (master_weights or fused_backward):
            raise ValueError(f"{name} estimates its step size over all gradients at once, so it cannot be stepped "
                             "in buckets (bf16 weights with stochastic rounding, the fused back pass)")
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
        self.optimizer = make_optimizer(name, groups, lr, weight_decay=weight_decay, **(settings or {}))
        # What steps and what backups save: accelerate's wrapper (the fp16 grad scaler) or the optimizer itself.
        self.prepared_optimizer = accelerator.prepare_optimizer(self.optimizer) if accelerator else self.optimizer
        self.group_of = {p: index for index, group in enumerate(param_groups) for p in group["params"]}
        self.bucket: list[torch.Tensor] = []
        self.bucket_size = 0
        self.stepped_groups: dict[int, dict] = {}  # group index -> its values after this step's buckets so far
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
        self.finish_buckets()
        self.prepared_optimizer.zero_grad(set_to_none=True)
        return loss, True

    def zero_grad(self) -> None:
        """Drop every gradient (and a bucket that waits to be stepped)."""
        for p in self.params:
            p.grad = None
        self.bucket, self.bucket_size = [], 0

    @contextlib.contextmanager
    def evaluation_weights(self) -> Iterator[None]:
        """While open, the parameters hold the weights to sample and save with; afterwards exactly the ones that
        train again (a copy in CPU memory, so sampling never changes the training by a rounding).

        For a schedule-free optimizer those are its average x = y + (1 - 1/beta1)(z - y), what its own eval()
        computes (schedulefree's AdamWScheduleFree.eval and ScheduleFreeWrapper.eval, whose README asks to
        evaluate and save in eval mode), here in float32 and rounded to the nearest value for bf16 weights; z is
        the optimizer's state (the float32 proxy's with master weights). A parameter not stepped yet keeps its
        weights (x = y = z then). For every other optimizer the weights are the trained ones: nothing changes."""
        points = self._schedule_free_points()
        if not points:
            yield
            return
        kept = [p.detach().to("cpu", copy=True) for p, _, _ in points]
        with torch.no_grad():
            for p, z, weight in points:
                p.copy_(torch.lerp(p.detach().float(), z.to(p.device, torch.float32), weight))
        try:
            yield
        finally:
            with torch.no_grad():
                for (p, _, _), saved in zip(points, kept):
                    p.copy_(saved)

    def _schedule_free_points(self) -> list[tuple[torch.Tensor, torch.Tensor, float]]:
        """(parameter, its z, the lerp weight 1 - 1/beta1 from y to x) of every parameter a schedule-free optimizer
        has stepped; [] for other optimizers. beta1: the wrapper's momentum (prodigy_schedulefree), else the
        group's first beta (AdamWScheduleFree)."""
        if self.name not in SCHEDULE_FREE:
            return []
        optimizer, points = self.optimizer, []
        for p in self.params:
            state = optimizer.state.get(self.proxies.get(p, p))
            if state and "z" in state:
                beta1 = (optimizer.momentum if not isinstance(optimizer, torch.optim.Optimizer)
                         else optimizer.param_groups[self.group_of[p]]["betas"][0])
                points.append((p, state["z"], 1.0 - 1.0 / beta1))
        return points

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
        benchmarks do, calls it after add_to_bucket, and finish_buckets after the step's last bucket)."""
        bucket, self.bucket, self.bucket_size = self.bucket, [], 0
        self._run(bucket)

    def finish_buckets(self) -> None:
        """End a step stepped in buckets: write each group's values after the step (a step count, schedule-free's
        averaging weights) into the optimizer's param_groups, so that they advance once per step. Each bucket of
        the step started from the values before it, as one call over all parameters would. Nothing to do after a
        plain step."""
        groups = self.optimizer.param_groups
        for index, values in self.stepped_groups.items():
            groups[index].update((key, value) for key, value in values.items() if key != "params")
        self.stepped_groups = {}

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
            self.stepped_groups.update(zip(by_group, opt.param_groups))  # the values after; see finish_buckets
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
