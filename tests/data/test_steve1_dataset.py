"""Official STEVE-1 datasets (EpisodeStorage folders) in: ``custom.<name>: {format: steve1}``.

Checked against ``reference/steve1_dataset`` (two episodes written by the official code, with
goldens of what its training code reads back): actions exact, frames bitwise with a lossless codec
(and exactly the JPEG round trip of the official decode with the jpeg codec), the dataset's
embeddings reused exactly; untrusted pickles and bad episodes refused; the mixing rule; engine: ray
writes the local bytes; and a mixed sampling with the imported set trains.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from stages import embed_set as embed_set_stage
from stages import import_set as import_set_stage
from stages import sample as sample_stage
from steve1.data import formats
from steve1.data.custom import detect_format, import_all
from steve1.data.dataset_embeds import dataset_weights_id, reuse_dataset_embeds
from steve1.data.episodes import EpisodeReader, episode_path, read_embeds
from steve1.data.sampling import SamplingError, check_one_mineclip_space
from steve1.io import TEMP_PREFIX
from steve1.layout import MANIFEST
from steve1.unpickle import load_numpy_pickle
from steve1.params import DecodeParams, ParamsError, validate_params

SMALL = "trimmed_gimpy-jade-panda-f153ac423f61-20220417-084844"      # 217 frames
LARGE = "trimmed_lovely-persimmon-angora-a39257c803d3-20220422-051333"  # 880 frames


@pytest.fixture(scope="module")
def dataset(reference) -> Path:
    return reference / "steve1_dataset"


def _sha256(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


@pytest.fixture(scope="module")
def goldens(dataset) -> tuple[dict, dict]:
    """goldens.json per episode, and each episode's embeddings as the official training code reads
    them ([N,512] float32, zeros where the pickle holds None), checked against the golden sha256 of
    rows 15 on (goldens.json names the arrays by hash; the frames are checked by hash below)."""
    episodes = json.loads((dataset / "goldens.json").read_text())["episodes"]
    arrays = {}
    for eid, g in episodes.items():
        rows = load_numpy_pickle((dataset / eid / "embeds_attn.pkl").read_bytes(), eid)
        emb = np.stack([np.zeros(512, np.float32) if r is None else np.asarray(r, np.float32).reshape(512) for r in rows])
        assert all(r is None for r in rows[:g["first_valid_embed"]]) and _sha256(emb[g["first_valid_embed"]:]) == g["embeds_sha256"]
        arrays[f"{eid}__embeds"] = emb
    return episodes, arrays


def _settings(**kw) -> DecodeParams:
    return DecodeParams(**{"frame_codec": "lzf", **kw})


def _frames(path: Path) -> np.ndarray:
    with EpisodeReader(path) as ep:
        return ep.frames(0, ep.n_frames)


@pytest.fixture(scope="module")
def imported(dataset, tmp_path_factory) -> Path:
    """Both reference episodes imported with a lossless codec, then embed-set's reuse."""
    out = tmp_path_factory.mktemp("imported")
    report = import_all(dataset, out / "episodes", _settings(), "auto", out / "raw", progress=False)
    assert report.n_ok == 2, report.skipped
    reuse_dataset_embeds(out / "episodes", out / "raw", out / "embeds", dataset_weights_id("old", None))
    return out


# ------------------------------------------------------------------------------------ exact import
def test_actions_are_the_official_training_codes_exactly(imported, goldens):
    episodes, _ = goldens
    for eid, g in episodes.items():
        with EpisodeReader(episode_path(imported / "episodes", eid)) as ep:
            assert ep.n_frames == g["len"] == g["n_frames_decoded"]
            assert ep.array(formats.BUTTONS).tolist() == g["buttons"]
            assert ep.array(formats.CAMERA).tolist() == g["camera"]
            assert ep.array(formats.SOURCE_STEP).tolist() == list(range(g["len"]))   # no step dropped
            assert ep.attrs[formats.A_RECORDER_VERSION] == formats.STEVE1_RECORDER


