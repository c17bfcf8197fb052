"""Under `dvc repro`, a stage refuses params that name a file dvc.yaml does not list among its deps
(stages/_common.py): DVC would otherwise reuse its result when that file changes."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from stages._common import run_stage
from steve1.params import load_params
from steve1.pipeline import render

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def project(tmp_path, shipped_params_file):
    """A DVC root with the shipped dvc.yaml and params that name two files it does not list."""
    (tmp_path / "dvc.yaml").write_text(render(REPO, load_params(shipped_params_file)))
    raw = yaml.safe_load(shipped_params_file.read_text())
    raw["evaluate"]["baseline_weights"] = "extra/base.weights"
    raw["embed"]["weights"] = "clip/attn.pth"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return tmp_path


def _run(project: Path, monkeypatch, dvc_stage: str | None) -> tuple[int, bool]:
    if dvc_stage is None:
        monkeypatch.delenv("DVC_STAGE", raising=False)
    else:
        monkeypatch.setenv("DVC_STAGE", dvc_stage)
    monkeypatch.setenv("DVC_ROOT", str(project))
    ran = []
    rc = run_stage(dvc_stage or "evaluate", ran.append, ["--params", str(project / "params.yaml")])
    return rc, bool(ran)


@pytest.mark.parametrize("dvc_stage, named", [("evaluate", "extra/base.weights"), ("embed-set@mine", "clip/attn.pth"),
                                              ("embed", "clip/attn.pth")])
def test_a_file_dvc_yaml_does_not_list_is_refused_before_any_work(project, monkeypatch, capsys, dvc_stage, named):
    assert _run(project, monkeypatch, dvc_stage) == (2, False)
    err = capsys.readouterr().err
    stage = dvc_stage.split("@")[0]
    assert err.startswith(f"error: {project / 'params.yaml'} names {named} for stage '{stage}', but dvc.yaml does not")
    assert "make dvc-yaml" in err


@pytest.mark.parametrize("dvc_stage", ["sample", "train", None, "sub/dvc.yaml:evaluate"])
def test_stages_that_read_no_such_file_or_runs_outside_our_dvc_yaml_go_on(project, monkeypatch, dvc_stage):
    """Other stages read neither file; run by hand (no DVC_STAGE) there is no DVC cache to keep right;
    another dvc.yaml's stage is not ours to check."""
    assert _run(project, monkeypatch, dvc_stage) == (0, True)


def test_after_make_dvc_yaml_the_stage_runs(project, monkeypatch):
    (project / "dvc.yaml").write_text(render(REPO, load_params(project / "params.yaml")))
    assert _run(project, monkeypatch, "evaluate") == (0, True)
    assert _run(project, monkeypatch, "embed-set@mine") == (0, True)
