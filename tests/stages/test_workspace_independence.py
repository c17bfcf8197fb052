"""The data stages' outputs hold what params and inputs determine, nothing about where the workspace
lives: two workspaces at different paths give the same bytes (so the same dvc.lock hashes)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import yaml

from stages import decode as decode_stage
from stages import download as download_stage
from stages import embed as embed_stage
from stages import make_source
from stages import sample as sample_stage


def _digests(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _run_data_stages(ws: Path, repo_root: Path, monkeypatch) -> dict[str, dict[str, str]]:
    raw = yaml.safe_load((repo_root / "params.yaml").read_text())     # the shipped, relative paths
    raw["source"].update(n_synthetic=2, synthetic_steps=40, include_real=False, seed=3)
    raw["embed"].update(device="cpu")
    raw["sample"].update(T=16, mix=[])
    raw["train"].update(trunc_t=16)
    ws.mkdir(parents=True)
    (ws / "params.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.chdir(ws)
    for stage in (make_source, download_stage, decode_stage, embed_stage, sample_stage):
        assert stage.main(["--params", "params.yaml"]) == 0, stage.__name__
    return {name: _digests(ws / "data" / name) for name in ("source", "raw", "episodes", "embeds", "samplings")}


def test_two_workspaces_give_the_same_bytes(tmp_path, repo_root, monkeypatch):
    a = _run_data_stages(tmp_path / "a" / "deep" / "clone", repo_root, monkeypatch)
    b = _run_data_stages(tmp_path / "b", repo_root, monkeypatch)
    assert a["raw"] and a["episodes"] and a["embeds"] and a["samplings"] and "manifest.json" in a["raw"]
    assert a == b
    manifest = (tmp_path / "b" / "data" / "raw" / "manifest.json").read_text()
    assert str(tmp_path) not in manifest and "file:" not in manifest
    for h5 in (tmp_path / "b" / "data" / "episodes").glob("*.h5"):
        assert str(tmp_path).encode() not in h5.read_bytes(), h5.name