def test_frames_are_the_official_decode_bit_for_bit_with_a_lossless_codec(imported, goldens):
    episodes, _ = goldens
    for eid in (SMALL, LARGE):
        frames = _frames(episode_path(imported / "episodes", eid))
        assert frames.shape == (episodes[eid]["len"], 128, 128, 3) and frames.dtype == np.uint8
        assert _sha256(frames) == episodes[eid]["frames_sha256"], f"{eid}: frames differ from the official decode"


def test_frames_with_the_jpeg_codec_are_the_codecs_round_trip_of_the_official_decode(dataset, imported, goldens,
                                                                                       tmp_path):
    episodes, _ = goldens
    src = tmp_path / "src"
    shutil.copytree(dataset / SMALL, src / SMALL)
    settings = _settings(frame_codec="jpeg", frame_quality=85)
    assert import_all(src, tmp_path / "ep", settings, "steve1", progress=False).n_ok == 1
    golden = _frames(episode_path(imported / "episodes", SMALL))      # the official decode (lossless import)
    assert _sha256(golden) == episodes[SMALL]["frames_sha256"]
    data, offsets = formats.encode_frames(golden, 85)
    expected = np.empty_like(golden)
    formats.decode_frames_into(data, offsets, expected)
    np.testing.assert_array_equal(_frames(episode_path(tmp_path / "ep", SMALL)), expected)


def test_embed_set_reuses_the_datasets_embeddings_exactly(imported, goldens):
    _, arrays = goldens
    for eid in (SMALL, LARGE):
        emb, valid, attrs = read_embeds(episode_path(imported / "embeds", eid))
        assert emb.dtype == np.float32
        np.testing.assert_array_equal(emb, arrays[f"{eid}__embeds"])
        assert valid.tolist() == [t >= formats.NONE_EMBED_OFFSET for t in range(len(valid))]
        assert attrs[formats.A_WEIGHTS] == "dataset:unverified@custom.old"
    manifest = json.loads((imported / "embeds" / MANIFEST).read_text())
    assert manifest["weights"] == "dataset:unverified@custom.old" and manifest["first_valid"] == 15
    assert manifest["episodes"][SMALL] == {"n_frames": 217, "n_valid": 202}


def test_float16_embeddings_within_1e3_and_a_rerun_keeps_the_files(imported, goldens, tmp_path):
    _, arrays = goldens
    weights = dataset_weights_id("old", "attn.pth:md5=abc")
    assert weights == "dataset:attn.pth:md5=abc"
    reuse_dataset_embeds(imported / "episodes", imported / "raw", tmp_path / "e16", weights, "float16")
    emb, _, attrs = read_embeds(episode_path(tmp_path / "e16", SMALL))
    assert np.abs(emb - arrays[f"{SMALL}__embeds"]).max() < 1e-3 and attrs[formats.A_WEIGHTS] == weights
    before = episode_path(tmp_path / "e16", SMALL).stat().st_mtime_ns
    reuse_dataset_embeds(imported / "episodes", imported / "raw", tmp_path / "e16", weights, "float16")
    assert episode_path(tmp_path / "e16", SMALL).stat().st_mtime_ns == before


def test_format_auto_recognises_an_episode_folder(dataset):
    assert detect_format(dataset / SMALL) == "steve1"


