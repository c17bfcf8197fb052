"""steve1.actions against the official VPT action-space goldens (vpt/action_mapping_goldens.json)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from steve1 import actions as A


@pytest.fixture(scope="module")
def goldens(reference):
    return json.loads((reference / "vpt" / "action_mapping_goldens.json").read_text())


@pytest.fixture(scope="module")
def cases(goldens):
    rows = goldens["cases"]
    keys = goldens["env_button_keys"]
    env = {k: np.array([r[0][j] for r in rows]) for j, k in enumerate(keys)}
    env["camera"] = np.array([r[1] for r in rows], dtype=np.float64)
    cols = list(zip(*rows))
    return env, [np.array(c) for c in cols[2:]]


def test_constants_match_goldens(goldens):
    assert list(A.BUTTONS_ALL) == goldens["buttons_all_order"]
    assert list(A.ENV_BUTTON_KEYS) == goldens["env_button_keys"]
    assert [k for k in A.ENV_BUTTON_KEYS if k not in A.BUTTONS_ALL] == goldens["env_keys_dropped_by_env2policy"]
    assert A.N_CAMERA_BINS == goldens["n_camera_bins"]
    assert A.CAMERA_NULL_BIN == goldens["camera_null_bin"]
    assert A.CAMERA_NULL_IDX == goldens["camera_null_idx"]
    assert A.N_BUTTONS == goldens["n_button_combinations"]
    assert [len(g) for g in A.BUTTON_GROUPS.values()] == goldens["buttons_group_radices"]
    assert {k: list(v) for k, v in A.BUTTON_GROUPS.items()} == goldens["buttons_groups"]
    q = goldens["camera_quantizer"]
    assert (A.CAMERA_MAXVAL, A.CAMERA_BINSIZE, A.CAMERA_MU) == (q["maxval"], q["binsize"], q["mu"])


def test_joint_button_tables(goldens):
    np.testing.assert_array_equal(A.BUTTON_IDX_TO_BITMASK, goldens["button_idx_to_factored_bitmask"])
    off = np.array([c == "1" for c in goldens["button_idx_camera_meta_off"]])
    np.testing.assert_array_equal(A.BUTTON_IDX_CAMERA_META_OFF, off)


# The goldens were made with numpy 1.26.4, which we pin: its SIMD log differs from a correctly
# rounded one in the last ulp, and that decides exact bin-boundary cases (e.g. camera
# -2.3166247903554 -> bin 3), so every case must match exactly.


def test_camera_tables(goldens):
    np.testing.assert_allclose(A.undiscretize_camera(np.arange(A.N_CAMERA_BINS)),
                               goldens["camera_bin_centers_policy2env"], rtol=0, atol=0)
    idx = np.arange(A.N_CAMERA)
    _, bins = A.to_factored(np.ones_like(idx), idx)   # buttons idx 1 = camera meta on
    np.testing.assert_array_equal(bins, goldens["camera_idx_to_factored"])
    # each env-side boundary separates two neighbouring bins
    b = np.array(goldens["camera_bin_boundaries_env"])
    lo = A.discretize_camera(b - 1e-9)
    hi = A.discretize_camera(b + 1e-9)
    np.testing.assert_array_equal(hi - lo, np.ones_like(lo))


def test_env2policy_cases(cases):
    env, (g_buttons, g_bins, *_rest) = cases
    buttons, bins = A.env2policy(env)
    np.testing.assert_array_equal(buttons, g_buttons)
    np.testing.assert_array_equal(bins, g_bins)


def test_from_factored_cases(cases):
    _, (g_buttons, g_bins, g_joint_b, g_joint_c, *_rest) = cases
    joint_b, joint_c = A.from_factored(g_buttons, g_bins)
    np.testing.assert_array_equal(joint_b, g_joint_b)
    np.testing.assert_array_equal(joint_c, g_joint_c)
    env, _ = cases
    joint_b, joint_c = A.env_to_agent(env)
    np.testing.assert_array_equal(joint_b, g_joint_b)
    np.testing.assert_array_equal(joint_c, g_joint_c)


def test_to_factored_and_policy2env_cases(cases):
    _, (_, _, g_joint_b, g_joint_c, g_tf_buttons, g_tf_bins, g_p2e_camera) = cases
    buttons, bins = A.to_factored(g_joint_b, g_joint_c)
    np.testing.assert_array_equal(buttons, g_tf_buttons)
    np.testing.assert_array_equal(bins, g_tf_bins)
    env = A.policy2env(buttons, bins)
    np.testing.assert_allclose(env["camera"], g_p2e_camera, rtol=0, atol=0)
    for j, key in enumerate(A.BUTTONS_ALL):
        np.testing.assert_array_equal(env[key], g_tf_buttons[:, j])


def test_agent_to_env_dict(goldens):
    action = A.agent_to_env(8640, 3)   # inventory; to_factored does not force the camera null
    assert set(action) == set(goldens["env_action_keys_24"])
    assert action["inventory"] == 1 and sum(action[k] for k in A.ENV_BUTTON_KEYS) == 1
    assert action["camera"][0] == -10.0 and action["camera"][1] == pytest.approx(-1.6094986352788734)
    noop = A.agent_to_env(A.NULL_BUTTONS_IDX, 17)   # camera meta off forces the null bin
    assert list(noop["camera"]) == [0.0, 0.0] and not any(noop[k] for k in A.ENV_BUTTON_KEYS)


def test_to_factored_rejects_out_of_range():
    with pytest.raises(ValueError, match="out of range"):
        A.to_factored(np.array([A.N_BUTTONS]), np.array([0]))
