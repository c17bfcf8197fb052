"""Drift reports on synthetic episodes: drift is found where the generators differ and not where they match."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from stages import report as report_stage
from steve1.actions import CAMERA_NULL_IDX
from steve1.data.episodes import Episode, FrameStorage, episode_path, write_embeds, write_episode
from steve1.data.formats import SAMPLING_FORMAT_VERSION
from steve1.data.sampling import MAIN_SET, Sampling, SamplingError
from steve1.eval import drift

N_STEPS = 500          # per episode
N_EPISODES = 4         # per split: 2000 steps, enough for distances well under the 0.1 threshold
DIM = 32               # embedding width (the real one is 512; the code does not care)
KEYS = ("attack", "forward", "jump", "inventory", "ESC", "hotbar.1")
# a fixed low-rank "world": every generator draws embeddings in the same subspace
WORLD = np.random.default_rng(1234).normal(size=(6, DIM)) * np.array([4, 3, 2, 1.5, 1, 0.5])[:, None]


def make_episode(root: Path, eid: str, seed: int, *, attack_p=0.1, camera_deg=1.0, still_p=0.4,
                 gui_p=0.05, embed_shift=0.0, n=N_STEPS) -> None:
    """One episode + embeds with i.i.d. steps drawn from the given rates."""
    rng = np.random.default_rng(seed)
    press = {k: (rng.random(n) < p).astype(np.uint8)
             for k, p in zip(KEYS, (attack_p, 0.5, 0.1, 0.02, 0.01, 0.03))}
    still = rng.random(n) < still_p
    cam = np.where(still[:, None], 0.0, rng.normal(0.0, camera_deg, (n, 2))).astype(np.float32)
    null_buttons = rng.random(n) < 0.3
    ep = Episode(
        episode_id=eid, frames=np.zeros((n, 128, 128, 3), np.uint8),
        buttons=np.where(null_buttons, 0, rng.integers(1, 8640, n)),
        camera=np.where(still, CAMERA_NULL_IDX, CAMERA_NULL_IDX + 1),
        env_actions={**press, "camera": cam}, source_step=np.arange(n),
        gui_open=rng.random(n) < gui_p, cursor_xy=np.zeros((n, 2), np.float32),
        attrs={"recorder_version": "6.13"},
    )
    write_episode(episode_path(root / "episodes", eid), ep, FrameStorage("none"))
    z = rng.normal(size=(n, len(WORLD)))
    embeds = z @ WORLD + 0.1 * rng.normal(size=(n, DIM)) + embed_shift * WORLD[0]   # shift of embed_shift std along the main direction
    valid = np.arange(n) >= 15
    write_embeds(episode_path(root / "embeds", eid), eid, embeds, valid, weights="test")


def make_dataset(root: Path, val_kwargs: dict, name="default", seed0=0, **train_kwargs) -> Path:
    """Write train and val episodes from their own generators and a sampling JSON naming them."""
    splits = {}
    for s, (split, kwargs) in enumerate((("train", train_kwargs), ("val", val_kwargs))):
        ids = [f"{name}-{split}-{i}" for i in range(N_EPISODES)]
        for i, eid in enumerate(ids):
            make_episode(root, eid, seed=seed0 + 100 * s + i, **kwargs)
        splits[split] = ids
    path = root / "samplings" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(sampling_json(**splits))
    return path


def sampling_json(train: list[str], val: list[str]) -> str:
    """A sampling JSON naming these episodes (the report reads only the splits' episode lists)."""
    return json.dumps({"format_version": SAMPLING_FORMAT_VERSION, "params": {}, "train": train, "val": val,
                       "chunks": {"train": [], "val": []}})


def build(root: Path, sampling: Path, **kw) -> dict:
    args = dict(episodes_dir=root / "episodes", embeds_dir=root / "embeds", sampling_path=sampling,
                summary_path=root / "reports" / "summary.json",
                data_dir=root / "reports" / "data", reference_sampling=None, drift_share_threshold=0.2,
                column_threshold=0.1, max_steps_per_split=5000, n_components=3, seed=0,
                details_path=root / "reports" / "data" / "summary.json",
                plot_path=root / "reports" / "plots" / "drift_columns.json")
    return drift.build_report(**{**args, **kw})


@pytest.fixture(scope="module")
def matching(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("matching")
    return root, build(root, make_dataset(root, val_kwargs={}))


@pytest.fixture(scope="module")
def shifted(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("shifted")
    sampling = make_dataset(root, val_kwargs=dict(attack_p=0.5, camera_deg=5.0, still_p=0.1, embed_shift=1.0))
    return root, build(root, sampling)


def test_no_drift_when_splits_come_from_the_same_generator(matching):
    root, summary = matching
    c = summary["comparisons"]["train_vs_val"]
    assert c["skipped"] is None and not summary["drift_detected"]
    assert c["n_drifted_columns"] == 0, c["drifted_columns"]
    assert {"camera_deg", "embed_norm", "pc_1", "press_attack", "agent_null", "recorder_version"} <= set(
        json.loads((root / "reports/data/drift.json").read_text())["columns"])


def test_drift_found_in_camera_buttons_and_embeddings(shifted):
    _, summary = shifted
    c = summary["comparisons"]["train_vs_val"]
    assert summary["drift_detected"] and c["drift_share"] > 0.2
    assert {"camera_deg", "camera_null", "press_attack", "pc_1"} <= set(c["drifted_columns"])
    assert "press_jump" not in c["drifted_columns"]        # a rate both generators share


def test_embedding_shift_alone_moves_only_embedding_columns(tmp_path):
    sampling = make_dataset(tmp_path, val_kwargs=dict(embed_shift=1.0))
    result = drift.build_report(episodes_dir=tmp_path / "episodes", embeds_dir=tmp_path / "embeds",
                                sampling_path=sampling, summary_path=tmp_path / "reports" / "summary.json",
                                data_dir=tmp_path / "reports" / "data", reference_sampling=None,
                                drift_share_threshold=0.5, column_threshold=0.1, max_steps_per_split=1000,
                                n_components=3, seed=0)
    drifted = set(result["comparisons"]["train_vs_val"]["drifted_columns"])
    assert "pc_1" in drifted
    assert drifted <= {"pc_1", "pc_2", "pc_3", "embed_norm", "embed_mean"}


def test_html_json_tables_and_summary_are_written(matching):
    root, summary = matching
    data = root / "reports" / "data"
    html = (data / "drift.html").read_text()
    assert html.lstrip().lower().startswith("<!doctype html") or "<html" in html[:500].lower()
    doc = json.loads((data / "drift.json").read_text())
    assert doc["summary"]["reference"] == "train" and doc["evidently"]["metrics"]
    c = summary["comparisons"]["train_vs_val"]                     # DVC metrics: the headline only
    assert json.loads((root / "reports/summary.json").read_text()) == {"drift": False, "drift_share": c["drift_share"]}
    assert json.loads((data / "summary.json").read_text()) == json.loads(json.dumps(summary))   # the detail
    rows = json.loads((root / "reports/plots/drift_columns.json").read_text())
    assert len(rows) == c["n_columns"] and {r["comparison"] for r in rows} == {"train_vs_val"}
    assert {r["column"]: r["score"] for r in rows}["camera_deg"] == doc["columns"]["camera_deg"]["score"]
    eps = pd.read_csv(data / "episodes_train.csv")
    steps = pd.read_csv(data / "steps_val.csv")
    assert len(eps) == N_EPISODES and (eps["n_frames"] == N_STEPS).all()
    assert len(steps) == N_EPISODES * N_STEPS        # under max_steps_per_split: every step kept
    train = summary["splits"]["train"]
    assert train["n_episodes"] == N_EPISODES and train["n_steps"] == N_EPISODES * N_STEPS
    assert train["recorder_versions"] == {"6.13": N_EPISODES}
    assert 0.08 < train["press_rates"]["attack"] < 0.12 and 0.35 < train["camera_null_share"] < 0.45
    assert 0.9 < train["embed_valid_share"] < 1.0


def test_steps_are_subsampled_with_a_seed(tmp_path):
    sampling = make_dataset(tmp_path, val_kwargs={})
    tables = [drift.load_split({MAIN_SET: (tmp_path / "episodes", tmp_path / "embeds")}, json.loads(sampling.read_text())["train"],
                               max_steps=300, seed=7) for _ in range(2)]
    assert len(tables[0].steps) == 300 and tables[0].embeds.shape == (300, DIM)
    assert tables[0].steps[["episode_id", "step"]].equals(tables[1].steps[["episode_id", "step"]])
    assert (tables[0].episodes["n_frames"] == N_STEPS).all()      # episode rows use every step


def test_pca_projections_are_centred_and_ordered():
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(2000, 6)) @ WORLD).astype(np.float32)
    x[:15] = np.nan
    mean, comps = drift.fit_pca(x, 3)
    proj = (x[15:] - mean) @ comps.T
    assert comps.shape == (3, DIM) and np.allclose(proj.mean(axis=0), 0, atol=1e-3)
    assert np.all(np.diff(proj.var(axis=0)) < 0)
    np.testing.assert_allclose(drift.fit_pca(x, 3)[1], comps)


def test_a_sampling_without_a_split_is_refused_naming_the_key(tmp_path):
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"format_version": SAMPLING_FORMAT_VERSION, "params": {}, "train": ["a"],
                                "chunks": {"train": [], "val": []}}))
    with pytest.raises(SamplingError, match=r"s\.json: key 'val' is missing"):
        Sampling.load(path)


