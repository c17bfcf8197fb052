"""AdamW groups as STEVE-1 splits them, and the STEVE-1 learning-rate schedule."""

from __future__ import annotations

import math

import pytest
import torch

from fixtures.policy import build_policy_from_preset
from steve1.train.optim import lr_at, make_optimizer, set_lr, split_decay
from steve1.train.trainer import BCModule


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    policy = build_policy_from_preset("tiny")
    policy.value_head.requires_grad_(False)
    return policy


def test_split_follows_steve1_rules(tiny):
    decay, no_decay = split_decay(tiny)
    assert not set(decay) & set(no_decay)
    trainable = {n for n, p in tiny.named_parameters() if p.requires_grad}
    assert set(decay) | set(no_decay) == trainable
    assert all(n.endswith("bias") or "ln" in n or ".norm" in n or "final_ln" in n for n in no_decay), no_decay
    assert all(n.endswith("bias") for n in no_decay if not isinstance(tiny.get_submodule(n.rsplit(".", 1)[0]),
                                                                          torch.nn.LayerNorm))
    layernorm_weights = [f"{m}.weight" for m, mod in tiny.named_modules() if isinstance(mod, torch.nn.LayerNorm)]
    assert layernorm_weights and set(layernorm_weights) <= set(no_decay)
    assert "net.mineclip_embed_linear.weight" in decay and "net.mineclip_embed_linear.bias" in no_decay
    assert "pi_head.buttons.linear_layer.weight" in decay
    # STEVE-1's "else: decay" branch: conv kernels, GroupNorm weights and b_nd are decayed
    groupnorm = [f"{m}.weight" for m, mod in tiny.named_modules() if isinstance(mod, torch.nn.GroupNorm)]
    assert groupnorm and set(groupnorm) <= set(decay)
    assert any(n.endswith("b_nd") for n in decay)
    assert not any(n.startswith("value_head") for n in decay + no_decay)  # never trained


def test_optimizer_groups_and_lr(tiny):
    opt = make_optimizer(BCModule(tiny), learning_rate=3e-4, weight_decay=0.039428)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.039428, 0.0]
    assert sum(len(g["params"]) for g in opt.param_groups) == sum(p.requires_grad for p in tiny.parameters())
    set_lr(opt, 1e-5)
    assert all(g["lr"] == 1e-5 for g in opt.param_groups)


def test_schedule_warmup_cosine_to_zero_at_1_1x():
    lr, warm, n = 4e-5, 100, 1000
    assert lr_at(0, lr, warm, n) == 0.0
    assert lr_at(50, lr, warm, n) == pytest.approx(lr / 2)
    assert lr_at(100, lr, warm, n) == pytest.approx(lr)
    mid = (100 + 1100) / 2
    assert lr_at(mid, lr, warm, n) == pytest.approx(lr / 2)
    assert lr_at(1100, lr, warm, n) == pytest.approx(0.0, abs=1e-20)
    assert lr_at(5000, lr, warm, n) == 0.0
    xs = [lr_at(f, lr, warm, n) for f in range(100, 1101, 50)]
    assert all(a >= b for a, b in zip(xs, xs[1:]))  # monotone decay
    assert lr_at(600, lr, warm, n) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)) * lr)
    assert lr_at(10, lr, 0, n) == pytest.approx(0.5 * (1 + math.cos(math.pi * 10 / 1100)) * lr)  # no warmup