# ------------------------------------------------------------------------------------ bad input
class _System:
    """Unpickling this runs os.system: what a hostile actions.pkl would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _load(path: Path):
    return load_numpy_pickle(path.read_bytes(), str(path))


def _copy(dataset: Path, root: Path, name: str) -> Path:
    return Path(shutil.copytree(dataset / SMALL, root / name))


def _short_copy(dataset: Path, root: Path, name: str, n: int) -> Path:
    """The small reference episode cut to its first ``n`` steps (video re-encoded as the official writer does)."""
    folder = _copy(dataset, root, name)
    w = cv2.VideoWriter(str(folder / "frames.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 20, (128, 128))
    cap = cv2.VideoCapture(str(dataset / SMALL / "frames.mp4"))
    for _ in range(n):
        w.write(cap.read()[1])
    cap.release()
    w.release()
    for pkl in ("actions.pkl", "embeds_attn.pkl"):
        (folder / pkl).write_bytes(pickle.dumps(_load(folder / pkl)[:n], protocol=4))
    (folder / "len.txt").write_text(str(n))
    return folder


def _write_video(path: Path, frames: int, size: tuple[int, int]) -> None:
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 20, size)
    for i in range(frames):
        w.write(np.full((size[1], size[0], 3), i % 255, np.uint8))
    w.release()


def _missing(folder: Path) -> None:
    (folder / "len.txt").unlink()


def _length(folder: Path) -> None:
    (folder / "len.txt").write_text("216")


def _size(folder: Path) -> None:
    _write_video(folder / "frames.mp4", 217, (64, 64))


def _fewer_frames(folder: Path) -> None:
    _write_video(folder / "frames.mp4", 200, (128, 128))


def _truncated(folder: Path) -> None:
    data = (folder / "frames.mp4").read_bytes()
    (folder / "frames.mp4").write_bytes(data[: len(data) // 2])


def _rewrite_embeds(folder: Path, change) -> None:
    rows = _load(folder / "embeds_attn.pkl")
    change(rows)
    (folder / "embeds_attn.pkl").write_bytes(pickle.dumps(rows, protocol=4))


def _width(folder: Path) -> None:
    _rewrite_embeds(folder, lambda rows: rows.__setitem__(40, np.zeros((1, 256), np.float32)))


def _none_late(folder: Path) -> None:
    _rewrite_embeds(folder, lambda rows: rows.__setitem__(15, None))


def _nan(folder: Path) -> None:
    def change(rows):
        rows[100] = rows[100].copy()
        rows[100][0, 7] = np.nan
    _rewrite_embeds(folder, change)


def _inf_camera(folder: Path) -> None:
    actions = _load(folder / "actions.pkl")
    actions[3]["camera"] = np.array([0.0, np.inf])
    (folder / "actions.pkl").write_bytes(pickle.dumps(actions, protocol=4))


def _unknown_key(folder: Path) -> None:
    actions = _load(folder / "actions.pkl")
    actions[5]["teleport" * 30] = 1
    (folder / "actions.pkl").write_bytes(pickle.dumps(actions, protocol=4))


def _not_a_list(folder: Path) -> None:
    (folder / "embeds_attn.pkl").write_bytes(pickle.dumps({"rows": 3}, protocol=4))


def _short_embeds(folder: Path) -> None:
    _rewrite_embeds(folder, lambda rows: rows.pop())


BAD = {
    "missing": (_missing, r"missing file: .*bad/len.txt not found"),
    "lengths": (_length, r"lengths disagree: len.txt 216, actions.pkl 217, embeds_attn.pkl 217"),
    "short-embeds": (_short_embeds, r"lengths disagree: len.txt 217, actions.pkl 217, embeds_attn.pkl 216"),
    "size": (_size, r"frames.mp4: frame 0 is 64x64, expected 128x128"),
    "truncated": (_truncated, r"frames.mp4: truncated: its 'mdat' box ends at byte"),
    "fewer-frames": (_fewer_frames, r"frames.mp4: 200 frames decode but len.txt says 217"),
    "width": (_width, r"embeds_attn.pkl: row 40 is float32 \[1, 256\], expected float \[1,512\]"),
    "none-late": (_none_late, r"embeds_attn.pkl: row 15 is None; rows from 15 on must be \[1,512\] arrays"),
    "nan": (_nan, r"embeds_attn.pkl: row 100 holds non-finite values"),
    "unknown-key": (_unknown_key, r"actions.pkl: action 5: unknown key 'teleportteleport.*\.\.\.; expected MineRL"),
    "not-a-list": (_not_a_list, r"embeds_attn.pkl: holds a dict, expected a list"),
    "inf-camera": (_inf_camera, r"actions.pkl: action 3: key 'camera': value .*expected \[pitch, yaw\]"),
}


def _assert_clean(out: Path, raw: Path, eid: str) -> None:
    """No episode, no companion and no temp file of a skipped episode."""
    assert not episode_path(out, eid).exists()
    assert not (raw / f"{eid}.mp4").exists() and not (raw / f"{eid}{formats.DATASET_EMBEDS_SUFFIX}").exists()
    assert not [p for d in (out, raw) for p in d.iterdir() if p.name.startswith(TEMP_PREFIX)]


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_episode_is_skipped_with_its_reason_and_the_good_one_imports(dataset, tmp_path, case):
    make_bad, reason = BAD[case]
    src = tmp_path / "src"
    _copy(dataset, src, "good")
    make_bad(_copy(dataset, src, "bad"))
    report = import_all(src, tmp_path / "ep", _settings(), "auto", progress=False)
    rows = json.loads((tmp_path / "ep" / MANIFEST).read_text())["episodes"]
    assert rows["good"]["status"] == "ok" and rows["bad"]["status"] == "skipped"
    assert re.search(reason, rows["bad"]["reason"]), rows["bad"]["reason"]
    assert "\n" not in rows["bad"]["reason"]
    assert report.n_ok == 1
    _assert_clean(tmp_path / "ep", tmp_path / "ep" / "raw", "bad")


@pytest.mark.parametrize("victim", ["actions.pkl", "embeds_attn.pkl"])
def test_a_pickle_naming_anything_else_is_refused_naming_the_file_and_never_runs(dataset, tmp_path, victim):
    src = tmp_path / "src"
    folder = _copy(dataset, src, "evil")
    marker = tmp_path / "pwned"
    (folder / victim).write_bytes(pickle.dumps([_System(marker)], protocol=4))
    report = import_all(src, tmp_path / "ep", _settings(), "steve1", progress=False)
    reason = report.skipped["evil"]
    assert reason == f"{folder / victim}: refusing to unpickle posix.system: only numpy arrays are allowed"
    assert not marker.exists()
    _assert_clean(tmp_path / "ep", tmp_path / "ep" / "raw", "evil")


def test_a_bad_episode_that_was_good_before_leaves_nothing_behind(dataset, tmp_path):
    src = tmp_path / "src"
    folder = _copy(dataset, src, "ep")
    assert import_all(src, tmp_path / "ep", _settings(), "steve1", progress=False).n_ok == 1
    again = import_all(src, tmp_path / "ep", _settings(), "steve1", progress=False)
    assert again.reused == 1
    _nan(folder)
    assert import_all(src, tmp_path / "ep", _settings(), "steve1", progress=False).n_ok == 0
    _assert_clean(tmp_path / "ep", tmp_path / "ep" / "raw", "ep")


# ------------------------------------------------------------------------------------ stages, params
def _project(tmp_path: Path, source: Path, engine: str = "local", **custom) -> Path:
    params = {"engine": engine, "ray": {"max_retries": 1},
              "paths": {"custom": str(tmp_path / "custom")},
              "decode": {"frame_codec": "lzf"},
              "custom": {"old": {"source": str(source), **custom}}}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def test_the_stage_stops_with_one_line_when_nothing_is_usable(dataset, tmp_path, capsys):
    src = tmp_path / "src"
    _nan(_copy(dataset, src, "bad"))
    assert import_set_stage.main(["old", "--params", str(_project(tmp_path, src, format="steve1"))]) == 1
    err = capsys.readouterr().err
    assert f"custom.old: no episode could be imported from {src}" in err


def test_params_accept_the_format_and_refuse_embeddings_a_format_cannot_bring():
    p = validate_params({"custom": {"old": {"source": "x", "format": "steve1"}}})
    assert p.custom["old"].embeddings == "auto"
    assert p.custom["old"].model_dump() == {"source": "x", "format": "steve1", "fps": 20.0}   # old dumps kept
    with pytest.raises(ParamsError, match=r"embeddings: dataset, but format frames carries no embeddings"):
        validate_params({"custom": {"old": {"source": "x", "format": "frames", "embeddings": "dataset"}}})
    with pytest.raises(ParamsError, match=r"must name a MineCLIP"):
        validate_params({"custom": {"old": {"source": "x", "dataset_mineclip": "dataset:x"}}})


def test_embed_set_dataset_refuses_episodes_without_embeddings(tmp_path, capsys):
    from fixtures.recordings import write_png_recording

    write_png_recording(tmp_path / "src", "png-0", n_frames=24, seed=0)
    params = _project(tmp_path, tmp_path / "src", embeddings="dataset")
    assert import_set_stage.main(["old", "--params", str(params)]) == 0
    assert embed_set_stage.main(["old", "--params", str(params)]) == 1
    assert "embeddings: dataset, but 1 episode(s) brought no embeddings (e.g. png-0" in capsys.readouterr().err


def test_the_mixing_rule():
    check_one_mineclip_space({"attn.pth:md5=a": "set 'main'", "dataset:attn.pth:md5=a": "set 'old'"})
    check_one_mineclip_space({"dataset:unverified@custom.old": "set 'old'"})
    with pytest.raises(SamplingError, match=r"different MineCLIP weights: 'attn.pth:md5=a' in set 'main'; "
                                            r"'dataset:attn.pth:md5=b' in set 'old'"):
        check_one_mineclip_space({"attn.pth:md5=a": "set 'main'", "dataset:attn.pth:md5=b": "set 'old'"})
    with pytest.raises(SamplingError, match=r"set 'old' reuse\(s\) a dataset's embeddings from an undeclared "
                                            r"MineCLIP: set custom.<name>.dataset_mineclip"):
        check_one_mineclip_space({"attn.pth:md5=a": "set 'main'", "dataset:unverified@custom.old": "set 'old'"})


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_engine_ray_writes_the_bytes_engine_local_writes(ray_local, dataset, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(dataset / SMALL, src / SMALL)
    _nan(_copy(dataset, src, "bad"))
    out = {}
    for engine in ("local", "ray"):
        shutil.rmtree(tmp_path / "custom", ignore_errors=True)      # one folder: manifests name it
        params = _project(tmp_path, src, engine, format="auto")
        assert import_set_stage.main(["old", "--params", str(params)]) == 0
        assert embed_set_stage.main(["old", "--params", str(params)]) == 0
        out[engine] = _files(tmp_path / "custom")
    assert sorted(out["local"]) == sorted(out["ray"])
    assert [k for k in out["local"] if out["local"][k] != out["ray"][k]] == []
    rows = json.loads(out["ray"]["old/episodes/manifest.json"])["episodes"]
    assert rows[SMALL]["status"] == "ok" and rows["bad"]["status"] == "skipped"


# ------------------------------------------------------------------------------------ mixed training
def test_a_mixed_sampling_with_the_imported_set_trains(dataset, tmp_path, capsys):
    """80/20 by training frames: the main set (embedded by 'fixture') and the imported dataset, whose
    embeddings are declared to come from 'fixture'; undeclared, sample refuses the mix."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))
    from toy_world import make_world

    from steve1.params import load_params
    from steve1.train.trainer import train

    params_path = make_world(tmp_path, {"n_frames": 64, "val_freq": 2, "checkpoint_every_steps": 2})
    src = tmp_path / "src"
    for eid in (SMALL, LARGE):
        shutil.copytree(dataset / eid, src / eid)
    raw = yaml.safe_load(params_path.read_text())
    raw["paths"]["custom"] = str(tmp_path / "custom")
    raw["decode"] = {"frame_codec": "lzf"}
    raw["custom"] = {"old": {"source": str(src), "format": "steve1"}}
    raw["sample"].update(name="mixed", train_frames=64, val_frames=16,
                         mix=[{"name": "old", "train_frames": 16, "val_frames": 16}])
    params_path.write_text(yaml.safe_dump(raw))
    argv = ["--params", str(params_path)]
    assert import_set_stage.main(["old", *argv]) == 0 and embed_set_stage.main(["old", *argv]) == 0
    assert sample_stage.main(argv) == 1
    assert "dataset:unverified@custom.old" in capsys.readouterr().err

    raw["custom"]["old"]["dataset_mineclip"] = "fixture"
    params_path.write_text(yaml.safe_dump(raw))
    assert embed_set_stage.main(["old", *argv]) == 0
    assert sample_stage.main(argv) == 0
    sampling = json.loads((tmp_path / "data" / "samplings" / "mixed.json").read_text())
    assert any(c[0].startswith("old/") for c in sampling["chunks"]["train"])
    assert any(c[0].startswith("old/") for c in sampling["chunks"]["val"])
    train(load_params(params_path))
    run = tmp_path / "models" / "toy"
    assert (run / "latest.weights").is_file()
    losses = (run / "dvclive" / "plots" / "metrics" / "val" / "old" / "loss.tsv").read_text().splitlines()
    assert len(losses) > 1 and all(np.isfinite(float(r.split("\t")[-1])) for r in losses[1:])


