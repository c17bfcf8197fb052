"""`steve1 compare`: DVC's experiment records (the JSON of `dvc exp show --json`, DVC 3 layout) as one
table of at most 120 columns: baseline first, only the params that differ, the headline metrics."""

from __future__ import annotations

import copy
import csv
import io
import json
import sys

import pytest
import yaml

from fixtures.dvc_repo import tiny_dvc_repo
from fixtures.project import shipped_params
from steve1 import experiments as X

PARAMS = yaml.safe_load(shipped_params())   # the project's, whatever the workspace's params.yaml holds


def _metrics(val_loss, main=None, mine=None, delta=None, rollout=None, run="default"):
    train = {"loss": 3.0, "val_loss": val_loss, "frames_per_s": 123.4}
    if main is not None:
        train.update(main_val_loss=main, mine_val_loss=mine)
    ev = {"nll": val_loss + 1, "acc": 0.5, "goal_kl": 1e-6, "best_scale": 3.0}
    if delta is not None:
        ev.update(delta_nll=delta, main_delta_nll=delta / 2, mine_delta_nll=-delta)
    out = {f"models/{run}/metrics.json": {"data": train}, "eval/metrics.json": {"data": ev},
           "models/prior_metrics.json": {"data": {"val_loss": 99.0}},      # not a train figure: left out
           "reports/summary.json": {"data": {"drift": False, "drift_share": 0.1}}}
    if rollout is not None:
        out["eval/rollouts/default/metrics.json"] = {"data": {"standin": rollout}}
    return out


def _rec(rev, params, metrics, name=None, error=None):
    return {"rev": rev, "name": name, "error": error,
            "data": {"rev": rev, "timestamp": None, "params": {"params.yaml": {"data": params}}, "metrics": metrics,
                     "deps": {"stages/train.py": {"hash": "0" * 32}}, "outs": {}, "meta": {}}}


def _with(**changes):
    p = copy.deepcopy(PARAMS)
    for key, value in changes.items():
        node = p
        *parents, last = key.split("__")
        for part in parents:
            node = node[part]
        node[last] = value
    return p


def _exp(name, params, metrics, state=None, root=None):
    executor = None if state is None else {"state": state, "name": "dvc-task", "local": {
        "root": root, "log": None, "pid": None, "returncode": None, "task_id": name}}
    return {"name": name, "revs": [_rec(f"{name}-rev", params, metrics, name=name)], "executor": executor}


ROLLOUT = {"wood": 0.5, "dirt": 1.25, "seeds": 0.0, "explore": 12.5}


def shown():
    """A sweep as `dvc exp show --json` prints it: the workspace (as HEAD), the baseline, four done
    experiments of the guide's sweep, a failed, a running and a queued one."""
    base = _rec("a" * 40, PARAMS, _metrics(2.5, 2.4, 2.6, rollout=ROLLOUT), name="main")
    lr_freeze = _with(learning_rate=3e-4, train__freeze=["cnn", "transformer"])
    base["experiments"] = [
        _exp("lr-1e-4", _with(learning_rate=1e-4), _metrics(2.25, 2.2, 2.3, 0.25, rollout=ROLLOUT)),
        _exp("lr-3e-4-frozen", lr_freeze, _metrics(2.0, 2.3, 1.7, -0.125, rollout={**ROLLOUT, "wood": 1.5})),
        _exp("lr-1e-5", _with(learning_rate=1e-5), _metrics(2.75, 2.5, 3.0, 0.5, rollout=ROLLOUT)),
        _exp("augment", _with(train__augment__enabled=True), _metrics(2.4, 2.35, 2.45, 0.0625, rollout=ROLLOUT)),
        _exp("broken", _with(learning_rate=0.5), _metrics(2.5, 2.4, 2.6), state="failed"),
        _exp("running", _with(learning_rate=2e-4), _metrics(2.5, 2.4, 2.6), state="running", root="/tmp/x"),
        _exp("waiting", _with(learning_rate=5e-5), {}, state="queued"),
    ]
    workspace = _rec("workspace", PARAMS, _metrics(2.5, 2.4, 2.6, rollout=ROLLOUT))
    workspace["experiments"] = None
    return [workspace, base]


