"""The run state is the checkpoint's trainer_state.json: round trip, the pre-RunState layout, clear refusals."""

from __future__ import annotations

import json

import pytest

from steve1.params import load_params
from steve1.train.checkpoint import STATE_FILE, load_trainer_state
from steve1.train.run_state import RunState, RunStateError
from steve1.train.trainer import train
from toy_world import make_world

# A trainer_state.json as the trainer wrote it before RunState existed (its 12 keys, sorted).
OLD_FILE = {"batches": 4, "best_step": 8, "best_val_loss": 9.5, "fingerprint": "0123456789abcdef", "frames": 128,
            "last_ckpt_step": 8, "last_log_step": 8, "last_val_step": 8, "loader": {
                "batch_size": 2, "epoch": 0, "n_chunks": 20, "rank": 0, "seed": 0, "step": 4, "world_size": 1},
            "micro": 8, "next_snapshot_frames": 0, "step": 8}


def _write(folder, doc) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / STATE_FILE).write_text(json.dumps(doc))


def test_round_trip_and_the_pre_run_state_layout_loads(tmp_path):
    _write(tmp_path / "checkpoint", OLD_FILE)
    state = load_trainer_state(tmp_path / "checkpoint")
    assert state == RunState(**OLD_FILE)
    assert state.to_dict() == OLD_FILE  # the same keys and values go back to disk
    assert RunState.from_dict(json.loads(json.dumps(state.to_dict()))) == state
    fresh = RunState(fingerprint="f")
    assert RunState.from_dict(fresh.to_dict()) == fresh and fresh.best_val_loss is None


@pytest.mark.parametrize("change, words", [
    ({"step": None}, "missing key(s) ['step']"),
    ({"epochs": 3}, "unknown key(s) ['epochs']"),
    ({"frames": "128"}, "key 'frames' is '128', expected an integer"),
    ({"micro": True}, "key 'micro' is True, expected an integer"),
    ({"best_val_loss": "low"}, "key 'best_val_loss' is 'low', expected a number or null"),
    ({"loader": [0, 4]}, "key 'loader' is [0, 4], expected an object"),
])
def test_a_bad_state_names_the_file_and_the_key(tmp_path, change, words):
    doc = {k: v for k, v in {**OLD_FILE, **change}.items() if v is not None}
    _write(tmp_path / "checkpoint", doc)
    with pytest.raises(RunStateError) as err:
        load_trainer_state(tmp_path / "checkpoint")
    message = str(err.value)
    assert message.startswith(str(tmp_path / "checkpoint" / STATE_FILE)) and words in message
    assert "delete the checkpoint folder" in message


def test_a_file_that_is_not_a_json_object_is_refused(tmp_path):
    (tmp_path / STATE_FILE).write_text("{truncated")
    with pytest.raises(RunStateError, match="not valid JSON"):
        load_trainer_state(tmp_path)
    _write(tmp_path, [1, 2])
    with pytest.raises(RunStateError, match="expected a JSON object"):
        load_trainer_state(tmp_path)


def test_a_resumed_run_refuses_a_damaged_checkpoint(tmp_path):
    params = make_world(tmp_path, {"n_frames": 32, "checkpoint_every_steps": 1})
    train(load_params(params))
    state_file = tmp_path / "models" / "toy" / "checkpoint" / STATE_FILE
    doc = json.loads(state_file.read_text())
    assert RunState.from_dict(doc).to_dict() == doc
    del doc["frames"]
    state_file.write_text(json.dumps(doc))
    with pytest.raises(RunStateError, match=r"missing key\(s\) \['frames'\]") as err:
        train(load_params(params))
    assert str(state_file) in str(err.value)
