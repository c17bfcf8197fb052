"""train.freeze: aliases and module paths select what trains; frozen weights stay bit-equal through a
run (plain Accelerate and DeepSpeed ZeRO-2) and saved weights keep every official key."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import stages.train as train_stage
from fixtures.policy import build_policy_from_preset
from steve1.params import TrainParams, load_params, validate_params
from steve1.train.freeze import GROUPS, apply_freeze
from steve1.train.optim import make_optimizer
from steve1.train.trainer import BCModule, build_start_policy, train
from toy_world import make_world

REPO = Path(__file__).resolve().parents[2]
GUIDE = ["cnn", "transformer"]


def _trainable(policy) -> set[str]:
    return {n for n, p in policy.named_parameters() if p.requires_grad}


def test_guide_recipe_trains_only_goal_fusion_and_heads():
    policy = build_start_policy(TrainParams(freeze=GUIDE))
    assert _trainable(policy) == {"net.mineclip_embed_linear.weight", "net.mineclip_embed_linear.bias",
                                  *(n for n, _ in policy.named_parameters() if n.startswith("pi_head."))}


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_each_alias_freezes_exactly_its_modules(group):
    policy = build_start_policy(TrainParams(freeze=[group]))
    everything = _trainable(build_start_policy(TrainParams()))
    frozen = everything - _trainable(policy)
    assert frozen and all(any(n.startswith(p + ".") for p in GROUPS[group]) for n in frozen)
    assert all(not any(n.startswith(p + ".") for p in GROUPS[group]) for n in _trainable(policy))


def test_module_path_prefix_freezes_one_block_only():
    policy = build_start_policy(TrainParams(freeze=["net.recurrent_layer.blocks.0"]))
    frozen = {n for n, p in policy.named_parameters() if not p.requires_grad} - {
        n for n, _ in policy.named_parameters() if n.startswith("value_head.")}
    assert frozen and all(n.startswith("net.recurrent_layer.blocks.0.") for n in frozen)
    assert any(n.startswith("net.recurrent_layer.blocks.1.") for n in _trainable(policy))


def test_unknown_names_are_params_errors_listing_the_groups():
    # the train stage checks them before any work (params.py imports nothing from train/)
    with pytest.raises(ValueError, match=r"key 'train.freeze'.*unknown freeze entries \['backbone'\].*\['cnn', 'goal', 'heads', 'transformer'\]"):
        train_stage.check(validate_params({"train": {"freeze": ["cnn", "backbone"]}}))
    policy = build_policy_from_preset("tiny")
    with pytest.raises(ValueError, match=r"\['net.recurrent_layer.blocks.9'\] match no parameter"):
        apply_freeze(policy, ["net.recurrent_layer.blocks.9"])
    policy.value_head.requires_grad_(False)  # as build_start_policy does
    with pytest.raises(ValueError, match="freezes every trained parameter"):
        apply_freeze(policy, [*GROUPS])


def test_optimizer_holds_only_trainable_parameters():
    policy = build_start_policy(TrainParams(freeze=GUIDE))
    opt = make_optimizer(BCModule(policy), learning_rate=1e-3, weight_decay=0.1)
    held = {id(p) for g in opt.param_groups for p in g["params"]}
    assert held == {id(p) for p in policy.parameters() if p.requires_grad}
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]  # weights decayed, biases not
    only_goal_bias = build_start_policy(TrainParams(freeze=["cnn", "transformer", "heads",
                                                            "net.mineclip_embed_linear.weight"]))
    opt = make_optimizer(BCModule(only_goal_bias), learning_rate=1e-3, weight_decay=0.1)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.0]  # the empty decay group is dropped


def _check_frozen_run(run: Path, freeze: list[str]) -> None:
    init = build_start_policy(TrainParams(freeze=freeze)).state_dict()
    got = torch.load(run / "latest.weights", map_location="cpu", weights_only=True)
    assert list(got) == list(init)  # every key, frozen ones included, in the official order
    frozen = {n for n, p in build_start_policy(TrainParams(freeze=freeze)).named_parameters() if not p.requires_grad}
    for key in init:
        if key in frozen:
            assert torch.equal(got[key], init[key]), f"frozen {key} moved"
    assert not torch.equal(got["net.mineclip_embed_linear.weight"], init["net.mineclip_embed_linear.weight"])
    assert not torch.equal(got["pi_head.buttons.linear_layer.weight"], init["pi_head.buttons.linear_layer.weight"])


def test_frozen_parameters_are_bitwise_unchanged_after_training(tmp_path):
    params = make_world(tmp_path, {"freeze": GUIDE, "n_frames": 64})
    summary = train(load_params(params))
    assert summary["step"] == 4
    _check_frozen_run(tmp_path / "models" / "toy", GUIDE)


def test_frozen_parameters_through_deepspeed_zero2(tmp_path):
    params = make_world(tmp_path, {"freeze": GUIDE, "n_frames": 64, "deepspeed": "zero2"})
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{REPO / 'tests' / 'train'}", OMP_NUM_THREADS="1")
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    proc = subprocess.run([sys.executable, "-m", "stages.train", "--params", str(params)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _check_frozen_run(tmp_path / "models" / "toy", GUIDE)
