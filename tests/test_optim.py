"""Tests for trainer.train.optim: every optimizer trains, every LR schedule has its warmup and its end."""
from __future__ import annotations

import pytest
import torch

from trainer.config import LR_SCHEDULERS, OPTIMIZERS
from trainer.train.optim import current_lr, make_lr_scheduler, make_optimizer

# A learning rate that suits each optimizer on the test quadratic (Prodigy finds its own step size from lr=1).
TEST_LR = {"adamw": 0.05, "adamw8bit": 0.05, "adafactor": 0.05, "lion": 0.02, "prodigy": 1.0, "sgd": 0.05,
           "adamw_schedulefree": 0.05, "prodigy_schedulefree": 1.0, "came": 0.05, "adopt": 0.05, "ademamix": 0.05}


def _quadratic_run(name: str, steps: int = 50) -> tuple[float, float, torch.optim.Optimizer, torch.nn.Parameter]:
    """Minimise ||w - target||^2 over a 64x64 weight (big enough for 8-bit optimizer state) and a small bias."""
    gen = torch.Generator().manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(64, 64, generator=gen))
    bias = torch.nn.Parameter(torch.randn(8, generator=gen))
    target_w, target_b = torch.randn(64, 64, generator=gen), torch.randn(8, generator=gen)
    optimizer = make_optimizer(name, [{"params": [weight, bias]}], lr=TEST_LR[name], weight_decay=0.0)
    losses = []
    for _ in range(steps):
        loss = ((weight - target_w) ** 2).mean() + ((bias - target_b) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses[0], losses[-1], optimizer, weight


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_each_optimizer_reduces_a_quadratic_on_cpu(name):
    first, last, _, _ = _quadratic_run(name)
    assert last < 0.5 * first, f"{name}: loss {first:.3f} -> {last:.3f}"


def test_adamw8bit_keeps_8bit_state_on_cpu():
    _, _, optimizer, weight = _quadratic_run("adamw8bit", steps=2)
    assert type(optimizer).__name__ == "AdamW8bit"
    assert optimizer.state[weight]["state1"].dtype == torch.uint8
    assert optimizer.state[weight]["state2"].dtype == torch.uint8


def test_optimizer_classes_and_settings():
    params = [torch.nn.Parameter(torch.zeros(3))]
    assert type(make_optimizer("adamw", [{"params": params}], lr=1e-4)).__name__ == "AdamW"
    assert make_optimizer("adamw", [{"params": params}], lr=1e-4).defaults["fused"] is True  # CPU kernel too
    assert make_optimizer("sgd", [{"params": params}], lr=1e-4).defaults["momentum"] == 0.9
    adafactor = make_optimizer("adafactor", [{"params": params}], lr=1e-4)
    assert adafactor.defaults["relative_step"] is False and adafactor.defaults["scale_parameter"] is False
    assert type(make_optimizer("Lion", [{"params": params}], lr=1e-4)).__name__ == "Lion"


def test_unknown_optimizer_names_the_choices():
    with pytest.raises(ValueError, match="adamw8bit.*prodigy"):
        make_optimizer("adam9000", [{"params": [torch.nn.Parameter(torch.zeros(1))]}], lr=1e-4)


def test_param_groups_keep_their_own_lr_and_accept_generators():
    unet = torch.nn.Linear(4, 4)
    text_encoder = torch.nn.Linear(4, 4)
    groups = [{"params": unet.parameters()}, {"params": text_encoder.parameters(), "lr": 1e-5}]
    optimizer = make_optimizer("adamw", groups, lr=1e-4)
    assert [g["lr"] for g in optimizer.param_groups] == [1e-4, 1e-5]
    assert len(optimizer.param_groups[0]["params"]) == 2  # the generator was consumed into a list, not lost
    assert current_lr(optimizer) == 1e-4


def test_no_parameters_is_a_clear_error():
    with pytest.raises(ValueError, match="no parameters"):
        make_optimizer("adamw", [{"params": []}], lr=1e-4)


def test_current_lr_reports_prodigys_effective_step_size():
    _, _, optimizer, _ = _quadratic_run("prodigy", steps=10)
    group = optimizer.param_groups[0]
    assert group["d"] > group["d0"]  # Prodigy has grown its estimate
    assert current_lr(optimizer) == pytest.approx(group["d"] * group["lr"])


def _lrs(name: str, warmup: int, total: int, lr: float = 1.0) -> list[float]:
    """The LR before each of `total` optimizer steps, plus the one after the last."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    scheduler = make_lr_scheduler(name, optimizer, warmup_steps=warmup, total_steps=total)
    lrs = []
    for _ in range(total):
        lrs.append(current_lr(optimizer))
        optimizer.step()
        scheduler.step()
    lrs.append(current_lr(optimizer))
    return lrs


@pytest.mark.parametrize("name", LR_SCHEDULERS)
def test_each_lr_scheduler_warms_up_then_has_its_shape(name):
    lrs = _lrs(name, warmup=10, total=100, lr=1.0)
    assert lrs[0] < lrs[5] < lrs[10]  # linear warmup ramp
    assert lrs[0] == pytest.approx(0.0)
    assert lrs[10] == pytest.approx(1.0)  # the full lr when warmup ends
    if name.startswith("constant"):
        assert lrs[10:] == pytest.approx([1.0] * len(lrs[10:]))
    else:
        assert all(a >= b for a, b in zip(lrs[10:], lrs[11:])), "decays monotonically after warmup"
        assert lrs[-1] == pytest.approx(0.0, abs=1e-6)
        assert lrs[55] == pytest.approx(0.5, abs=0.05)  # half-way through the decay


def test_linear_decay_is_linear_and_cosine_is_above_it_early():
    linear = _lrs("linear", warmup=0, total=100)
    cosine = _lrs("cosine", warmup=0, total=100)
    assert linear[25] == pytest.approx(0.75) and linear[50] == pytest.approx(0.5)
    assert cosine[25] > linear[25] and cosine[75] < linear[75]


def test_lr_scheduler_scales_each_groups_lr():
    first, second = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    groups = [{"params": [first]}, {"params": [second], "lr": 0.1}]
    optimizer = make_optimizer("sgd", groups, lr=1.0)
    scheduler = make_lr_scheduler("linear", optimizer, warmup_steps=0, total_steps=4)
    optimizer.step()
    scheduler.step()
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.75, 0.075])


def test_lr_scheduler_edge_cases():
    assert _lrs("constant", warmup=0, total=5) == pytest.approx([1.0] * 6)
    # A warmup longer than the run is clamped to it: the ramp spans the run and the full lr comes at its end
    # (unclamped, 50 warmup steps over a 10-step run would stop at a fifth of it).
    ramp = [step / 10 for step in range(10)]
    assert _lrs("constant", warmup=50, total=10) == pytest.approx(ramp + [1.0])
    assert _lrs("linear", warmup=50, total=10) == pytest.approx(ramp + [0.0])
    assert _lrs("linear", warmup=-5, total=10) == pytest.approx(_lrs("linear", warmup=0, total=10))  # none
    with pytest.raises(ValueError, match="cosine_with_restarts"):
        make_lr_scheduler("piecewise_constant", torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1), 0, 10)
    with pytest.raises(ValueError, match="at least 1"):
        make_lr_scheduler("linear", torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1), 0, 0)