# ---------------------------------------------------------------- the stage


def write_params(root: Path, **report) -> Path:
    params = {
        "paths": {k: str(root / k) for k in ("episodes", "embeds", "samplings", "reports")},
        "sample": {"name": "default"},
        "report": {"max_steps_per_split": 1000, "n_components": 3, "drift_share_threshold": 0.2, **report},
    }
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


@pytest.fixture(scope="module")
def shifted_small(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("stage")
    make_dataset(root, val_kwargs=dict(attack_p=0.5, camera_deg=5.0, still_p=0.1, embed_shift=1.0))
    return root


def test_stage_fails_on_drift_after_writing_reports(shifted_small, capsys):
    code = report_stage.main(["--params", str(write_params(shifted_small, on_drift="fail"))])
    assert code == 1
    assert "drift above report.drift_share_threshold=0.2" in capsys.readouterr().err
    assert json.loads((shifted_small / "reports/summary.json").read_text())["drift"] is True
    assert (shifted_small / "reports/data/drift.html").is_file()


def test_stage_warns_on_drift_and_exits_zero(shifted_small, caplog):
    (shifted_small / "reports/summary.json").unlink(missing_ok=True)
    assert report_stage.main(["--params", str(write_params(shifted_small, on_drift="warn"))]) == 0
    headline = json.loads((shifted_small / "reports/summary.json").read_text())
    assert headline["drift"] is True and set(headline) == {"drift", "drift_share"}
    assert json.loads((shifted_small / "reports/data/summary.json").read_text())["drift_detected"] is True
    assert "drift detected" in caplog.text


def test_stage_compares_against_a_reference_sampling(shifted_small):
    old = shifted_small / "samplings" / "old.json"
    ids = json.loads((shifted_small / "samplings/default.json").read_text())
    old.write_text(sampling_json(ids["train"][:2], ids["train"][2:]))   # the train generator only
    assert report_stage.main(["--params", str(write_params(shifted_small, reference_sampling=str(old)))]) == 0
    headline = json.loads((shifted_small / "reports/summary.json").read_text())
    summary = json.loads((shifted_small / "reports/data/summary.json").read_text())
    ref = summary["comparisons"]["reference_vs_current"]
    assert headline["reference_drift_share"] == pytest.approx(ref["drift_share"], rel=1e-3)
    assert ref["n_reference_steps"] == 1000 and "pc_1" in ref["drifted_columns"]
    assert json.loads((shifted_small / "reports/data/drift_reference.json").read_text())["evidently"]["metrics"]
    # without the reference the old comparison's files are gone
    assert report_stage.main(["--params", str(write_params(shifted_small))]) == 0
    assert not (shifted_small / "reports/data/drift_reference.html").exists()


def test_stage_with_an_empty_val_split_reports_train_and_skips_drift(tmp_path):
    make_episode(tmp_path, "only-train", seed=0, n=100)
    (tmp_path / "samplings").mkdir()
    (tmp_path / "samplings/default.json").write_text(sampling_json(["only-train"], []))
    assert report_stage.main(["--params", str(write_params(tmp_path, on_drift="fail"))]) == 0
    assert json.loads((tmp_path / "reports/summary.json").read_text()) == {"drift": False, "drift_share": None}
    summary = json.loads((tmp_path / "reports/data/summary.json").read_text())
    c = summary["comparisons"]["train_vs_val"]
    assert c["skipped"] == "no steps in val: nothing to compare" and c["drift_detected"] is False
    assert summary["splits"]["val"] == {"n_episodes": 0, "n_steps": 0}
    assert summary["splits"]["train"]["n_steps"] == 100
    assert "Skipped: no steps in val" in (tmp_path / "reports/data/drift.html").read_text()
    assert json.loads((tmp_path / "reports/data/drift.json").read_text())["summary"]["skipped"]


def test_stage_errors_name_the_problem(tmp_path, capsys):
    (tmp_path / "samplings").mkdir()
    (tmp_path / "samplings/default.json").write_text(sampling_json([], []))
    assert report_stage.main(["--params", str(write_params(tmp_path))]) == 1
    assert "both 'train' and 'val' are empty" in capsys.readouterr().err
    make_episode(tmp_path, "no-embeds", seed=0, n=50)
    (tmp_path / "embeds/no-embeds.h5").unlink()
    (tmp_path / "samplings/default.json").write_text(sampling_json(["no-embeds"], []))
    assert report_stage.main(["--params", str(write_params(tmp_path))]) == 1
    assert "no-embeds.h5: episode 'no-embeds' has no embeds file" in capsys.readouterr().err
