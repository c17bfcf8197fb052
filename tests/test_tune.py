"""`steve1 tune`: an Optuna study whose trials are DVC experiments. The study logic runs against a stub of
DVC's queue (the same interface as DvcQueueRunner: submit, start, poll, curve, stop); one slow test runs
a real study of queued `dvc exp run`s in a tiny DVC repository."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fixtures.dvc_repo import tiny_dvc_repo
from fixtures.project import shipped_params
from steve1.params import validate_params
from steve1.shapes import nested
from steve1.tune import (TrialStatus, TuneError, _flat, distributions, experiment_name, load_tune, run_study,
                         yaml_value)

ROOT = Path(__file__).resolve().parents[1]
RAW = yaml.safe_load(shipped_params())   # the project's, whatever the workspace's params.yaml holds
STEPS = [0, 10, 20, 30]


class FakeDvc:
    """DVC's experiment queue as the tune loop sees it: queued experiments start (``jobs`` at a time),
    log one validation step per look, then finish with their metrics; the state outlives a search."""

    def __init__(self, raw, loss=None, fail=(), bad=()):
        self.raw = raw
        self.exps: dict[str, dict] = {}
        self.submits: list[str] = []
        self.stopped: list[str] = []
        self.jobs = 0
        self.loss = loss or (lambda ov: abs(float(ov.get("learning_rate", 1e-4)) - 1e-4) * 1e3 + 1.0)
        self.fail, self.bad = set(fail), set(bad)

    def tick(self):
        running = [e for e in self.exps.values() if e["state"] == "running"]
        for e in running:
            e["steps"] += 1
            if e["steps"] >= len(STEPS):
                if e["name"] in self.fail:
                    e["state"], e["error"] = "failed", "toy failure"
                else:
                    e["state"] = "done"
        free = self.jobs - sum(e["state"] == "running" for e in self.exps.values())
        for e in self.exps.values():
            if free > 0 and e["state"] == "queued":
                e["state"], free = "running", free - 1

    def curve(self, e):
        base = 100.0 if e["name"] in self.bad else self.loss(e["overrides"])
        return [(s, base + 1.0 / (s + 1)) for s in STEPS[: e["steps"]]]


class FakeRunner:
    def __init__(self, dvc: FakeDvc, interrupt_submit_of=None):
        self.dvc = dvc
        self.interrupt_submit_of = interrupt_submit_of

    def submit(self, name, overrides):
        if name == self.interrupt_submit_of:
            raise KeyboardInterrupt  # the search is killed after asking, before queueing
        assert name not in self.dvc.exps, f"{name} queued twice"
        self.dvc.submits.append(name)
        self.dvc.exps[name] = {"name": name, "overrides": dict(overrides), "state": "queued", "steps": 0}

    def start(self, jobs):
        self.dvc.jobs = jobs

    def poll(self):
        self.dvc.tick()
        out = {}
        for name, e in self.dvc.exps.items():
            metrics = {}
            if e["state"] == "done":
                metrics = {"val_loss": min(v for _, v in self.dvc.curve(e)), "nll": 2.0}
            out[name] = TrialStatus(state=e["state"], metrics=metrics, error=e.get("error"),
                                    params=_flat(nested(e["overrides"], self.dvc.raw)))
        return out

    def curve(self, name, status, path):
        assert path == "models/default/dvclive/plots/metrics/val_loss.tsv"
        return self.dvc.curve(self.dvc.exps[name])

    def stop(self, name):
        self.dvc.stopped.append(name)
        self.dvc.exps[name]["state"] = "failed"

    def reason(self, name, status):
        return f"dvc queue logs {name}: {status.error}"

    def baseline(self):
        return _flat(self.dvc.raw)


def _raw(**tune):
    raw = copy.deepcopy(RAW)
    raw["tune"] = {**raw["tune"], "poll_s": 0.01, **tune}
    return raw


def _study(tmp_path, raw, dvc=None, lines=None, **kw):
    params = validate_params(raw)
    dvc = dvc or FakeDvc(raw)
    runner = kw.pop("runner", None) or FakeRunner(dvc)
    lines = [] if lines is None else lines
    summary = run_study(params.tune, params, raw, runner, root=tmp_path, sleep=lambda s: None, echo=lines.append, **kw)
    return summary, dvc, lines


def _proposals(summary):
    return [(t["number"], t["params"]) for t in summary.trials]


def test_every_schema_key_may_be_searched_even_one_left_out_of_its_sections_dump():
    raw = _raw(space={"train.best_on": {"choices": ["all"]}, "train.augment.hue": {"low": 0.0, "high": 0.1},
                      "train.batch_size": {"low": 1, "high": 4}})
    dists = distributions(validate_params(raw).tune, raw)
    assert dists["train.batch_size"].__class__.__name__ == "IntDistribution"
    assert dists["train.augment.hue"].__class__.__name__ == "FloatDistribution"


def test_the_shipped_study_is_the_guides_sweep_and_valid(shipped_params_file):
    cfg, params, raw = load_tune(shipped_params_file)
    dists = distributions(cfg, raw)
    assert set(dists) == {"learning_rate", "train.freeze"} and cfg.objective == "val_loss" and cfg.n_trials == 4


def test_a_seeded_study_proposes_the_same_trials(tmp_path):
    raw = _raw(sampler="tpe", n_trials=4)
    a, _, _ = _study(tmp_path / "a", raw)
    b, _, _ = _study(tmp_path / "b", raw)
    assert _proposals(a) == _proposals(b)
    assert len({json.dumps(p) for _, p in _proposals(a)}) == 4          # four different points
    assert all(1e-5 <= p["learning_rate"] <= 1e-3 and p["train.freeze"] in ([], ["cnn", "transformer"])
               for _, p in _proposals(a))
    c, _, _ = _study(tmp_path / "c", _raw(sampler="tpe", n_trials=4, seed=1))
    assert _proposals(c) != _proposals(a)


def test_every_trial_is_a_queued_experiment_and_the_best_is_a_params_diff(tmp_path):
    summary, dvc, lines = _study(tmp_path, _raw(n_trials=3, pruner="none"))
    assert dvc.submits == [experiment_name("default", n) for n in range(3)] == ["default-t0", "default-t1", "default-t2"]
    assert [t["state"] for t in summary.trials] == ["complete"] * 3
    best = min(summary.trials, key=lambda t: t["value"])
    assert summary.best["number"] == best["number"] and summary.best["experiment"] == f"default-t{best['number']}"
    assert summary.best["diff"]["learning_rate"] == [RAW["learning_rate"], best["params"]["learning_rate"]]
    text = "\n".join(summary.lines())
    assert f"keep it: dvc exp apply default-t{best['number']}" in text and "learning_rate: 4e-05 -> " in text
    assert any(line.startswith("trial #0: queued default-t0 -S learning_rate=") for line in lines)
    assert (tmp_path / "tune" / "optuna.db").is_file()   # optuna-dashboard sqlite:///tune/optuna.db


def test_a_killed_search_resumes_with_no_trial_lost_or_repeated(tmp_path):
    raw = _raw(n_trials=4, jobs=2, pruner="none")
    whole, _, _ = _study(tmp_path / "whole", raw)

    dvc = FakeDvc(raw)
    # killed while two trials run (the queue's workers go on without the search)
    _study(tmp_path / "k", raw, dvc=dvc, max_polls=2)
    assert dvc.submits == ["default-t0", "default-t1"]
    # killed again between asking trial 2 and queueing it
    lines: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        _study(tmp_path / "k", raw, dvc=dvc, runner=FakeRunner(dvc, interrupt_submit_of="default-t2"), lines=lines)
    assert lines[:2] == ["trial #0: resumed, watching default-t0", "trial #1: resumed, watching default-t1"]
    assert dvc.submits == ["default-t0", "default-t1"]
    summary, _, lines = _study(tmp_path / "k", raw, dvc=dvc)
    assert lines[0].startswith("trial #2: queued default-t2 ")       # asked before the kill, queued now
    assert sorted(dvc.submits) == ["default-t0", "default-t1", "default-t2", "default-t3"]   # each once
    assert [t["state"] for t in summary.trials] == ["complete"] * 4
    assert _proposals(summary) == _proposals(whole)      # the same trials as a search never killed
    again, _, _ = _study(tmp_path / "k", raw, dvc=dvc)   # a finished study runs nothing more
    assert len(again.trials) == 4 and len(dvc.submits) == 4


def test_a_hopeless_trial_is_pruned_from_its_validation_curve(tmp_path):
    raw = _raw(n_trials=4, jobs=1, pruner="median", prune_after_trials=2)
    dvc = FakeDvc(raw, bad={"default-t2"})
    summary, dvc, lines = _study(tmp_path, raw, dvc=dvc)
    assert [t["state"] for t in summary.trials] == ["complete", "complete", "pruned", "complete"]
    assert dvc.stopped == ["default-t2"]
    assert summary.trials[2]["reason"].startswith("pruned at step 0")
    assert "trial #2 (default-t2) pruned at step 0" in lines
    # trials no worse than the median are not pruned
    clean, dvc2, _ = _study(tmp_path / "clean", raw, dvc=FakeDvc(raw, loss=lambda overrides: 1.0))
    assert [t["state"] for t in clean.trials] == ["complete"] * 4 and dvc2.stopped == []


def test_a_failed_trial_is_recorded_with_its_reason_and_the_study_goes_on(tmp_path):
    raw = _raw(n_trials=3, pruner="none")
    summary, _, lines = _study(tmp_path, raw, dvc=FakeDvc(raw, fail={"default-t1"}))
    assert [t["state"] for t in summary.trials] == ["complete", "fail", "complete"]
    assert summary.trials[1]["reason"] == "dvc queue logs default-t1: toy failure"
    # an objective the finished experiment lacks fails that trial, naming what it has
    raw = _raw(n_trials=2, pruner="none", objective={"val_loss": 1.0, "delta_nll": 1.0})
    summary, _, _ = _study(tmp_path / "o", raw)
    assert [t["state"] for t in summary.trials] == ["fail", "fail"]
    assert "has no delta_nll in its metrics (it has nll, val_loss)" in summary.trials[0]["reason"]


def test_a_weighted_objective_sums_its_metrics(tmp_path):
    raw = _raw(n_trials=2, pruner="none", objective={"val_loss": 2.0, "nll": -1.0})
    summary, dvc, _ = _study(tmp_path, raw)
    for t in summary.trials:
        e = dvc.exps[t["experiment"]]
        assert t["value"] == pytest.approx(2.0 * min(v for _, v in dvc.curve(e)) - 2.0)


@pytest.mark.parametrize("tune, message", [
    ({"space": {"train.lr": {"low": 1e-5, "high": 1e-3}}},
     "tune.space.train.lr: 'train.lr' is not a param of params.yaml's schema"),
    ({"space": {"train.augment": {"choices": [{}]}}}, "tune.space.train.augment: 'train.augment' is a whole section"),
    ({"space": {"learning_rate": {"low": 1e-5, "high": 2.0}}},
     "tune.space.learning_rate: high 2.0 is refused by the schema: key 'learning_rate'"),
    ({"space": {"train.preset": {"choices": ["tiny", "4x"]}}},
     "tune.space.train.preset: choice '4x' is refused by the schema: key 'train.preset'"),
    ({"space": {"train.preset": {"low": 1, "high": 3}}}, "tune.space.train.preset: 'train.preset' is str"),
    ({"space": {"train.batch_size": {"low": 1, "high": 2.5}}},
     "tune.space.train.batch_size: 'train.batch_size' is an integer param"),
    ({"space": {"tune.seed": {"choices": [1, 2]}}}, "tune.space.tune.seed: the tune section is the search's own"),
    ({"space": {}}, "tune.space is empty"),
    ({"objective": "val_los"}, "tune.objective: 'val_los' is not a headline metric"),
    ({"objective": "mine_val_loss"}, "tune.objective: 'mine_val_loss' is not a headline metric"),
    ({"objective": "main_val_loss"}, "tune.objective: 'main_val_loss' exists only when two or more sampling sets"),
])
def test_bad_input_is_refused_before_any_trial_naming_the_key(tmp_path, tune, message):
    raw = _raw(**tune)
    dvc = FakeDvc(raw)
    with pytest.raises(TuneError) as err:
        _study(tmp_path, raw, dvc=dvc)
    assert message in str(err.value)
    assert dvc.submits == [] and not (tmp_path / "tune").exists()


def test_the_schema_refuses_a_malformed_space_entry():
    from steve1.params import ParamsError

    for entry, why in [({"low": 1.0}, "give choices, or both low and high"), ({"low": 2, "high": 1}, "must be below"),
                       ({"low": 0.0, "high": 1.0, "log": True}, "log: true needs low > 0"),
                       ({"choices": [1], "low": 0, "high": 1}, "either choices or low/high")]:
        with pytest.raises(ParamsError, match="tune.space.learning_rate"):
            validate_params(_raw(space={"learning_rate": entry}))
        with pytest.raises(ParamsError, match=why):
            validate_params(_raw(space={"learning_rate": entry}))


def test_a_study_made_with_another_config_is_not_resumed_as_this_one(tmp_path):
    _study(tmp_path, _raw(n_trials=1, pruner="none"))
    with pytest.raises(TuneError, match="was made with another space, objective, sampler or seed"):
        _study(tmp_path, _raw(n_trials=1, pruner="none", seed=5))


def test_overrides_are_spelled_as_yaml_that_reads_back_as_the_value():
    for value in [1e-5, 3e-4, 0.5, 2, True, None, ["cnn", "transformer"], "zero2", 1.5e-10]:
        assert yaml.safe_load(yaml_value(value)) == value, value
    assert yaml_value(1e-5) == "1.0e-05"


@pytest.mark.slow
def test_a_real_study_of_queued_dvc_experiments(tmp_path):
    """Four trials as `dvc exp run --queue` in a tiny DVC repo whose one stage writes the train metrics and
    dvclive curve from learning_rate; the third is made hopeless (pruned), a failing one is recorded."""
    # seed 99 proposes train.seed 0, 0, 7, 1: two good trials, a hopeless one, a failing one
    raw = _raw(n_trials=4, jobs=1, poll_s=1.0, prune_after_trials=2, seed=99,
               space={"learning_rate": {"low": 1e-5, "high": 1e-3, "log": True},
                      "train.seed": {"choices": [0, 1, 7]}})
    run = tiny_dvc_repo(tmp_path, params=yaml.safe_dump(raw, sort_keys=False),
                        stage_params=["learning_rate", "train.seed"], outs=["models/default/dvclive"],
                        files={".gitignore": "/tune/\n"}, train_py=(
        "import json, math, os, time, yaml\n"
        "p = yaml.safe_load(open('params.yaml'))\n"
        "lr, seed = p['learning_rate'], p['train']['seed']\n"
        "assert isinstance(lr, float), lr\n"
        "if seed == 1: raise SystemExit('toy failure: seed 1')\n"
        "d = 'models/default/dvclive/plots/metrics'\n"
        "os.makedirs(d, exist_ok=True)\n"
        "base = 100.0 if seed == 7 else abs(math.log10(lr) + 4) + 1\n"
        "rows = ['step\\tval_loss']\n"
        "for s in range(0, 40, 10):\n"
        "    rows.append(f'{s}\\t{base + 1 / (s + 1)}')\n"
        "    open(d + '/val_loss.tsv', 'w').write('\\n'.join(rows) + '\\n')\n"
        "    time.sleep(4.0 if seed == 7 else 0.5)\n"   # the hopeless one runs long enough to be seen running
        "json.dump({'loss': 1.0, 'val_loss': base, 'frames_per_s': 5.0}, open('models/default/metrics.json', 'w'))\n"))
    try:
        out = run(sys.executable, "-m", "steve1.cli", "tune", "--json", check=False)
        assert out.returncode == 0, out.stderr[-3000:]
        summary = json.loads(out.stdout)
        shown = run(sys.executable, "-m", "steve1.cli", "compare").stdout
    finally:
        run(sys.executable, "-m", "dvc", "queue", "stop", "--kill", check=False)
    trials = summary["trials"]
    assert [t["experiment"] for t in trials] == ["default-t0", "default-t1", "default-t2", "default-t3"]
    assert [t["params"]["train.seed"] for t in trials] == [0, 0, 7, 1]
    assert [t["state"] for t in trials] == ["complete", "complete", "pruned", "fail"], trials
    assert re.match(r"pruned at step \d+: worse than the median", trials[2]["reason"]), trials[2]
    assert "toy failure: seed 1" in trials[3]["reason"] and "ERROR: failed to reproduce 'train'" in trials[3]["reason"]
    import optuna

    stored = optuna.load_study(study_name="default", storage=f"sqlite:///{tmp_path / 'tune' / 'optuna.db'}").trials
    assert sorted(stored[0].intermediate_values) == [0, 10, 20, 30]
    assert stored[3].intermediate_values == {}   # not the baseline's curve, which the run's copy starts with
    best = min(trials[:2], key=lambda t: t["value"])
    assert summary["best"]["experiment"] == best["experiment"]
    assert summary["best"]["diff"] == {"learning_rate": [RAW["learning_rate"], best["params"]["learning_rate"]]}
    rows = {line.split()[0]: line.split() for line in shown.splitlines()[2:]}
    assert rows["default-t0"][1] == rows["default-t1"][1] == "done" and rows["default-t3"][1] == "failed", shown
    run(sys.executable, "-m", "dvc", "exp", "apply", summary["best"]["experiment"])
    applied = yaml.safe_load((tmp_path / "params.yaml").read_text())
    assert applied["learning_rate"] == summary["best"]["diff"]["learning_rate"][1]


def test_a_choice_naming_a_file_dvc_yaml_does_not_list_is_refused_before_any_trial(tmp_path, shipped_params_file):
    """A trial whose params name an unlisted file would be refused by its stage (stages/_common.py)."""
    from steve1.tune import check_named_files

    from steve1.params import load_params
    from steve1.pipeline import render

    (tmp_path / "dvc.yaml").write_text(render(ROOT, load_params(shipped_params_file)))   # the shipped one
    raw = yaml.safe_load(shipped_params_file.read_text())
    inside = ["data/weights/a.weights", "data/weights/b.weights"]          # in ${weights.dir}, a dep of train
    raw["tune"] = {"space": {"train.in_weights": {"choices": inside}}}
    cfg = validate_params(raw).tune
    check_named_files(cfg, raw, tmp_path)
    raw["tune"]["space"]["train.in_weights"]["choices"] = [*inside, "elsewhere/c.weights"]
    with pytest.raises(TuneError, match=r"tune.space.train.in_weights: choice 'elsewhere/c.weights' names "
                                        r"elsewhere/c.weights, which dvc.yaml does not list"):
        check_named_files(validate_params(raw).tune, raw, tmp_path)
    raw["tune"]["space"] = {"learning_rate": {"low": 1.0e-5, "high": 1.0e-3, "log": True}}
    raw["evaluate"]["baseline_weights"] = "extra/base.weights"
    with pytest.raises(TuneError, match=r"params.yaml names extra/base.weights, which dvc.yaml does not list"):
        check_named_files(validate_params(raw).tune, raw, tmp_path)


def test_a_failed_dvc_command_is_a_user_error_with_dvcs_words(tmp_path):
    """Outside a DVC repository the study's first dvc call fails: one error carrying DVC's message."""
    from steve1.errors import UserError
    from steve1.tune import DvcCommandError, DvcQueueRunner

    with pytest.raises(DvcCommandError, match="dvc exp run --queue --name t0 .*failed: .*") as info:
        DvcQueueRunner(tmp_path).submit("t0", {"learning_rate": 1e-4})
    assert isinstance(info.value, UserError)


def test_a_failed_runs_reason_is_its_last_words_and_dvcs_error_or_says_it_was_killed(monkeypatch):
    from steve1.tune import DvcQueueRunner

    runner = DvcQueueRunner(".")
    logs = {"a": "Running stage 'train':\n> python -m stages.train\nerror: key 'x' is bad\n"
                 "ERROR: failed to reproduce 'train': exited with 1\nERROR: failed to reproduce 'train'\n",
            "b": "Stage 'sample' didn't change, skipping\nStage 'prior' didn't change, skipping\n"}
    monkeypatch.setattr(runner, "_dvc", lambda *args, check=True: subprocess.CompletedProcess(args, 0, logs[args[-1]], ""))
    status = TrialStatus(state="failed")
    assert runner.reason("a", status) == ("> python -m stages.train | error: key 'x' is bad | "
                                          "ERROR: failed to reproduce 'train': exited with 1")
    assert runner.reason("b", status) == ("stopped without an error in its log (killed?); the log ends: "
                                          "Stage 'prior' didn't change, skipping")



def test_nested_sets_dotted_keys_on_a_deep_copy():
    """One function sets dotted keys (a trial's -S overrides, a recorded config): the base is untouched."""
    base = {"train": {"learning_rate": 1.0, "batch_size": 2}, "sample": {"T": 40}}
    out = nested({"train.learning_rate": 3.0, "tune.n_trials": 5}, base)
    assert out == {"train": {"learning_rate": 3.0, "batch_size": 2}, "sample": {"T": 40}, "tune": {"n_trials": 5}}
    assert base == {"train": {"learning_rate": 1.0, "batch_size": 2}, "sample": {"T": 40}}
    assert nested({"a.b": 1, "a.c": 2}) == {"a": {"b": 1, "c": 2}}
