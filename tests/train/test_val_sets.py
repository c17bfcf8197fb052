"""Validation per sampling set and ``train.best_on``: each set's val loss is logged, best.weights follows
the chosen set's loss, a set without val chunks is refused, and a resumed run keeps the chosen set's best."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import steve1.train.trainer as trainer
from steve1 import headline
from steve1.params import ParamsError, load_params, validate_params
from steve1.train.checkpoint import load_trainer_state
from steve1.train.trainer import train
from steve1.data.sampling import Sampling
from steve1.train.val_sets import BestOnError, best_criterion, improves, val_subset
from toy_world import make_mixed_world

# 3 batches of 2 calls = 6 optimizer steps; validation at steps 2, 4, 6; checkpoints at 0, 2, 4, 6
RUN = {"n_frames": 96, "val_freq": 2, "val_freq_begin": 2, "checkpoint_every_steps": 2, "log_every_steps": 2}
N_MAIN, N_MINE = 3, 6   # val chunks per set in make_mixed_world
REAL_VALIDATE = trainer.validate


def _column(run: Path, name: str) -> list[float]:
    rows = (run / "dvclive" / "plots" / "metrics" / f"{name}.tsv").read_text().splitlines()
    col = rows[0].split("\t").index(name.rsplit("/", 1)[-1])
    return [float(r.split("\t")[col]) for r in rows[1:]]


def _steps(run: Path, name: str) -> list[int]:
    rows = (run / "dvclive" / "plots" / "metrics" / f"{name}.tsv").read_text().splitlines()
    col = rows[0].split("\t").index("step")
    return [int(r.split("\t")[col]) for r in rows[1:]]


# ----------------------------------------------------------------------------- pure pieces

def _sampling(val_keys: list[str], train_keys: tuple[str, ...] = ()) -> Sampling:
    return Sampling(params={}, train=[], val=[], train_chunks=[(k, 15, 31) for k in train_keys],
                    val_chunks=[(k, 15 + i, 31 + i) for i, k in enumerate(val_keys)])


def test_val_subset_takes_every_nth_chunk_of_each_set():
    sampling = _sampling(["a", "b", "c", "d", "mine/x", "mine/y", "gen/z"])
    chunks, sets = val_subset(sampling, 3)
    assert [c[0] for c in chunks] == ["a", "d", "mine/x", "gen/z"]   # a global [::3] would drop mine and gen
    assert sets.names == ("main", "mine", "gen") and sets.chunk_set.tolist() == [0, 0, 1, 2]


def test_one_set_with_val_chunks_is_the_single_set_validation():
    sampling = _sampling(["a", "b", "c", "d", "e"], ("gen/z",))   # the embedded default: generated has train chunks only
    chunks, sets = val_subset(sampling, 2)
    assert sets is None and chunks == sampling.val_chunks[::2]
    assert best_criterion("main", sampling, "s.json") == "all"   # its loss is the overall one


def test_best_on_a_set_without_val_chunks_is_refused_naming_the_sampling_and_the_choices():
    sampling = _sampling(["a", "mine/x"])
    assert best_criterion("mine", sampling, "s.json") == "mine"
    assert best_criterion("all", sampling, "s.json") == "all"
    with pytest.raises(BestOnError, match=r"s.json: train.best_on is 'gen', but this sampling has no val chunks of "
                                         r"set 'gen' \(sets with val chunks: \['main', 'mine'\]\).*"
                                         r"one of \['all', 'main', 'mine'\]"):
        best_criterion("gen", sampling, "s.json")


def test_improves_picks_the_lowest_loss_of_the_chosen_set():
    history = [{"all": 3.0, "main": 2.0, "mine": 4.0}, {"all": 2.5, "main": 2.5, "mine": 2.0},
               {"all": 2.0, "main": 3.0, "mine": 2.2}]

    def best_index(criterion):
        best, at = None, None
        for i, losses in enumerate(history):
            score = improves(losses, criterion, best)
            if score is not None:
                best, at = score, i
        return at, best

    assert best_index("all") == (2, 2.0) and best_index("main") == (0, 2.0) and best_index("mine") == (1, 2.0)


def test_params_refuse_a_best_on_that_is_no_set_with_val_chunks():
    mix = {"custom": {"mine": {"source": "rec"}}, "sample": {"mix": [{"name": "mine", "train_frames": 8}]}}
    with pytest.raises(ParamsError, match=r"train.best_on is 'mine', expected one of \['all'\] \(sample.mix is empty"):
        validate_params({"train": {"best_on": "mine"}})
    with pytest.raises(ParamsError, match=r"train.best_on is 'other', expected one of \['all', 'main', 'mine'\]"):
        validate_params({**mix, "train": {"best_on": "other"}})
    with pytest.raises(ParamsError, match=r"train.best_on is 'mine', but that set has val_frames: 0"):
        validate_params({**mix, "train": {"best_on": "mine"}})
    assert validate_params({**mix, "train": {"best_on": "main"}}).train.best_on == "main"
    default = validate_params({})
    assert "best_on" not in default.model_dump()["train"]   # config.json and the run fingerprint keep their bytes


# ----------------------------------------------------------------------------- a mixed run

@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """One uninterrupted mixed run, best.weights chosen by set ``mine``; its run folder and summary."""
    params = make_mixed_world(tmp_path_factory.mktemp("mixed"), {**RUN, "best_on": "mine"})
    summary = train(load_params(params))
    return params.parent / "models" / "toy", summary


def test_each_set_gets_its_val_loss_beside_the_overall_one(mixed):
    run, _ = mixed
    main, mine, overall = _column(run, "val/main/loss"), _column(run, "val/mine/loss"), _column(run, "val_loss")
    assert _steps(run, "val/main/loss") == _steps(run, "val/mine/loss") == _steps(run, "val_loss") == [2, 4, 6]
    assert all(abs(a - b) > 1e-3 for a, b in zip(main, mine))   # two different sets, two different losses
    # the overall loss is the mean over every val chunk (the partial last batch included)
    assert overall == pytest.approx([(N_MAIN * a + N_MINE * b) / (N_MAIN + N_MINE) for a, b in zip(main, mine)],
                                    rel=1e-5)
    summary = json.loads((run / "dvclive" / "metrics.json").read_text())
    assert summary["val"]["mine"]["loss"] == mine[-1]


def test_best_weights_follow_the_chosen_sets_loss(mixed):
    run, summary = mixed
    mine, steps = _column(run, "val/mine/loss"), _steps(run, "val/mine/loss")
    best = json.loads((run / "best.json").read_text())
    assert best["step"] == steps[int(np.argmin(mine))] == summary["best_step"]
    assert summary["best_val_loss"] == min(mine) and best["best_on"] == "mine"
    assert best["val_losses"]["mine"] == min(mine)
    assert best["val_loss"] == _column(run, "val_loss")[steps.index(best["step"])]   # the headline stays overall
    figures = headline.train(json.loads((run / "dvclive" / "metrics.json").read_text()), best)
    assert set(figures) == {"loss", "val_loss", "frames_per_s", "main_val_loss", "mine_val_loss"}
    assert figures["mine_val_loss"] == headline.rounded(min(mine))


def _scripted(monkeypatch, script: list[dict[str, float]]) -> None:
    """validate() returns the next losses of ``script`` (the real validation still runs before)."""
    queue = list(script)

    def fake(*args, **kwargs):
        REAL_VALIDATE(*args, **kwargs)
        return queue.pop(0)

    monkeypatch.setattr(trainer, "validate", fake)


SCRIPT = [{"all": 5.0, "main": 4.0, "mine": 1.0}, {"all": 4.0, "main": 3.0, "mine": 2.0},
          {"all": 3.0, "main": 2.0, "mine": 3.0}]   # steps 2, 4, 6: mine is best at 2, all and main at 6


def test_best_on_a_set_chooses_the_step_of_that_sets_lowest_loss_not_the_overall_one(tmp_path, monkeypatch):
    _scripted(monkeypatch, SCRIPT)
    params = make_mixed_world(tmp_path, {**RUN, "best_on": "mine"})
    summary = train(load_params(params))
    best = json.loads((tmp_path / "models" / "toy" / "best.json").read_text())
    assert best["step"] == summary["best_step"] == 2   # the overall loss is lowest at step 6
    assert (best["val_loss"], best["val_losses"], summary["best_val_loss"]) == (5.0, {"main": 4.0, "mine": 1.0}, 1.0)


class Stop(Exception):
    pass


@pytest.mark.slow      # a run, killed and resumed: minutes
def test_a_resumed_run_keeps_the_chosen_sets_best(tmp_path, monkeypatch):
    _scripted(monkeypatch, SCRIPT[:2])
    params = make_mixed_world(tmp_path, {**RUN, "best_on": "mine"})
    run = tmp_path / "models" / "toy"

    def stop(counters):
        if counters["step"] >= 4:   # right after the step-4 checkpoint
            raise Stop

    with pytest.raises(Stop):
        train(load_params(params), on_step=stop)
    assert load_trainer_state(run / "checkpoint").best_val_loss == 1.0   # mine's loss at step 2
    _scripted(monkeypatch, SCRIPT[2:])   # a new process would start its script afresh
    summary = train(load_params(params))
    assert (summary["best_step"], summary["best_val_loss"]) == (2, 1.0)   # step 6's mine loss 3.0 is no better
    assert json.loads((run / "best.json").read_text())["step"] == 2


@pytest.mark.slow
def test_an_interrupted_mixed_run_resumes_its_set_curves_exactly(mixed, tmp_path):
    reference, _ = mixed
    params = make_mixed_world(tmp_path, {**RUN, "best_on": "mine"})

    def stop(counters):
        if counters["step"] >= 4:
            raise Stop

    with pytest.raises(Stop):
        train(load_params(params), on_step=stop)
    train(load_params(params))
    run = tmp_path / "models" / "toy"
    for name in ("val/main/loss", "val/mine/loss", "val_loss"):
        assert _column(run, name) == _column(reference, name), name
    for name in ("best.weights", "latest.weights"):
        ref, got = (torch.load(p / name, weights_only=True) for p in (reference, run))
        assert all(torch.equal(ref[k], got[k]) for k in ref), name
    assert json.loads((run / "best.json").read_text()) == json.loads((reference / "best.json").read_text())


def test_training_refuses_best_on_a_set_the_sampling_has_no_val_chunks_of(tmp_path):
    params = make_mixed_world(tmp_path, RUN)
    raw = load_params(params).model_dump(mode="json")
    raw["custom"]["gen"] = {"source": "rec"}
    raw["sample"]["mix"].append({"name": "gen", "train_frames": 8, "val_frames": 8})
    raw["train"]["best_on"] = "gen"
    with pytest.raises(BestOnError, match=r"mixed.json: train.best_on is 'gen', but this sampling has no val chunks"):
        train(validate_params(raw))
    assert not (tmp_path / "models" / "toy").exists()   # refused before any work


@pytest.mark.slow
def test_two_processes_sum_each_sets_losses_over_both(tmp_path):
    """Under ``accelerate launch`` the per-set sums and counts are reduced over processes: the sampler shards
    the 9 val chunks as 4 + 4 (the 9th, a chunk of mine, is the remainder), so 3 main and 5 mine chunks count."""
    import subprocess
    import sys

    from test_train_run import REPO, _env, _free_port

    params = make_mixed_world(tmp_path, {**RUN, "deepspeed": "zero2", "batch_size": 1, "best_on": "mine"})
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(REPO / "configs" / "accelerate" / "multi_gpu.yaml"), "--num_processes", "2",
           "--main_process_port", str(_free_port()), "-m", "stages.train", "--params", str(params)]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "best val loss of set 'mine'" in proc.stdout
    run = tmp_path / "models" / "toy"
    assert json.loads((run / "config.json").read_text())["world_size"] == 2
    main, mine, overall = _column(run, "val/main/loss"), _column(run, "val/mine/loss"), _column(run, "val_loss")
    assert overall == pytest.approx([(3 * a + 5 * b) / 8 for a, b in zip(main, mine)], rel=1e-5)
    assert json.loads((run / "best.json").read_text())["step"] == _steps(run, "val_loss")[int(np.argmin(mine))]