def test_rows_keep_every_experiment_baseline_first_with_its_state():
    rows = X.experiments(shown())
    assert [r.name for r in rows] == ["main", "lr-1e-4", "lr-3e-4-frozen", "lr-1e-5", "augment", "broken", "running",
                                      "waiting"]   # the workspace equals HEAD: one row says both
    assert [r.state for r in rows] == ["baseline", "done", "done", "done", "done", "failed", "running", "queued"]
    assert rows[6].root == "/tmp/x"
    # a run that has not finished shows no figures (DVC reports the baseline's files for it)
    assert rows[5].metrics == rows[6].metrics == rows[7].metrics == {}
    assert rows[2].metrics["mine_val_loss"] == 1.7 and rows[2].metrics["standin.wood"] == 1.5
    assert "frames_per_s" in rows[1].metrics and rows[1].metrics["val_loss"] == 2.25   # the train file, not prior's 99


def test_a_workspace_that_differs_from_head_is_its_own_first_row():
    data = shown()
    data[0]["data"]["params"]["params.yaml"]["data"] = _with(learning_rate=7e-5)
    rows = X.experiments(data)
    assert [r.name for r in rows[:2]] == ["workspace", "main"]
    assert X.differing_params(rows)[0] == "learning_rate"


def test_the_table_fits_120_columns_with_only_the_differing_params_and_the_headline_metrics():
    rows = X.experiments(shown())
    text = X.table(rows)
    lines = text.splitlines()
    assert max(map(len, lines)) <= 120, "\n" + text
    header = lines[0].split()
    assert header[:2] == ["experiment", "state"]
    assert X.differing_params(rows) == ["learning_rate", "train.freeze", "train.augment.enabled"]
    for col in ("learning_rate", "train.freeze", "augment.enabled", "val_loss", "main_val_loss", "mine_val_loss"):
        assert col in header, "\n" + text
    for absent in ("loss", "frames_per_s", "acc", "goal_kl", "paths.models", "sample.T"):  # not headline / same
        assert absent not in header
    assert lines[2].split()[:2] == ["main", "baseline"]            # the baseline's row first
    frozen = next(line for line in lines if line.startswith("lr-3e-4-frozen"))
    assert frozen.split() == ["lr-3e-4-frozen", "done", "0.0003", "[cnn,transformer]", "false", "2", "2.3", "1.7"]
    queued = next(line for line in lines if line.startswith("waiting"))
    assert queued.split() == ["waiting", "queued", "5e-05", "[]", "false", "-", "-", "-"]
    # what does not fit is named on the last line, never cut off silently
    assert lines[-2].startswith("(left out to fit 120 columns: delta_nll, main_delta_nll, mine_delta_nll, nll, ")
    assert lines[-1].endswith("standin.explore; --json or --csv has all)")


def test_the_guides_sweep_fits_with_its_deltas():
    data = shown()
    data[1]["experiments"] = [e for e in data[1]["experiments"] if e["name"].startswith("lr-")]
    text = X.table(X.experiments(data))
    assert max(map(len, text.splitlines())) <= 120, "\n" + text
    assert text.splitlines()[0].split() == ["experiment", "state", "learning_rate", "train.freeze", "val_loss",
                                            "main_val_loss", "mine_val_loss", "delta_nll"], text


def test_a_narrow_table_leaves_out_rollouts_before_val_losses_and_names_them():
    rows = X.experiments(shown())
    text = X.table(rows, width=80)
    assert max(map(len, text.splitlines())) <= 80, "\n" + text
    header = text.splitlines()[0].split()
    assert "val_loss" in header and "standin.wood" not in header
    note = " ".join(text[text.index("(left out to fit 80 columns:"):].split())
    assert "mine_val_loss, delta_nll" in note and "standin.wood" in note and note.endswith("--json or --csv has all)")


