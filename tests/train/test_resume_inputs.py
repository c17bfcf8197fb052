"""Resume only the same run: the fingerprint covers the declared train params and the content of the
data they read. New data under the same params (source.seed 0 -> 1 once resumed the old checkpoint and
handed back its weights; a new chunk count crashed the loader) sets the old checkpoint aside and trains
afresh."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from steve1.data import formats
from steve1.data.sampling import make_sampling
from steve1.io import write_json_atomic
from steve1.params import load_params, validate_params
from steve1.train.trainer import config_fingerprint, train
from toy_world import EPISODES, T, make_world

RUN = {"deepspeed": "none", "n_frames": 64, "checkpoint_every_steps": 2, "log_every_steps": 2, "val_freq": 2,
       "val_freq_begin": 2}


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _n_chunks(root: Path) -> int:
    return len(json.loads((root / "data" / "samplings" / "toy.json").read_text())["chunks"]["train"])


def test_new_data_trains_afresh_and_the_same_data_resumes(tmp_path, caplog):
    params = make_world(tmp_path, RUN)
    run = tmp_path / "models" / "toy"
    train(load_params(params))
    first, config = _weights(run / "latest.weights"), json.loads((run / "config.json").read_text())
    assert (run / "checkpoint").is_dir()
    # config.json records the keys the train stage declares (steve1.shapes), not every param
    assert set(config["params"]) == {"learning_rate", "train", "sample", "paths"}
    assert set(config["params"]["sample"]) == {"name", "T"} and "num_workers" not in config["params"]["train"]

    # the same params and data: the finished run is resumed (its weights, not a new run)
    with caplog.at_level(logging.INFO):
        train(load_params(params))
    assert "resumed" in caplog.text and _same(first, _weights(run / "latest.weights"))

    # another sampling (fewer episodes: another chunk count) under the same params
    n_before = _n_chunks(tmp_path)
    body = make_sampling({e: n for e, n in EPISODES.items() if e != "ep-c"}, train_frames=10_000, val_frames=1,
                         seed=0, T=T, min_btwn_goals=15, val_episodes=["ep-v"])
    sample = {"name": "toy", "train_frames": 10_000, "val_frames": 1, "seed": 0, "T": T, "min_btwn_goals": 15,
              "max_btwn_goals": 30}
    write_json_atomic(tmp_path / "data" / "samplings" / "toy.json",
                      {"format_version": formats.SAMPLING_FORMAT_VERSION, "params": sample, "invalid": [], **body})
    assert _n_chunks(tmp_path) != n_before
    caplog.clear()
    with caplog.at_level(logging.INFO):
        train(load_params(params))                    # no "loader state has n_chunks=..." crash
    lines = [r.getMessage() for r in caplog.records if "fingerprint mismatch" in r.getMessage()]
    assert len(lines) == 1 and "removed" in lines[0] and "resumed" not in caplog.text
    second = _weights(run / "latest.weights")
    assert not _same(first, second)                   # never the old weights handed back
    assert json.loads((run / "config.json").read_text())["fingerprint"] != config["fingerprint"]


def test_changed_episode_content_under_the_same_sampling_trains_afresh(tmp_path, caplog):
    params = make_world(tmp_path, RUN)
    train(load_params(params))
    run = tmp_path / "models" / "toy"
    first = _weights(run / "latest.weights")
    embeds = tmp_path / "data" / "embeds" / "ep-a.h5"
    import h5py

    with h5py.File(embeds, "r+") as f:                # same names, same chunk count, other goal embeddings
        ds = f[formats.EMBEDS]
        ds[...] = ds[...] * 0.5 + 0.25
    caplog.clear()
    with caplog.at_level(logging.INFO):
        train(load_params(params))
    assert "fingerprint mismatch" in caplog.text and "resumed" not in caplog.text
    assert not _same(first, _weights(run / "latest.weights"))


def test_fingerprint_covers_declared_params_and_inputs_only():
    base = validate_params({})
    assert config_fingerprint(base, "x") == config_fingerprint(
        validate_params({"train": {"val_freq": 7, "run": "x", "num_workers": 3}, "decode": {"workers": 4}}), "x")
    assert config_fingerprint(base, "x") != config_fingerprint(base, "y")
    for changed in ({"learning_rate": 1e-5}, {"train": {"seed": 1}}, {"train": {"in_weights": "a.weights"}}):
        assert config_fingerprint(validate_params(changed), "x") != config_fingerprint(base, "x"), changed
