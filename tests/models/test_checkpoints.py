"""Safe .model decoding, strict .weights loading and official-format saving (reference/real README §4)."""

from __future__ import annotations

import json
import pickle
import re

import pytest
import torch
from torch.testing import assert_close

from fixtures.policy import build_policy_from_preset
from steve1.models.vpt import PRESETS, build_policy
from steve1.models.checkpoints import (
    GOAL_KEYS,
    CheckpointMismatchError,
    UnsafePickleError,
    load_model_file,
    load_policy_weights,
    load_state_dict_file,
    read_policy_kwargs,
    save_policy_weights,
    to_plain,
)


@pytest.mark.parametrize("size", ["1x", "3x"])
def test_real_model_files_decode_like_the_reference(reference, size):
    path = reference / "real" / f"foundation-model-{size}.model"
    expected = json.loads((reference / "real" / f"foundation-model-{size}.model.json").read_text())
    assert to_plain(load_model_file(path)) == expected
    policy_kwargs, pi_head_kwargs = read_policy_kwargs(path)
    assert policy_kwargs == expected["model"]["args"]["net"]["args"]
    assert pi_head_kwargs == {"temperature": {"1x": 1, "3x": 3}[size]}
    # extra keys accepted; as in STEVE-1 training, the VPT architecture file gets the 512-d goal layer
    policy = build_policy(policy_kwargs, pi_head_kwargs, device="meta")
    assert policy.net.mineclip_embed_linear.weight.shape == (PRESETS[size]["policy_kwargs"]["hidsize"], 512)
    vpt = build_policy({**policy_kwargs, "mineclip_embed_dim": None}, pi_head_kwargs, device="meta")
    assert vpt.net.mineclip_embed_linear is None


def test_gym3_records_keep_their_build_state(reference):
    data = load_model_file(reference / "real" / "foundation-model-1x.model")
    buttons = data["extra_args"]["ac_space"].state["_n2t"]["buttons"]
    assert buttons.pickle_class == "gym3.types.TensorType"
    assert buttons.state["eltype"].state == {"n": 8641, "dtype_name": "int64"}
    assert buttons.state["shape"] == (1,)


def _proto0_system(cmd: bytes) -> bytes:  # GLOBAL os.system + REDUCE
    return b"cos\nsystem\n(S'" + cmd + b"'\ntR."


def _proto4_system(cmd: bytes) -> bytes:  # STACK_GLOBAL os.system + REDUCE
    return b"\x80\x04\x8c\x02os\x8c\x06system\x93\x8c" + bytes([len(cmd)]) + cmd + b"\x85R."


def _builtins_exec(cmd: bytes) -> bytes:  # builtins other than plain containers are refused too
    return b"cbuiltins\nexec\n(S'import os; os.system(\"" + cmd + b"\")'\ntR."


@pytest.mark.parametrize("make,refused", [(_proto0_system, "os.system"), (_proto4_system, "os.system"),
                                          (_builtins_exec, "builtins.exec")])
def test_code_referencing_pickles_are_refused_without_running(tmp_path, make, refused):
    marker = tmp_path / "pwned"
    bad = tmp_path / "evil.model"
    bad.write_bytes(make(f"touch {marker}".encode()))
    with pytest.raises(UnsafePickleError, match=rf"evil\.model.*{refused}"):
        load_model_file(bad)
    assert not marker.exists()


def test_a_damaged_model_file_is_one_value_error_naming_it(tmp_path):
    bad = tmp_path / "cut.model"
    bad.write_bytes(pickle.dumps({"model": {"args": {"net": {"args": {}}}}})[:20])
    with pytest.raises(ValueError, match=rf"^{re.escape(str(bad))}: not a readable VPT .model pickle \(") as info:
        read_policy_kwargs(bad)
    assert "\n" not in str(info.value)


def test_read_policy_kwargs_names_the_missing_key(tmp_path):
    path = tmp_path / "odd.model"
    path.write_bytes(pickle.dumps({"model": {"args": {"net": {}}}}))
    with pytest.raises(ValueError, match=r"odd\.model.*'args'"):
        read_policy_kwargs(path)


def test_save_then_load_round_trip_in_official_format(tmp_path, tiny_policy, tiny_state_dict):
    path = save_policy_weights(tiny_policy, tmp_path / "steve1.weights")
    raw = torch.load(path, weights_only=True)
    assert list(raw) == list(tiny_state_dict)  # plain dict, official key names and order
    assert not list(tmp_path.glob(".tmp-*"))
    fresh = build_policy_from_preset("tiny")
    assert load_policy_weights(fresh, path) == []
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, tiny_state_dict[key]), key


def test_steve1_ddp_prefix_is_stripped(tmp_path, tiny_state_dict):
    path = tmp_path / "ddp.weights"
    torch.save({"module.policy." + k: v for k, v in tiny_state_dict.items()}, path)
    assert list(load_state_dict_file(path)) == list(tiny_state_dict)
    policy = build_policy_from_preset("tiny")
    load_policy_weights(policy, path)
    assert_close(policy.state_dict()["pi_head.buttons.linear_layer.bias"],
                 tiny_state_dict["pi_head.buttons.linear_layer.bias"], atol=0, rtol=0)


@pytest.mark.parametrize("goal_init", ["default", "zeros"])
def test_vpt_weights_into_steve1_initialise_only_the_goal_layer(tiny_state_dict, goal_init):
    vpt_sd = {k: v for k, v in tiny_state_dict.items() if k not in GOAL_KEYS}
    torch.manual_seed(0)
    policy = build_policy_from_preset("tiny")
    assert load_policy_weights(policy, vpt_sd, goal_init=goal_init) == list(GOAL_KEYS)
    weight = policy.net.mineclip_embed_linear.weight
    assert (weight.abs().sum() == 0) == (goal_init == "zeros")
    with pytest.raises(CheckpointMismatchError, match="missing    net.mineclip_embed_linear.weight"):
        load_policy_weights(build_policy_from_preset("tiny"), vpt_sd, allow_vpt=False)


def test_mismatches_are_listed_with_shapes(tiny_state_dict):
    sd = dict(tiny_state_dict)
    sd.pop("net.final_ln.bias")
    sd["net.extra.weight"] = torch.zeros(3)
    sd["value_head.linear.weight"] = torch.zeros(1, 32)
    with pytest.raises(CheckpointMismatchError) as err:
        load_policy_weights(build_policy_from_preset("tiny"), sd)
    msg = str(err.value)
    assert "missing    net.final_ln.bias (64,)" in msg
    assert "unexpected net.extra.weight (3,)" in msg
    assert "mismatched value_head.linear.weight: file (1, 32) vs model (1, 64)" in msg


def test_non_tensor_weights_are_refused(tmp_path):
    path = tmp_path / "evil.weights"
    with path.open("wb") as f:
        f.write(b"cos\nsystem\n(S'echo hi'\ntR.")
    with pytest.raises(ValueError, match=r"evil\.weights"):
        load_state_dict_file(path)