def test_sort_orders_the_experiments_by_a_metric_and_keeps_the_baseline_first():
    rows = X.sort_rows(X.experiments(shown()), "mine_val_loss")
    assert [r.name for r in rows][:5] == ["main", "lr-3e-4-frozen", "lr-1e-4", "augment", "lr-1e-5"]
    assert [r.name for r in rows][5:] == ["broken", "running", "waiting"]     # no figure: last
    assert X.sort_rows(X.experiments(shown()), "standin.wood", descending=True)[1].name == "lr-3e-4-frozen"
    with pytest.raises(X.ExperimentsError, match=r"--sort 'val_los'.*val_loss"):
        X.sort_rows(X.experiments(shown()), "val_los")


def test_json_and_csv_carry_every_column_uncut():
    rows = X.experiments(shown())
    recs = json.loads(X.to_json(rows))
    assert recs[0]["experiment"] == "main" and recs[0]["state"] == "baseline"
    frozen = recs[2]
    assert frozen["params"] == {"learning_rate": 3e-4, "train.freeze": ["cnn", "transformer"],
                                "train.augment.enabled": False}
    assert frozen["metrics"]["standin.wood"] == 1.5 and frozen["metrics"]["delta_nll"] == -0.125
    table = list(csv.DictReader(io.StringIO(X.to_csv(rows))))
    assert table[2]["experiment"] == "lr-3e-4-frozen" and json.loads(table[2]["train.freeze"]) == ["cnn", "transformer"]
    assert table[-1]["state"] == "queued" and table[-1]["val_loss"] == ""


def test_metrics_follow_each_rows_own_run_folder():
    data = shown()
    exp = _exp("other-run", _with(train__run="b"), _metrics(1.5, run="b"))
    data[1]["experiments"].append(exp)
    row = X.experiments(data)[-1]
    assert row.metrics["val_loss"] == 1.5


@pytest.mark.slow
def test_compare_reads_a_real_dvc_repo(tmp_path):
    """A tiny DVC project (one stage writing the train metrics file): a done and a queued experiment."""
    run = tiny_dvc_repo(tmp_path, params=shipped_params(),
                        stage_params=["learning_rate", "train.freeze"],
                        train_py="import json, os, yaml\np = yaml.safe_load(open('params.yaml'))\n"
                        "os.makedirs('models/default', exist_ok=True)\n"
                        "json.dump({'loss': 1.0, 'val_loss': p['learning_rate'] * 1000, 'frames_per_s': 5.0},"
                        " open('models/default/metrics.json', 'w'))\n")
    run(sys.executable, "-m", "dvc", "exp", "run", "-q", "--name", "fast", "-S", "learning_rate=1.0e-4")
    run(sys.executable, "-m", "dvc", "exp", "run", "--queue", "--name", "later", "-S", "train.freeze=[cnn]")
    text = run(sys.executable, "-m", "steve1.cli", "compare", "--sort", "val_loss").stdout
    lines = text.splitlines()
    assert max(map(len, lines)) <= 120
    assert lines[0].split() == ["experiment", "state", "learning_rate", "train.freeze", "val_loss"], text
    # the workspace holds the last experiment's results, so it is a row of its own, first
    assert [line.split()[0] for line in lines[2:]] == ["workspace", "master", "fast", "later"], text
    fast = next(line.split() for line in lines if line.startswith("fast"))
    assert fast == ["fast", "done", "0.0001", "[]", "0.1"], text
    later = next(line.split() for line in lines if line.startswith("later"))
    assert later == ["later", "queued", "0.0001", "[cnn]", "-"], text   # queued from the workspace's params