def test_embeddings_mineclip_recomputes_from_the_copied_video_and_auto_reuses(dataset, goldens, tmp_path):
    _, arrays = goldens
    src = tmp_path / "src"
    _short_copy(dataset, src, SMALL, 40)
    embeds = episode_path(tmp_path / "custom" / "old" / "embeds", SMALL)
    params = _project(tmp_path, src, format="steve1")
    assert import_set_stage.main(["old", "--params", str(params)]) == 0
    assert embed_set_stage.main(["old", "--params", str(params)]) == 0       # auto: reused
    emb, _, attrs = read_embeds(embeds)
    assert attrs[formats.A_WEIGHTS] == "dataset:unverified@custom.old"
    np.testing.assert_array_equal(emb, arrays[f"{SMALL}__embeds"][:40])
    params = _project(tmp_path, src, format="steve1", embeddings="mineclip")
    raw = yaml.safe_load(params.read_text())
    raw["embed"] = {"batch_size": 32, "device": "cpu"}
    params.write_text(yaml.safe_dump(raw))
    assert embed_set_stage.main(["old", "--params", str(params)]) == 0       # the tiny random MineCLIP
    emb, valid, attrs = read_embeds(embeds)
    assert attrs[formats.A_WEIGHTS] == "random-tiny:seed=0" and emb.shape == (40, 512) and valid[15:].all()
    assert not np.allclose(emb[15:], arrays[f"{SMALL}__embeds"][15:40])
    manifest = json.loads((embeds.parent / MANIFEST).read_text())
    assert manifest["weights"] == "random-tiny:seed=0"


def test_agent_written_actions_with_a_batch_axis_read_the_same(dataset, goldens, tmp_path):
    """gen_mixed_agents.py saves the VPT agent's env actions, which keep a batch axis ([1] buttons, [1,2] camera)."""
    episodes, _ = goldens
    src = tmp_path / "src"
    folder = _copy(dataset, src, SMALL)
    actions = [{k: (np.array([v], np.int64) if k != "camera" else np.asarray(v, np.float64)[None]) for k, v in a.items()}
               for a in _load(folder / "actions.pkl")]
    (folder / "actions.pkl").write_bytes(pickle.dumps(actions, protocol=4))
    assert import_all(src, tmp_path / "ep", _settings(), "steve1", progress=False).n_ok == 1
    with EpisodeReader(episode_path(tmp_path / "ep", SMALL)) as ep:
        assert ep.array(formats.BUTTONS).tolist() == episodes[SMALL]["buttons"]
        assert ep.array(formats.CAMERA).tolist() == episodes[SMALL]["camera"]
