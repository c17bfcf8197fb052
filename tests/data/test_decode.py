"""steve1.data.decode: one recording end to end, bad inputs skipped with reasons, resume and re-decode."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from steve1.data import formats
from steve1.data.decode import DecodeSkip, decode_all, decode_recording, find_sources
from steve1.data.episodes import EpisodeReader, episode_path
from steve1.data.recording import convert_recording
from steve1.data.synthetic import write_synthetic_recording
from steve1.data.video import iter_processed_frames
from steve1.io import TEMP_PREFIX
from steve1.layout import MANIFEST
from steve1.params import DecodeParams

REPO = Path(__file__).resolve().parents[2]

REAL = "trimmed_lovely-persimmon-angora-a39257c803d3-20220422-051333"
N = 60


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """Two small synthetic recordings, generated once; tests copy them."""
    d = tmp_path_factory.mktemp("synth")
    for k in range(2):
        write_synthetic_recording(d, f"synthetic-0-{k}", n_steps=N, seed=(0, k))
    return d


def raw_with(tmp_path, synth, ids=("synthetic-0-0", "synthetic-0-1")):
    raw = tmp_path / "raw"
    raw.mkdir()
    for i in ids:   # any name other than synthetic-0-1 is a copy of synthetic-0-0
        source = "synthetic-0-1" if i == "synthetic-0-1" else "synthetic-0-0"
        for s in (".mp4", ".jsonl"):
            shutil.copy(synth / f"{source}{s}", raw / f"{i}{s}")
    return raw


def test_decode_recording_matches_library_pieces(synth):
    video, jsonl = synth / "synthetic-0-0.mp4", synth / "synthetic-0-0.jsonl"
    ep = decode_recording(video, jsonl, "synthetic-0-0", DecodeParams())
    rec = convert_recording(jsonl)
    np.testing.assert_array_equal(ep.source_step, rec.kept_steps)
    b, c = rec.agent_actions()
    np.testing.assert_array_equal(ep.buttons, b)
    np.testing.assert_array_equal(ep.camera, c)
    np.testing.assert_array_equal(ep.env_actions["camera"], rec.env["camera"])
    frames = np.concatenate(list(iter_processed_frames(video, rec.kept_steps, rec.gui_open, rec.cursor_xy, (128, 128))))
    np.testing.assert_array_equal(ep.frames, frames)
    assert ep.gui_open.any() and ep.attrs[formats.A_FPS] == 20.0
    counts = json.loads(ep.attrs[formats.A_DECODE_COUNTS])
    assert counts["n_lines"] == N and counts["n_kept"] == ep.n_frames == rec.n_kept


def test_real_pair_end_to_end(tmp_path, repo_root, reference):
    raw = tmp_path / "raw"
    raw.mkdir()
    for s in (".mp4", ".jsonl"):
        shutil.copy(repo_root / "assets" / "recordings" / f"{REAL}{s}", raw / f"{REAL}{s}")
    report = decode_all(raw, tmp_path / "eps", DecodeParams(camera_int_truncation=True, frame_codec="blosc-lz4"),
                        progress=False)   # lossless: the frames bit for bit
    assert report.n_ok == 1
    g = json.loads((reference / "real" / "actions_goldens.json").read_text())["episodes"][f"{REAL}.jsonl"]
    vg = json.loads((reference / "real" / "video_goldens.json").read_text())
    official = g["variants"]["official"]
    with EpisodeReader(episode_path(tmp_path / "eps", REAL)) as r:
        assert r.n_frames == 880
        np.testing.assert_array_equal(r.array(formats.SOURCE_STEP), official["kept_step_indices"])
        np.testing.assert_array_equal(r.array(formats.BUTTONS), official["agent_actions"]["buttons"])
        np.testing.assert_array_equal(r.array(formats.CAMERA), official["agent_actions"]["camera"])
        np.testing.assert_array_equal(r.array(f"{formats.ENV_ACTIONS}/camera"), official["env_actions"]["camera"])
        frames, gui = r.frames(), r.array(formats.GUI_OPEN)
        assert json.loads(r.attrs[formats.A_CONVERSION])["camera_int_truncation"] is True
        assert r.attrs[formats.A_VIDEO_SHA256] == vg["video_sha256"]
    ours = np.array([hashlib.sha256(f.tobytes()).hexdigest() for f in frames])
    np.testing.assert_array_equal(ours[~gui], np.array(vg["agent_frame_sha256"])[~gui])
    row = json.loads(report.manifest_path.read_text())["episodes"][REAL]
    assert (row["n_lines"], row["n_frames_video"], row["n_kept"], row["status"]) == (1056, 1090, 880, "ok")


def test_real_pair_with_the_default_codec_is_small_and_close_to_the_frames(tmp_path, repo_root):
    """The default codec (jpeg) on real footage: <= 3 KB a frame, within 35 dB PSNR of the lossless
    frames (STEVE-1's own 128x128 mp4v frames of this recording are at 36.5 dB), decoded back
    through the same reader."""
    raw = tmp_path / "raw"
    raw.mkdir()
    for s in (".mp4", ".jsonl"):
        shutil.copy(repo_root / "assets" / "recordings" / f"{REAL}{s}", raw / f"{REAL}{s}")
    settings = DecodeParams()
    assert settings.frame_codec == "jpeg"
    assert decode_all(raw, tmp_path / "eps", settings, progress=False).n_ok == 1
    lossless = decode_recording(raw / f"{REAL}.mp4", raw / f"{REAL}.jsonl", REAL, settings).frames
    with EpisodeReader(episode_path(tmp_path / "eps", REAL)) as r:
        frames, stored = r.frames(), r.frame_store.offsets[-1]
        conversion = json.loads(r.attrs[formats.A_CONVERSION])
    assert conversion["frame_codec"] == "jpeg" and conversion["frame_quality"] == 85
    assert conversion["codec_library"].startswith("simplejpeg==")
    assert stored / len(frames) <= 3000, stored / len(frames)
    mse = np.mean((frames.astype(np.float64) - lossless) ** 2)
    assert 10 * np.log10(255 ** 2 / mse) >= 35.0, mse


def test_bad_inputs_are_skipped_with_reasons(tmp_path, synth):
    raw = raw_with(tmp_path, synth, ("good", "truncated", "empty", "badline", "nojsonl", "wrongsize", "mismatch"))
    data = (raw / "truncated.mp4").read_bytes()
    (raw / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (raw / "empty.mp4").write_bytes(b"")
    lines = (raw / "badline.jsonl").read_text().splitlines()
    lines[7] = lines[7][:40]
    (raw / "badline.jsonl").write_text("\n".join(lines) + "\n")
    (raw / "nojsonl.jsonl").unlink()
    w = cv2.VideoWriter(str(raw / "wrongsize.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 20, (320, 180))
    for i in range(N):
        w.write(np.full((180, 320, 3), i, np.uint8))
    w.release()
    with open(raw / "mismatch.jsonl", "a") as f:
        f.write((raw / "good.jsonl").read_text() * 2)          # 3N lines for N frames
    report = decode_all(raw, tmp_path / "eps", DecodeParams(max_frame_mismatch=10), progress=False)
    skipped = report.skipped
    assert set(skipped) == {"truncated", "empty", "badline", "nojsonl", "wrongsize", "mismatch"}
    assert "truncated.mp4: truncated: its 'mdat' box ends at byte" in skipped["truncated"]
    assert "missing or empty" in skipped["empty"]
    assert "badline.jsonl:8" in skipped["badline"]
    assert "missing pair" in skipped["nojsonl"]
    assert "320x180" in skipped["wrongsize"]
    assert "max_frame_mismatch" in skipped["mismatch"]
    assert report.n_ok == 1 and episode_path(tmp_path / "eps", "good").is_file()
    assert sorted(p.name for p in (tmp_path / "eps").iterdir()) == ["good.h5", MANIFEST]
    rows = json.loads(report.manifest_path.read_text())["episodes"]
    assert rows["good"]["status"] == "ok" and rows["empty"]["status"] == "skipped"


def test_resume_after_kill_and_redecode_on_settings_change(tmp_path, synth):
    raw = raw_with(tmp_path, synth)
    eps = tmp_path / "eps"
    decode_all(raw, eps, DecodeParams(), progress=False)
    kept, lost = episode_path(eps, "synthetic-0-0"), episode_path(eps, "synthetic-0-1")
    before = kept.stat()
    good_bytes = lost.read_bytes()
    # a kill mid-write: the second episode only exists as a half-written temp file, no manifest
    lost.unlink()
    (eps / MANIFEST).unlink()
    (eps / f"{TEMP_PREFIX}synthetic-0-1.h5.x1y2.h5").write_bytes(good_bytes[:1000])
    report = decode_all(raw, eps, DecodeParams(), progress=False)
    assert report.n_ok == 2 and report.reused == 1
    assert (kept.stat().st_ino, kept.stat().st_mtime_ns) == (before.st_ino, before.st_mtime_ns)   # not rewritten
    assert lost.read_bytes() == good_bytes                                  # same bytes as the first run
    assert sorted(p.name for p in eps.iterdir()) == sorted([kept.name, lost.name, MANIFEST])
    # changed settings or changed sources: re-decoded
    report = decode_all(raw, eps, DecodeParams(camera_int_truncation=True), progress=False)
    assert report.reused == 0
    with EpisodeReader(kept) as r:
        assert json.loads(r.attrs[formats.A_CONVERSION])["camera_int_truncation"] is True
        cam = r.array(f"{formats.ENV_ACTIONS}/camera")
        assert np.array_equal(cam, np.trunc(cam))
    with open(raw / "synthetic-0-1.jsonl", "a") as f:
        f.write((raw / "synthetic-0-1.jsonl").read_text().splitlines()[-1] + "\n")
    report = decode_all(raw, eps, DecodeParams(camera_int_truncation=True), progress=False)
    assert report.reused == 1    # synthetic-0-0 kept, synthetic-0-1 (changed jsonl) decoded again
    assert "reused" not in report.rows["synthetic-0-0"] and "seconds" not in report.rows["synthetic-0-0"]
    # a recording that left the raw folder: its episode goes too
    for s in (".mp4", ".jsonl"):
        (raw / f"synthetic-0-1{s}").unlink()
    report = decode_all(raw, eps, DecodeParams(camera_int_truncation=True), progress=False)
    assert report.removed == 1 and not lost.exists()


def test_download_manifest_selects_and_annotates(tmp_path, synth):
    raw = raw_with(tmp_path, synth)
    (raw / MANIFEST).write_text(json.dumps({"format_version": 1, "episodes": {
        "synthetic-0-0": {"status": "ok", "url": "https://example.org/10.0/synthetic-0-0.mp4", "version": "10.0"},
        "synthetic-0-1": {"status": "failed", "reason": "HTTP 404"},
    }}))
    assert [s.episode_id for s in find_sources(raw)] == ["synthetic-0-0"]
    report = decode_all(raw, tmp_path / "eps", DecodeParams(), progress=False)
    assert list(report.rows) == ["synthetic-0-0"]
    with EpisodeReader(episode_path(tmp_path / "eps", "synthetic-0-0")) as r:
        assert r.attrs[formats.A_SOURCE_URL].endswith("synthetic-0-0.mp4") and r.attrs[formats.A_RECORDER_VERSION] == "10.0"


def test_workers_give_the_same_bytes(tmp_path, synth):
    raw = raw_with(tmp_path, synth)
    decode_all(raw, tmp_path / "one", DecodeParams(workers=1), progress=False)
    decode_all(raw, tmp_path / "two", DecodeParams(workers=2), progress=False)
    for eid in ("synthetic-0-0", "synthetic-0-1"):
        assert episode_path(tmp_path / "one", eid).read_bytes() == episode_path(tmp_path / "two", eid).read_bytes()
    assert (tmp_path / "one" / "manifest.json").read_bytes() == (tmp_path / "two" / "manifest.json").read_bytes()


def test_video_threads_give_the_same_bytes(tmp_path, synth):
    """decode.video_threads is marked speed-only in the schema (no stage's DVC param): this is why."""
    raw = raw_with(tmp_path, synth)
    for threads in (1, 0, 3):
        decode_all(raw, tmp_path / f"t{threads}", DecodeParams(video_threads=threads), progress=False)
    for eid in ("synthetic-0-0", "synthetic-0-1"):
        ref = episode_path(tmp_path / "t1", eid).read_bytes()
        assert episode_path(tmp_path / "t0", eid).read_bytes() == ref == episode_path(tmp_path / "t3", eid).read_bytes()
    assert (tmp_path / "t0" / "manifest.json").read_bytes() == (tmp_path / "t3" / "manifest.json").read_bytes()


def test_min_kept_steps(synth):
    with pytest.raises(DecodeSkip, match="min_kept_steps"):
        decode_recording(synth / "synthetic-0-0.mp4", synth / "synthetic-0-0.jsonl", "x", DecodeParams(min_kept_steps=10_000))


def test_cli_decode_one(tmp_path, synth):
    from typer.testing import CliRunner

    from steve1.cli import app

    out = tmp_path / "one.h5"
    args = ["decode-one", str(synth / "synthetic-0-0.mp4"), str(synth / "synthetic-0-0.jsonl"), str(out)]
    result = CliRunner().invoke(app, args + ["--camera-int-truncation", "--codec", "gzip"])
    assert result.exit_code == 0, result.output
    ep = decode_recording(synth / "synthetic-0-0.mp4", synth / "synthetic-0-0.jsonl", "one", DecodeParams(camera_int_truncation=True))
    with EpisodeReader(out) as r:
        np.testing.assert_array_equal(r.frames(), ep.frames)
        np.testing.assert_array_equal(r.array(formats.BUTTONS), ep.buttons)
        assert json.loads(r.attrs[formats.A_CONVERSION])["frame_codec"] == "gzip"
    bad = CliRunner().invoke(app, args + ["--codec", "zip"])
    assert bad.exit_code == 2 and "not a frame codec" in bad.output


# ------------------------------------------------------------------------------ truncated recordings

def _mdat_size_matching_the_file(path):
    """Rewrite the (last) mdat box's size to end at the end of the file, as a careless remux would:
    the box check then passes, and only counting decoded frames tells the file is cut."""
    import struct

    data = bytearray(path.read_bytes())
    at = data.index(b"mdat") - 4
    data[at:at + 4] = struct.pack(">I", len(data) - at)
    path.write_bytes(bytes(data))


def test_a_cut_faststart_recording_is_skipped_with_a_reason_and_the_whole_one_decodes(tmp_path, synth):
    from fixtures.mp4 import faststart

    cuts = {"cut-50": 0.5, "cut-90": 0.9, "cut-99": 0.99, "count-90": 0.9}
    raw = raw_with(tmp_path, synth, ("whole", *cuts))
    for eid in ("whole", *cuts):
        faststart(raw / f"{eid}.mp4", raw / f"{eid}.mp4")
    size = (raw / "whole.mp4").stat().st_size
    for eid, frac in cuts.items():
        (raw / f"{eid}.mp4").write_bytes((raw / f"{eid}.mp4").read_bytes()[: int(size * frac)])
    _mdat_size_matching_the_file(raw / "count-90.mp4")
    report = decode_all(raw, tmp_path / "eps", DecodeParams(frame_codec="lzf"), progress=False)  # lossless

    skipped = report.skipped
    assert set(skipped) == set(cuts), skipped
    for eid in ("cut-50", "cut-90", "cut-99"):
        assert f"{eid}.mp4: truncated: its 'mdat' box ends at byte" in skipped[eid]
        assert f"but the file holds {int(size * cuts[eid])} bytes" in skipped[eid]
    assert re.search(rf"count-90\.mp4: truncated or damaged: only \d+ of the {N} frames its container declares decode",
                     skipped["count-90"]), skipped["count-90"]
    rows = json.loads(report.manifest_path.read_text())["episodes"]
    assert all(rows[eid]["status"] == "skipped" and rows[eid]["reason"] == skipped[eid] for eid in cuts)
    # the faststart copy holds the very frames of the original
    ref = decode_recording(synth / "synthetic-0-0.mp4", synth / "synthetic-0-0.jsonl", "whole", DecodeParams())
    with EpisodeReader(episode_path(tmp_path / "eps", "whole")) as r:
        np.testing.assert_array_equal(r.frames(), ref.frames)


def test_a_cut_real_faststart_recording_is_skipped_though_its_kept_frames_decode(tmp_path, repo_root):
    """The real pair's jsonl ends 34 frames before its video: a 99% cut loses only frames decode
    never keeps, and it is still refused (the download or copy was broken)."""
    from fixtures.mp4 import faststart

    src = repo_root / "assets" / "recordings" / f"{REAL}.mp4"
    cut = faststart(src, tmp_path / "cut.mp4")
    data = cut.read_bytes()
    cut.write_bytes(data[: int(len(data) * 0.99)])
    with pytest.raises(DecodeSkip, match=r"cut\.mp4: truncated: its 'mdat' box ends at byte"):
        decode_recording(cut, src.with_suffix(".jsonl"), "cut", DecodeParams())
    _mdat_size_matching_the_file(cut)
    with pytest.raises(DecodeSkip, match=r"truncated or damaged: only 10[0-9]{2} of the 1090 frames"):
        decode_recording(cut, src.with_suffix(".jsonl"), "cut", DecodeParams())


# ------------------------------------------------------------------------------ full and unwritable disks

FULL_DISK_DECODE = """
import sys
import steve1.io
from steve1.data.decode import decode_all
from steve1.params import DecodeParams
if sys.argv[4] == "no-precheck":  # let the write itself meet ENOSPC (as when another process fills the disk)
    steve1.io.free_bytes = lambda path: 1 << 40
decode_all(sys.argv[1], sys.argv[2], DecodeParams(workers=int(sys.argv[3])), progress=False)
"""


@pytest.mark.parametrize("workers,check", [(1, "precheck"), (2, "precheck"), (1, "no-precheck")])
def test_a_full_disk_stops_decode_with_its_path_and_no_partial_file(tmp_path, synth, mounted, workers, check):
    """A real 1.3 MB filesystem and 13 episodes of ~117 kB: HDF5 writing into a full disk used to
    segfault (rc 139) with no message. Refused before writing when the free space is short, or by
    the kernel's ENOSPC on the write itself."""
    import subprocess
    import sys

    raw = raw_with(tmp_path, synth, ids=("synthetic-0-1", *(f"copy-{k:02d}" for k in range(12))))
    out = mounted("size=1300k") / "episodes"
    proc = subprocess.run([sys.executable, "-c", FULL_DISK_DECODE, str(raw), str(out), str(workers), check],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    detail = r" \(\d+ bytes to write, \d+ free\)" if check == "precheck" else ""
    if workers > 1 and check == "precheck":
        # two workers may each pass the free-space check for their last episodes at once (nothing reserves
        # space between processes); then the write's ENOSPC stops it: same path, same no-partial-file rule
        detail = f"(?:{detail})?"
    assert re.fullmatch(rf"steve1\.io\.DiskFullError: disk full at {out}/[\w-]+\.h5{detail}: "
                        r"free space on that filesystem .*", last), last
    left = sorted(p.name for p in out.iterdir())
    assert not [n for n in left if n.startswith(TEMP_PREFIX)] and MANIFEST not in left
    for name in left:  # what did fit is complete
        assert EpisodeReader(out / name).frames().shape[0] > 0


def test_an_unwritable_output_folder_fails_before_any_recording_is_read(tmp_path, synth, monkeypatch):
    from steve1.data import decode
    from steve1.io import NotWritableError

    (tmp_path / "a-file").write_text("")
    monkeypatch.setattr(decode, "find_sources", lambda raw: pytest.fail("recordings were read before the check"))
    with pytest.raises(NotWritableError, match=r"a-file/episodes: output folder is not writable"):
        decode_all(raw_with(tmp_path, synth), tmp_path / "a-file" / "episodes", DecodeParams(), progress=False)


NO_PRECHECK = """
import steve1.io
steve1.io.free_bytes = lambda path: 1 << 40     # every process (spawned workers too) meets ENOSPC on the write
"""


@pytest.mark.parametrize("workers,check", [(1, "precheck"), (2, "precheck"), (1, "no-precheck"), (2, "no-precheck")])
def test_a_full_disk_in_the_decode_stage_is_one_line_and_loses_nothing_already_written(
        tmp_path, synth, mounted, workers, check):
    """The stage itself (``python -m stages.decode``), 1 and 2 worker processes: a first run fits; a second
    with 12 more recordings fills the 1.3 MB filesystem. One error line naming the path, no traceback,
    no temp file, and the first run's episodes and manifest are untouched."""
    import subprocess
    import sys

    import yaml

    raw = raw_with(tmp_path, synth, ids=("synthetic-0-1", "copy-a", "copy-b"))
    out = mounted("size=1300k") / "episodes"
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"paths": {"raw": str(raw), "episodes": str(out)}, "decode": {"workers": workers}}))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    if check == "no-precheck":
        (tmp_path / "site").mkdir()
        (tmp_path / "site" / "sitecustomize.py").write_text(NO_PRECHECK)
        env["PYTHONPATH"] = os.pathsep.join([str(tmp_path / "site"), str(REPO)])

    def stage() -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "stages.decode", "--params", str(params)], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=300)

    first = stage()
    assert first.returncode == 0, first.stderr[-2000:]
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert sorted(before) == sorted(["synthetic-0-1.h5", "copy-a.h5", "copy-b.h5", MANIFEST])
    for k in range(12):
        for s in (".mp4", ".jsonl"):
            shutil.copy(synth / f"synthetic-0-0{s}", raw / f"copy-{k:02d}{s}")
    second = stage()
    assert second.returncode == 1, second.stderr[-2000:]
    errors = [line for line in second.stderr.splitlines() if "error" in line.lower() or "Traceback" in line]
    assert len(errors) == 1 and re.fullmatch(rf"error: disk full at {out}(/[\w-]+\.h5)?( \((\d+ bytes to write, )?\d+ (bytes )?free\))?: "
                                             r"free space on that filesystem .*", errors[0]), second.stderr[-3000:]
    left = sorted(p.name for p in out.iterdir())
    assert not [n for n in left if n.startswith(TEMP_PREFIX)]
    assert {n: (out / n).read_bytes() for n in before} == before      # nothing already written is lost
    for name in left:
        if name != MANIFEST:
            assert EpisodeReader(out / name).frames().shape[0] > 0     # what did fit is complete


def test_conversion_record_covers_every_declared_decode_key():
    """An episode records what shaped it (and is redone when that changes): every decode key the stage
    declares (steve1.shapes) is in the record, but the two that only choose which recordings are kept."""
    from steve1.data.decode import conversion_settings
    from steve1.shapes import param_keys

    recorded = set(conversion_settings(DecodeParams())) | {"cursor_png"}   # recorded as "cursor" (its digest)
    keep_rules = {"min_kept_steps", "max_frame_mismatch"}                  # skip with a reason, bytes untouched
    declared = {k.split(".", 1)[1] for k in param_keys("decode") if k.startswith("decode.")}
    assert declared - keep_rules <= recorded, declared - keep_rules - recorded
