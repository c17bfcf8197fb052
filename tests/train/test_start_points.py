"""Start points: scratch (preset or .model), VPT weights (goal layer initialised), STEVE-1 weights;
bad files name the file and the keys. Also the train params cross-checks."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch

from steve1.models.checkpoints import CheckpointMismatchError
from fixtures.policy import build_policy_from_preset
from steve1.models.vpt import PRESETS
from steve1.params import ParamsError, TrainParams, validate_params
from steve1.train.trainer import build_start_policy


def _save(sd, path):
    torch.save(dict(sd), path)
    return str(path)


def test_from_scratch_is_seeded():
    a, b = build_start_policy(TrainParams(seed=3)), build_start_policy(TrainParams(seed=3))
    c = build_start_policy(TrainParams(seed=4))
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), c.state_dict().values()))
    assert not any(p.requires_grad for p in a.value_head.parameters())


def test_from_vpt_weights_initialises_the_goal_layer(tmp_path):
    torch.manual_seed(1)
    vpt = build_policy_from_preset("tiny", mineclip_embed_dim=None)
    path = _save(vpt.state_dict(), tmp_path / "vpt.weights")
    policy = build_start_policy(TrainParams(in_weights=path))
    for k, v in vpt.state_dict().items():
        assert torch.equal(policy.state_dict()[k], v), k
    assert policy.net.mineclip_embed_linear.weight.abs().sum() > 0  # PyTorch default init (official)
    zeros = build_start_policy(TrainParams(in_weights=path, goal_init="zeros"))
    assert not zeros.net.mineclip_embed_linear.weight.any() and not zeros.net.mineclip_embed_linear.bias.any()


def test_from_steve1_weights_and_in_model(tmp_path):
    torch.manual_seed(2)
    src = build_start_policy(TrainParams(seed=9))
    path = _save({f"module.policy.{k}": v for k, v in src.state_dict().items()}, tmp_path / "steve1.weights")
    kw = copy.deepcopy(PRESETS["tiny"])
    model = tmp_path / "tiny.model"
    model.write_bytes(pickle.dumps({"model": {"args": {"net": {"args": kw["policy_kwargs"]},
                                                       "pi_head_opts": kw["pi_head_kwargs"]}}}))
    policy = build_start_policy(TrainParams(in_model=str(model), in_weights=path, preset="2x"))
    assert policy.cfg.hidsize == 64  # the .model wins over the preset
    for k, v in src.state_dict().items():
        assert torch.equal(policy.state_dict()[k], v), k


def test_mismatched_or_missing_weights_name_the_file_and_keys(tmp_path):
    sd = build_start_policy(TrainParams()).state_dict()
    dropped = next(k for k in sd if k.startswith("net.lastlayer"))
    del sd[dropped]
    sd["net.bogus.weight"] = torch.zeros(3)
    sd["pi_head.camera.linear_layer.bias"] = torch.zeros(7)
    path = _save(sd, tmp_path / "bad.weights")
    with pytest.raises(CheckpointMismatchError) as err:
        build_start_policy(TrainParams(in_weights=path))
    msg = str(err.value)
    assert "bad.weights" in msg and "net.bogus.weight" in msg and dropped in msg
    assert "pi_head.camera.linear_layer.bias" in msg
    with pytest.raises(FileNotFoundError, match="nowhere.weights"):
        build_start_policy(TrainParams(in_weights=str(tmp_path / "nowhere.weights")))


def test_params_cross_checks():
    with pytest.raises(ParamsError, match=r"section 'train': train.T \(640\) was removed: training reads sample.T"):
        validate_params({"train": {"T": 640}})
    with pytest.raises(ParamsError, match=r"trunc_t \(48\) must divide the chunk length T=640"):
        validate_params({"train": {"trunc_t": 48}})
    with pytest.raises(ParamsError, match="warmup_frames"):
        validate_params({"train": {"n_frames": 100, "warmup_frames": 500}})
    with pytest.raises(ParamsError, match="deepspeed"):
        validate_params({"train": {"deepspeed": "zero4"}})
    p = validate_params({"learning_rate": 1e-5, "sample": {"T": 320}})
    assert p.learning_rate == 1e-5 and p.train_T == 320


def test_fingerprint_tracks_what_changes_the_weights_only():
    from steve1.train.trainer import config_fingerprint

    base = validate_params({})
    assert config_fingerprint(base) == config_fingerprint(validate_params({"train": {"val_freq": 7, "run": "x"}}))
    moved = {"paths": {"models": "/elsewhere/models"}, "sample": {"name": "same-content"}}
    assert config_fingerprint(base) == config_fingerprint(validate_params(moved))   # where, not what
    for changed in ({"learning_rate": 1e-5}, {"train": {"seed": 1}}, {"train": {"trunc_t": 32}},
                    {"train": {"gap_dist": "geometric"}}):
        assert config_fingerprint(validate_params(changed)) != config_fingerprint(base), changed
    # sample.max_btwn_goals is not read by training: it changes the sampling JSON, whose digest the
    # fingerprint's inputs hold (tests/train/test_resume_inputs.py)
    assert config_fingerprint(base, "sampling-1") != config_fingerprint(base, "sampling-2")


def test_a_run_cannot_start_from_its_own_outputs():
    """in_weights inside models/<run>/ would be overwritten by the run (and its deltas would be zero)."""
    import stages.train as train_stage
    from steve1.params import validate_params

    own = validate_params({"train": {"run": "ft", "in_weights": "models/ft/best.weights"}})
    with pytest.raises(ValueError, match=r"key 'train.in_weights'.*inside this run's own folder models/ft"):
        train_stage.check(own)
    earlier = validate_params({"train": {"run": "ft2", "in_weights": "models/ft/best.weights"}})
    train_stage.check(earlier)   # an earlier run's weights are a fine start point
