"""Truncated BPTT pieces: memory reset at chunk starts, carried state, loss reductions."""

from __future__ import annotations

import pytest
import torch

from fixtures.policy import build_policy_from_preset
from steve1.train.trainer import BCModule, check_firsts, detach_state, reset_memory


@pytest.fixture(scope="module")
def module():
    torch.manual_seed(0)
    return BCModule(build_policy_from_preset("tiny")).eval()


def _call(B, t, seed, first0=True):
    g = torch.Generator().manual_seed(seed)
    first = torch.zeros(B, t, dtype=torch.bool)
    first[:, 0] = first0
    return {"img": torch.randint(0, 256, (B, t, 128, 128, 3), generator=g, dtype=torch.uint8),
            "mineclip_embed": torch.randn(B, t, 512, generator=g), "first": first,
            "buttons": torch.randint(0, 8641, (B, t), generator=g), "camera": torch.randint(0, 121, (B, t), generator=g)}


def test_reset_memory_is_pure_and_clears_only_flagged_rows(module):
    with torch.no_grad():
        _, state = module(_call(2, 4, 0), module.net.recurrent_layer.initial_state(2))
    before = [(m.clone(), (k.clone(), v.clone())) for m, (k, v) in state]
    out = reset_memory(state, torch.tensor([True, False]))
    for (m0, (k0, v0)), (m, (k, v)), (m1, (k1, v1)) in zip(before, state, out):
        assert torch.equal(m0, m) and torch.equal(k0, k)  # input untouched
        assert not m1[0].any() and torch.equal(m1[1], m0[1])
        assert not k1[0].any() and not v1[0].any() and torch.equal(k1[1], k0[1]) and torch.equal(v1[1], v0[1])
    fresh = reset_memory(module.net.recurrent_layer.initial_state(2), torch.tensor([True, True]))
    assert fresh[0][0] is None  # the initial "nothing readable" state stays as it is


def test_reset_then_call_equals_a_fresh_segment(module):
    """Carried memory of another segment, reset, gives exactly what a fresh start gives."""
    with torch.no_grad():
        _, carried = module(_call(2, 8, 1), module.net.recurrent_layer.initial_state(2))
        nxt = _call(2, 8, 2, first0=True)
        loss_reset, _ = module(nxt, reset_memory(carried, nxt["first"][:, 0]))
        loss_fresh, _ = module(nxt, module.net.recurrent_layer.initial_state(2))
        loss_no_first, _ = module({**nxt, "first": torch.zeros_like(nxt["first"])}, carried)
    assert torch.equal(loss_reset, loss_fresh)
    assert not torch.equal(loss_no_first, loss_fresh)  # the carried memory does matter


def test_two_carried_calls_equal_one_long_call_and_official_reduction(module):
    call = _call(2, 16, 3)
    with torch.no_grad():
        whole, _ = module(call, module.net.recurrent_layer.initial_state(2))
        a, st = module({k: v[:, :8] for k, v in call.items()}, module.net.recurrent_layer.initial_state(2))
        b, _ = module({k: v[:, 8:] for k, v in call.items()}, detach_state(st))
    # official: sum over the call's steps, mean over the batch -> the halves add up
    torch.testing.assert_close(a + b, whole, rtol=1e-5, atol=1e-4)
    module.reduction = "mean"
    try:
        with torch.no_grad():
            per_step, _ = module(call, module.net.recurrent_layer.initial_state(2))
    finally:
        module.reduction = "official"
    torch.testing.assert_close(per_step * 16, whole, rtol=1e-5, atol=1e-4)


def test_check_firsts_refuses_a_first_inside_a_call():
    first = torch.zeros(2, 16, dtype=torch.bool)
    first[:, 0] = True
    first[1, 8] = True  # a call start with trunc_t=8: fine
    check_firsts(first, 8)
    first[0, 5] = True
    with pytest.raises(ValueError, match=r"row 0 has first=True at frame 5.*trunc_t=8"):
        check_firsts(first, 8)
