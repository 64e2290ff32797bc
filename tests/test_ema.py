"""The EMA follows its formula on both paths: float32 weights beside their shadows (one multi-tensor update)
and bf16 weights (converted per weight)."""
from __future__ import annotations

import pytest
import torch

from trainer.train.ema import EMA


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_ema_follows_the_decay_warmup_formula(dtype):
    torch.manual_seed(0)
    params = [torch.randn(5, 3).to(dtype), torch.randn(7).to(dtype)]
    ema = EMA(params, decay=0.9, device="cpu")
    assert ema.same_place == (dtype == torch.float32)
    expected = [p.float().clone() for p in params]
    for n in range(4):
        for p in params:
            p.add_(torch.randn_like(p))
        decay = min(0.9, (1 + n) / (10 + n))
        expected = [e + (1 - decay) * (p.float() - e) for e, p in zip(expected, params)]
        ema.step()
    for shadow, e in zip(ema.shadow, expected):
        torch.testing.assert_close(shadow, e)
    raw = [p.clone() for p in params]
    ema.swap_in()
    for p, e in zip(params, expected):
        torch.testing.assert_close(p, e.to(dtype))
    ema.swap_out()
    for p, r in zip(params, raw):
        assert torch.equal(p, r)


def test_a_resumed_ema_keeps_its_shadows_and_takes_the_new_decay():
    params = [torch.randn(4)]
    before = EMA(params, decay=0.999, device="cpu")
    for _ in range(200):
        params[0].add_(1.0)
        before.step()
    after = EMA(params, decay=0.95, device="cpu")  # the preset's ema_decay changed before resuming
    after.load_state_dict(before.state_dict())
    assert after.updates == 200 and torch.equal(after.shadow[0], before.shadow[0])
    assert after.current_decay() == 0.95
