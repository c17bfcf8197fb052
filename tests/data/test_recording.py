"""steve1.data.recording against the official conversion: the synthetic contractor episode
(vpt/contractor_goldens) and the 9 real DEV jsonl files (real/actions_goldens.json), both variants."""

from __future__ import annotations

import json

import numpy as np
import pytest

from steve1 import actions as A
from steve1.data.recording import RecordingError, convert_recording, convert_steps, read_jsonl


@pytest.fixture(scope="module")
def contractor(reference):
    d = reference / "vpt" / "contractor_goldens"
    return d, json.loads((d / "conversion_goldens.json").read_text())


@pytest.fixture(scope="module")
def real_goldens(reference):
    return json.loads((reference / "real" / "actions_goldens.json").read_text())


def test_contractor_episode_official(contractor):
    d, g = contractor
    rec = convert_recording(d / "episode.jsonl", camera_int_truncation=True)
    s = g["steve1"]
    assert rec.n_lines == g["n_json_steps"]
    np.testing.assert_array_equal(rec.is_null, s["is_null_per_step"])
    np.testing.assert_array_equal(rec.kept_steps, s["kept_step_indices"])
    for key in A.ENV_BUTTON_KEYS:
        np.testing.assert_array_equal(rec.env[key], [a[key] for a in s["env_actions"]], err_msg=key)
    np.testing.assert_array_equal(rec.env["camera"], [a["camera"] for a in s["env_actions"]])
    buttons, camera = rec.agent_actions()
    np.testing.assert_array_equal(np.stack([buttons, camera], 1), s["agent_actions_buttons_camera"])
    null = (buttons == A.NULL_BUTTONS_IDX) & (camera == A.CAMERA_NULL_IDX)
    assert null.sum() == g["kept_steps_whose_agent_action_is_null"]


@pytest.mark.parametrize("variant", ["official", "float_camera"])
def test_real_recordings(real_inputs, real_goldens, variant):
    assert len(real_goldens["episodes"]) == 9
    for name, ep in real_goldens["episodes"].items():
        rec = convert_recording(real_inputs / name, camera_int_truncation=variant == "official")
        v = ep["variants"][variant]
        assert rec.n_lines == ep["n_lines"], name
        np.testing.assert_array_equal(rec.kept_steps, v["kept_step_indices"], err_msg=name)
        for key in real_goldens["meta"]["env_button_keys"]:
            np.testing.assert_array_equal(rec.env[key], v["env_actions"][key], err_msg=f"{name} {key}")
        # exact float64 equality: dx * (360/2400) computed in float64, as docs/data.md says
        np.testing.assert_array_equal(rec.env["camera"], v["env_actions"]["camera"], err_msg=name)
        buttons, camera = rec.agent_actions()
        np.testing.assert_array_equal(buttons, v["agent_actions"]["buttons"], err_msg=name)
        np.testing.assert_array_equal(camera, v["agent_actions"]["camera"], err_msg=name)


def _line(**over):
    step = {"mouse": {"x": 640.0, "y": 360.0, "dx": 0.0, "dy": 0.0, "buttons": [], "newButtons": []},
            "keyboard": {"keys": [], "newKeys": [], "chars": ""}, "isGuiOpen": False, "hotbar": 0}
    for k, v in over.items():
        (step["mouse"] if k in step["mouse"] else step["keyboard"] if k == "keys" else step)[k] = v
    return step


def test_attack_stuck_needs_exact_newbuttons():
    held = [_line(buttons=[0], newButtons=[0, 1])] + [_line(buttons=[0])] * 3
    assert convert_steps(held).n_kept == 4          # [0, 1] does not arm the rule
    stuck = [_line(buttons=[0], newButtons=[0])] + [_line(buttons=[0])] * 2 + [_line(buttons=[0], newButtons=[0])]
    rec = convert_steps(stuck)
    assert rec.n_attack_removed == 3 and list(rec.kept_steps) == [3] and rec.env["attack"][0] == 1


def test_hotbar_change_on_null_line_is_lost_and_unknown_keys_ignored():
    steps = [_line(), _line(hotbar=2), _line(hotbar=4, keys=["key.keyboard.w"]), _line(hotbar=4, keys=["key.keyboard.F3"]),
             _line(hotbar=4, keys=["key.keyboard.escape"])]
    rec = convert_steps(steps)
    assert list(rec.kept_steps) == [2, 4] and rec.n_hotbar_changes == 2
    assert rec.env["hotbar.5"][0] == 1 and rec.env["hotbar.3"].sum() == 0
    assert rec.env["ESC"][1] == 1 and rec.agent_actions()[0][1] == A.NULL_BUTTONS_IDX


def test_camera_truncation_toward_zero():
    steps = [_line(dx=3.0, dy=-7.0), _line(dx=23.0, dy=-11.0)]
    np.testing.assert_array_equal(convert_steps(steps, camera_int_truncation=True).env["camera"], [[-1, 0], [-1, 3]])
    np.testing.assert_array_equal(convert_steps(steps).env["camera"], [[-7 * 0.15, 3 * 0.15], [-11 * 0.15, 23 * 0.15]])


def test_parse_errors_name_file_and_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text(json.dumps(_line()) + "\n{not json\n")
    with pytest.raises(RecordingError, match=r"bad\.jsonl:2"):
        read_jsonl(p)
    p.write_text(json.dumps(_line()) + "\n" + json.dumps({"mouse": {}}) + "\n")
    with pytest.raises(RecordingError, match=r"bad\.jsonl:2"):
        read_jsonl(p)
    p.write_text(json.dumps(_line()) + "\n" + json.dumps({k: v for k, v in _line().items() if k != "hotbar"}) + "\n")
    with pytest.raises(RecordingError, match=r"bad\.jsonl:2"):
        convert_recording(p)
