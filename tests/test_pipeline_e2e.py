"""End to end at toy size: `dvc repro` runs every stage from a fresh copy (generated episodes mixed
in, rollouts in the stand-in world), `dvc metrics show` holds each stage's headline figures and
`dvc plots show` writes a page that loads nothing from the network; a second run does nothing, a
param change reruns only its dependents, and `dvc exp run -S learning_rate=...` shows up in
`dvc exp show`; editing a module makes exactly the stages that import it stale; the data stages
(generate included) run again from nothing give the same bytes.

The copy is a pristine copy of the project (tests/fixtures/project.py: its own files, params.yaml as
shipped), in a new git repo, with the project's virtual environment on PATH (what `make repro` sets up).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fixtures.project import commit, copy_project, init_git, project_env, run as _run
from steve1.layout import Layout
from steve1.params import load_params
from steve1.pipeline import ImportGraph, stages

# Whole `dvc repro` runs of every stage: minutes on 2 cores, the heaviest tests (slow tier: make test-slow)
pytestmark = [pytest.mark.slow, pytest.mark.ci]          # minutes: not in make test; CI runs it (make test-ci)

STAGES = ["make-source", "weights", "download", "decode", "embed", "generate", "embed-generated", "sample", "train",
          "prior", "evaluate", "report", "rollout"]


def _ran(output: str) -> set[str]:
    return {s for s in STAGES if f"Running stage '{s}'" in output}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("e2e") / "steve1"
    copy_project(root)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["source"].update(n_synthetic=3, synthetic_steps=300, include_real=False)  # toy size
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = project_env("e2e")
    init_git(root, env, "e2e")
    return root, env


def test_repro_then_noop_then_partial_then_experiment(project):
    root, env = project
    out = _run(["dvc", "repro"], root, env)
    assert _ran(out) == set(STAGES), out[-3000:]
    layout = Layout.from_params(load_params(root / "params.yaml"))
    assert json.loads((root / layout.eval_offline).read_text())["metrics"]["n_chunks"] > 0
    assert json.loads((root / layout.report_details).read_text())["splits"]["train"]["n_episodes"] > 0
    assert (root / layout.run.latest).is_file() and (root / layout.prior).is_file()
    generated = json.loads((root / layout.generated_manifest).read_text())["episodes"]
    sampling = json.loads((root / layout.sampling).read_text())
    assert all(r["status"] == "ok" for r in generated.values()) and sampling["sets"]["generated"]["totals"]["train"]["chunks"] > 0
    rollouts = json.loads((root / layout.rollouts.results).read_text())
    assert rollouts["env"]["kind"] == "standin" and rollouts["n_failed"] == 0
    assert len(list((root / layout.rollouts.videos).glob("*.mp4"))) == len(rollouts["episodes"])

    # dvc metrics show: each stage's headline figures, one short table
    shown = json.loads(subprocess.run(["dvc", "metrics", "show", "--json"], cwd=root, env=env, capture_output=True,
                                      text=True, check=True).stdout)
    (workspace,) = shown.values()                  # DVC 3 keys the workspace as ""
    files = {k: v["data"] for k, v in workspace["data"].items()}
    # the default sampling mixes the generated set (no val frames): the main set's figure per set
    assert set(files[str(layout.eval_metrics)]) == {"nll", "acc", "goal_kl", "best_scale", "main_nll"}
    assert files[str(layout.eval_metrics)]["nll"] > 0
    assert set(files[str(layout.run.metrics)]) == {"loss", "val_loss", "frames_per_s"}
    assert set(files[str(layout.report_summary)]) == {"drift", "drift_share"}
    assert set(files[str(layout.prior_metrics)]) == {"val_loss"}
    assert set(files[str(layout.rollouts.metrics)]["standin"]) == {"wood", "dirt", "seeds", "explore"}
    table = _run(["dvc", "metrics", "show"], root, env)
    assert len(table.splitlines()) == 1 + len(files), table

    # every plot renders from the offline template: no script is fetched from a CDN
    _run(["dvc", "plots", "show", "-o", "plots-html"], root, env)
    page = (root / "plots-html" / "index.html").read_text()
    assert "<script src=" not in page and "cdn.jsdelivr" not in page and "vegaEmbed(" in page

    out = _run(["dvc", "repro"], root, env)
    assert _ran(out) == set(), out[-3000:]
    assert "up to date" in _run(["dvc", "status"], root, env)

    params = yaml.safe_load((root / "params.yaml").read_text())
    params["report"]["column_threshold"] = 0.2
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = _run(["dvc", "repro"], root, env)
    assert _ran(out) == {"report"}, out[-3000:]

    commit(root, env, "report threshold")
    _run(["dvc", "exp", "run", "-S", "learning_rate=1e-5"], root, env)
    shown = json.loads(subprocess.run(["dvc", "exp", "show", "--json"], cwd=root, env=env, capture_output=True,
                                      text=True, check=True).stdout)
    exp = _experiment_with(shown, learning_rate=1e-5)
    metrics = exp["data"]["metrics"]
    assert metrics["eval/metrics.json"]["data"]["nll"] > 0, json.dumps(metrics)[:2000]
    assert "loss" in metrics["models/default/metrics.json"]["data"]

    # steve1 compare: the same records in 120 columns, the differing param and the headline metrics
    text = _run([sys.executable, "-m", "steve1.cli", "compare"], root, env)
    lines = [line for line in text.splitlines() if line.strip()]
    assert max(map(len, lines)) <= 120, text
    header = lines[0].split()
    assert header[:3] == ["experiment", "state", "learning_rate"] and "val_loss" in header and "nll" in header, text
    done = next(line.split() for line in lines[2:] if line.split()[1] == "done")
    assert done[2] == "1e-05" and float(done[header.index("val_loss")]) > 0, text


def _experiment_with(shown: list[dict], **params) -> dict:
    """The experiment rev of ``dvc exp show --json`` whose params.yaml has ``params``."""
    for baseline in shown:
        for exp in baseline.get("experiments") or []:
            for rev in exp.get("revs", []):
                values = ((rev.get("data") or {}).get("params", {}).get("params.yaml", {}).get("data", {}))
                if all(values.get(k) == v for k, v in params.items()):
                    return rev
    raise AssertionError(f"no experiment with {params} in dvc exp show: {json.dumps(shown)[:2000]}")


def _stale(root: Path, env: dict[str, str]) -> set[str]:
    """Stages `dvc status` reports as changed (their own deps or params, not what is downstream)."""
    out = subprocess.run(["dvc", "status", "--json"], cwd=root, env=env, capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout or "{}"))


@pytest.mark.parametrize("module", ["steve1/data/sampling.py", "steve1/data/formats.py", "steve1/params.py",
                                    "steve1/models/vpt.py"])
def test_editing_a_module_makes_exactly_its_importers_stale(project, module):
    root, env = project
    assert _stale(root, env) == set()
    path = root / module
    original = path.read_bytes()
    try:
        path.write_bytes(original + b"\n# an edit\n")
        # foreach stages (custom sets) have no instance while params.yaml names no set
        graph = ImportGraph(root)
        expected = {s.name for s in stages() if not s.foreach and module in graph.deps(s.module)}
        assert expected and _stale(root, env) == expected
    finally:
        path.write_bytes(original)
    assert _stale(root, env) == set()


def test_params_stale_what_they_shape_and_speed_knobs_nothing(project):
    """decode.frame_quality stales decode and generate; the speed-only keys stale nothing; pointing
    train.in_weights at a file makes it a dep of train once dvc.yaml is regenerated (steve1/shapes.py)."""
    root, env = project
    assert _stale(root, env) == set()
    path, original = root / "params.yaml", (root / "params.yaml").read_text()
    dvc_yaml = (root / "dvc.yaml").read_text()

    def edit(**changes) -> None:
        params = yaml.safe_load(original)
        for key, value in changes.items():
            section, name = key.split("__")
            params[section][name] = value
        path.write_text(yaml.safe_dump(params, sort_keys=False))

    try:
        edit(decode__workers=2, decode__video_threads=2, train__num_workers=1)
        assert _stale(root, env) == set()
        edit(decode__frame_quality=90)
        assert _stale(root, env) == {"decode", "generate"}
        start = root / "start" / "mine.weights"
        start.parent.mkdir()
        shutil.copyfile(root / "models" / "default" / "latest.weights", start)
        edit(train__in_weights="start/mine.weights")
        _run(["python", "-m", "steve1.pipeline"], root, env)
        assert "start/mine.weights" in yaml.safe_load((root / "dvc.yaml").read_text())["stages"]["train"]["deps"]
        assert "train" in _stale(root, env)
    finally:
        path.write_text(original)
        (root / "dvc.yaml").write_text(dvc_yaml)
        shutil.rmtree(root / "start", ignore_errors=True)
    assert _stale(root, env) == set()


def _digests(root: Path, folders: list[Path]) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for folder in folders for p in sorted((root / folder).rglob("*")) if p.is_file()}


def test_data_stages_from_nothing_give_the_same_bytes(project):
    root, env = project
    layout = Layout.from_params(load_params(root / "params.yaml"))
    folders = [layout.source, layout.raw, layout.episodes, layout.embeds, layout.generated, layout.samplings]
    before = _digests(root, folders)
    assert any(k.endswith(".h5") for k in before) and any(k.endswith("manifest.json") for k in before)
    lock = (root / "dvc.lock").read_text()
    for folder in folders:
        shutil.rmtree(root / folder)
    out = _run(["dvc", "repro", "--force", "sample"], root, env)
    assert {"make-source", "download", "decode", "embed", "generate", "embed-generated", "sample"} <= _ran(out), out[-3000:]
    assert _digests(root, folders) == before
    assert (root / "dvc.lock").read_text() == lock    # same md5 of every output


def test_custom_set_is_imported_embedded_and_mixed_by_dvc(project):
    """Your own recordings as tracked stages (kept last: it adds stages to the project)."""
    from fixtures.recordings import write_png_recording

    root, env = project
    for i in range(2):
        write_png_recording(root / "recordings", f"own-{i}", 100, seed=i)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["custom"] = {"mine": {"source": "recordings"}}
    params["sample"]["mix"] = [{"name": "mine", "train_frames": 128, "val_frames": 0}]
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = _run(["dvc", "repro", "sample"], root, env)
    ran = {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage '")}
    assert ran == {"import-set@mine", "embed-set@mine", "sample"}, out[-3000:]
    layout = Layout.from_params(load_params(root / "params.yaml"))
    doc = json.loads((root / layout.sampling).read_text())
    assert doc["sets"]["mine"]["episodes"] == str(layout.custom_set("mine").episodes)
    assert any(chunk[0].startswith("mine/own-") for chunk in doc["chunks"]["train"])
    # up to date up to sample; what reads the new sampling (train, evaluate, report) is stale, as it should be
    assert _stale(root, env) == {"train", "evaluate", "report"}
