"""The one parser of MineRL env-action dicts: custom ``actions.jsonl`` and STEVE-1 ``actions.pkl`` read alike."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from steve1 import actions as A
from steve1.data.action_dicts import ActionOrigin, parse_action_dicts
from steve1.data.custom import env_actions_from_dicts
from steve1.data.decode import DecodeSkip
from steve1.data.steve1_format import env_actions

STEPS = [{"forward": 1, "camera": [0.5, -2.0]}, {}, {"attack": True, "camera": (0, 0)},
         {"camera": [[1.0, 2.0]]}, {"hotbar.3": 1.0, "jump": 0}]


def test_both_importers_read_the_same_steps_through_one_parser():
    buttons, camera = parse_action_dicts(STEPS, ActionOrigin("a"))
    assert buttons[0, A.ENV_BUTTON_KEYS.index("forward")] == 1 and buttons[2, A.ENV_BUTTON_KEYS.index("attack")] == 1
    np.testing.assert_array_equal(camera[[0, 3]], [[0.5, -2.0], [1.0, 2.0]])
    every = env_actions(list(STEPS), Path("actions.pkl"))          # STEVE-1: every step, null ones too
    kept = env_actions_from_dicts(list(STEPS), "actions.jsonl")     # custom: null steps dropped
    assert every.is_null.tolist() == kept.is_null.tolist() == [False, True, False, False, False]
    assert kept.kept_steps.tolist() == [0, 2, 3, 4]
    for key in (*A.ENV_BUTTON_KEYS, A.CAMERA_KEY):
        np.testing.assert_array_equal(every.env[key][kept.kept_steps], kept.env[key])


@pytest.mark.parametrize("origin, where", [(ActionOrigin("x.jsonl", lines=True), "x.jsonl:2: "),
                                           (ActionOrigin("x.pkl"), "x.pkl: action 1: ")])
def test_errors_name_the_origin_step_and_key(origin, where):
    for step, needle in (({"fly": 1}, "unknown key 'fly'"), ({"use": 3}, "key 'use': value 3, expected 0 or 1"),
                         ({"camera": [1.0]}, "key 'camera': value [1.0], expected [pitch, yaw]"),
                         ([1, 2], "a list, expected a dict")):
        with pytest.raises(DecodeSkip) as exc:
            parse_action_dicts([{}, step], origin)
        assert str(exc.value).startswith(where) and needle in str(exc.value)
