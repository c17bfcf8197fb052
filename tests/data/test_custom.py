"""steve1.data.custom: frames/*.png + actions.jsonl and MineRL v0.4 trajectories -> episodes."""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest

from steve1 import actions as A
from steve1.data import formats
from steve1.data.custom import (MINERL_KEYS, CustomImportError, import_all, import_frames_episode, list_frames,
                                read_actions_file)
from steve1.data.decode import DecodeSkip, decode_recording
from steve1.data.episodes import EpisodeReader, episode_path
from steve1.data.synthetic import write_synthetic_recording
from steve1.data.video import iter_processed_frames, iter_raw_frames, to_rgb_resized
from steve1.params import DecodeParams

W, H, N = 64, 48, 6


def _image(i: int) -> np.ndarray:
    """A BGR 64x48 frame that differs per index (gradients, so the resize has work to do)."""
    y, x = np.mgrid[0:H, 0:W]
    return np.stack([(x * 4 + i * 20) % 256, (y * 5 + i * 7) % 256, (x + y + i * 40) % 256], -1).astype(np.uint8)


def _env_lines() -> list[dict]:
    return [
        {"forward": 1, "camera": [0.0, 2.5]},
        {},                                                   # null: dropped like a null jsonl line
        {"attack": 1, "jump": True, "camera": [-3, 0]},
        {"inventory": 1},
        {"hotbar.3": 1, "sneak": 1, "sprint": 1, "camera": [12.0, -0.4]},
        {"ESC": 1, "camera": [0, 0]},
    ]


def write_frames_episode(root, name, lines=None, images=None, names=None):
    folder = root / name
    (folder / "frames").mkdir(parents=True)
    images = [_image(i) for i in range(N)] if images is None else images
    names = names or [f"frame_{i}.png" for i in range(len(images))]     # frame_10 after frame_9
    for img, n in zip(images, names):
        cv2.imwrite(str(folder / "frames" / n), img)
    lines = _env_lines() if lines is None else lines
    (folder / "actions.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return folder


def write_minerl_trajectory(root, name, n_actions=5, lead=2, place=("none", "dirt", "none", "none", "none")):
    """A tiny MineRL v0.4 trajectory: ``lead`` frames before the n+1 states, as the data pipeline expects."""
    folder = root / name
    folder.mkdir(parents=True)
    n_video = lead + n_actions + 1
    writer = cv2.VideoWriter(str(folder / "recording.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 20, (W, H))
    for i in range(n_video):
        writer.write(_image(i))
    writer.release()
    z = np.zeros(n_actions, np.int64)
    fwd = z.copy()
    fwd[0] = 1
    cam = np.zeros((n_actions, 2), np.float32)
    cam[3] = [1.5, -4.0]
    np.savez(folder / "rendered.npz", **{
        "action$forward": fwd, "action$back": z, "action$left": z, "action$right": z, "action$jump": z,
        "action$sneak": z, "action$sprint": z, "action$attack": z, "action$camera": cam,
        "action$place": np.array(place), "action$craft": np.array(["none"] * (n_actions - 1) + ["stick"]),
        "reward": np.zeros(n_actions, np.float32),
    })
    (folder / "metadata.json").write_text(json.dumps({"true_video_frame_count": n_video}))
    return folder


def _settings(**kw) -> DecodeParams:
    return DecodeParams(**{"frame_codec": "lzf", **kw})  # lossless: tests compare frames bit for bit


# ------------------------------------------------------------------------------------ line formats
def test_env_lines_agent_indices_equal_env_to_agent(tmp_path):
    folder = write_frames_episode(tmp_path, "ep")
    ep = import_frames_episode(folder, "ep", _settings(), tmp_path / "raw" / "ep.mp4")
    lines = _env_lines()
    kept = [0, 2, 3, 4, 5]
    env = {k: np.array([int(lines[i].get(k, 0)) for i in kept]) for k in A.ENV_BUTTON_KEYS}
    env["camera"] = np.array([lines[i].get("camera", [0, 0]) for i in kept], np.float64)
    b, c = A.env_to_agent(env)
    np.testing.assert_array_equal(ep.buttons, b)
    np.testing.assert_array_equal(ep.camera, c)
    np.testing.assert_array_equal(ep.source_step, kept)
    assert set(ep.env_actions) == set(MINERL_KEYS)
    np.testing.assert_array_equal(ep.env_actions["camera"], env["camera"])
    expected = np.stack([to_rgb_resized(_image(i), (128, 128)) for i in kept])   # decode's resize
    np.testing.assert_array_equal(ep.frames, expected)
    assert not ep.gui_open.any()
    assert json.loads(ep.attrs[formats.A_DECODE_COUNTS])["line_format"] == "env"


def test_contractor_lines_match_decode_of_the_same_recording(tmp_path):
    rec = write_synthetic_recording(tmp_path / "src", "synth", n_steps=20, seed=3)
    folder = tmp_path / "custom" / "synth"
    (folder / "frames").mkdir(parents=True)
    for i, bgr in enumerate(iter_raw_frames(rec.video)):                 # the mp4's frames as PNGs
        cv2.imwrite(str(folder / "frames" / f"{i:04d}.png"), bgr)
    shutil.copy(rec.jsonl, folder / "actions.jsonl")
    got = import_frames_episode(folder, "synth", _settings(), tmp_path / "raw" / "synth.mp4")
    want = decode_recording(rec.video, rec.jsonl, "synth", _settings())
    assert got.gui_open.any()                                            # cursor path exercised
    for name in ("frames", "buttons", "camera", "source_step", "gui_open", "cursor_xy"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)
    for key, col in want.env_actions.items():
        np.testing.assert_array_equal(got.env_actions[key], col, err_msg=key)
    # the companion video gives the embed stage the same frames the episode holds
    again = np.concatenate(list(iter_processed_frames(tmp_path / "raw" / "synth.mp4", got.source_step,
                                                      got.gui_open, got.cursor_xy, (128, 128))))
    np.testing.assert_array_equal(again, got.frames)


def test_frames_sorted_by_numeric_index(tmp_path):
    folder = write_frames_episode(tmp_path, "ep", names=[f"f{i}.png" for i in (1, 2, 9, 10, 11, 100)])
    assert [p.name for p in list_frames(folder / "frames")] == ["f1.png", "f2.png", "f9.png", "f10.png",
                                                                "f11.png", "f100.png"]


@pytest.mark.parametrize("line, needle", [
    ({"forwrd": 1}, "unknown key 'forwrd'"),
    ({"forward": 2}, "key 'forward': value 2, expected 0 or 1"),
    ({"camera": [1.0]}, "key 'camera': value [1.0]"),
    ({"camera": [float("nan"), 0]}, "key 'camera'"),
])
def test_bad_env_lines_name_file_line_and_key(tmp_path, line, needle):
    path = tmp_path / "actions.jsonl"
    path.write_text(json.dumps({"forward": 1}) + "\n" + json.dumps(line) + "\n")
    with pytest.raises(DecodeSkip) as exc:
        read_actions_file(path)
    assert f"{path}:2: " in str(exc.value) and needle in str(exc.value)


# ------------------------------------------------------------------------------------ MineRL v0.4
def test_minerl_trajectory_aligned_to_the_last_states(tmp_path):
    write_minerl_trajectory(tmp_path / "src", "traj")
    report = import_all(tmp_path / "src", tmp_path / "out", _settings(), progress=False)
    assert report.skipped == {}
    with EpisodeReader(episode_path(tmp_path / "out", "traj")) as ep:
        steps, frames = ep.array(formats.SOURCE_STEP), ep.frames()
        buttons, use = ep.array(formats.BUTTONS), ep.array(f"{formats.ENV_ACTIONS}/use")
        counts = json.loads(ep.attrs[formats.A_DECODE_COUNTS])
    # actions 0 (forward), 1 (place -> use), 3 (camera) are kept; 2 and 4 are null (4: craft only)
    np.testing.assert_array_equal(steps, [2, 3, 5])                   # lead of 2 frames skipped
    np.testing.assert_array_equal(use, [0, 1, 0])
    env = {"forward": np.array([1, 0, 0]), "use": np.array([0, 1, 0]),
           "camera": np.array([[0, 0], [0, 0], [1.5, -4.0]])}
    np.testing.assert_array_equal(buttons, A.env_to_agent(env)[0])
    decoded = list(iter_raw_frames(tmp_path / "src" / "traj" / "recording.mp4"))
    np.testing.assert_array_equal(frames, np.stack([to_rgb_resized(decoded[s], (128, 128)) for s in steps]))
    assert counts["n_place_as_use"] == 1 and counts["n_dropped_actions"] == 1 and counts["video_offset"] == 2
    assert (tmp_path / "out" / "raw" / "traj.mp4").read_bytes() == (tmp_path / "src" / "traj" / "recording.mp4").read_bytes()


# ------------------------------------------------------------------------------------ many episodes
def test_bad_inputs_skipped_with_reasons_good_one_completes_and_rerun_reuses(tmp_path):
    src = tmp_path / "src"
    write_frames_episode(src, "good")
    write_frames_episode(src, "count", lines=_env_lines()[:-1])
    bad_png = write_frames_episode(src, "badpng")
    (bad_png / "frames" / "frame_3.png").write_bytes(b"not a png")
    write_frames_episode(src, "badkey", lines=_env_lines()[:2] + [{"fly": 1}] + _env_lines()[3:])
    write_frames_episode(src, "size", images=[_image(i) for i in range(N - 1)] + [np.zeros((10, 10, 3), np.uint8)])
    write_minerl_trajectory(src, "minerl_short", n_actions=5, lead=0, place=("none",) * 5)
    meta = src / "minerl_short" / "metadata.json"
    meta.write_text(json.dumps({"true_video_frame_count": 3}))
    (src / "notes").mkdir()

    report = import_all(src, tmp_path / "out", _settings(), progress=False)
    reasons = report.skipped
    assert report.n_ok == 1 and set(reasons) == {"count", "badpng", "badkey", "size", "minerl_short", "notes"}
    assert "6 PNG frames in frames/ but 5 lines" in reasons["count"]
    assert "frame_3.png: unreadable PNG" in reasons["badpng"]
    assert "actions.jsonl:3: unknown key 'fly'" in reasons["badkey"]
    assert "10x10, expected 64x48" in reasons["size"]
    assert "3 video frames but 5 actions" in reasons["minerl_short"]
    assert "not a recording" in reasons["notes"]
    out = tmp_path / "out"
    assert sorted(p.name for p in out.glob("*.h5")) == ["good.h5"]
    assert sorted(p.name for p in (out / "raw").iterdir()) == ["good.mp4"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["episodes"]["good"]["status"] == "ok" and manifest["episodes"]["good"]["n_kept"] == 5

    mtime = episode_path(out, "good").stat().st_mtime_ns
    again = import_all(src, out, _settings(), progress=False)
    assert again.reused == 1 and episode_path(out, "good").stat().st_mtime_ns == mtime
    # a changed conversion setting re-imports
    third = import_all(src, out, _settings(frame_codec="gzip"), progress=False)
    assert third.reused == 0 and third.n_ok == 1


def test_refuses_a_decode_output_folder(tmp_path):
    out = tmp_path / "episodes"
    out.mkdir()
    (out / "manifest.json").write_text(json.dumps({"format_version": 1, "episodes": {}}))
    write_frames_episode(tmp_path / "src", "good")
    with pytest.raises(CustomImportError, match="not an import manifest"):
        import_all(tmp_path / "src", out, _settings(), progress=False)


@pytest.mark.parametrize("key, value, needle", [
    ("action$forward", np.array([0, 2, 0, 0, 0]), "key 'action$forward': values [0, 2], expected 0 or 1"),
    ("action$fly", np.zeros(5, np.int64), "key 'action$fly': unknown action key"),
    ("action$camera", np.zeros((5, 3)), "key 'action$camera': float64 [5, 3]"),
    ("action$jump", np.zeros(4, np.int64), "action arrays differ in length"),
    ("action$equip", np.array([{"a": 1}] * 5, dtype=object), "cannot be read without pickle"),
])
def test_bad_minerl_arrays_skipped_with_key(tmp_path, key, value, needle):
    folder = write_minerl_trajectory(tmp_path / "src", "traj")
    arrays = dict(np.load(folder / "rendered.npz"))
    arrays[key] = value
    np.savez(folder / "rendered.npz", **arrays)
    report = import_all(tmp_path / "src", tmp_path / "out", _settings(), progress=False)
    assert "rendered.npz" in report.skipped["traj"] and needle in report.skipped["traj"]


def test_cli_import_recordings(tmp_path):
    from typer.testing import CliRunner

    from steve1.cli import app

    write_frames_episode(tmp_path / "src", "ep")
    res = CliRunner().invoke(app, ["import-recordings", str(tmp_path / "src"), str(tmp_path / "out"), "--codec", "gzip"])
    assert res.exit_code == 0, res.output
    assert "1/1 episodes ok" in res.output and episode_path(tmp_path / "out", "ep").is_file()
    bad = CliRunner().invoke(app, ["import-recordings", str(tmp_path / "src"), str(tmp_path / "o2"), "--format", "x"])
    assert bad.exit_code == 2


def test_cli_import_recordings_into_an_unusable_folder_is_one_line_naming_it(tmp_path):
    """An output path that is a file (or lies under one) is refused before any episode, with one line."""
    from typer.testing import CliRunner

    from steve1.cli import app

    write_frames_episode(tmp_path / "src", "ep")
    (tmp_path / "taken").write_text("a file\n")
    for out in (tmp_path / "taken", tmp_path / "taken" / "sub"):
        res = CliRunner().invoke(app, ["import-recordings", str(tmp_path / "src"), str(out)])
        assert res.exit_code == 1 and (res.exception is None or isinstance(res.exception, SystemExit)), res.exception
        assert res.output.startswith(f"error: {out}: output folder is not writable"), res.output
        assert res.output.count("\n") == 1, res.output
    assert (tmp_path / "taken").read_text() == "a file\n"


def test_symbolic_links_out_of_the_source_folder_are_refused_naming_the_link(tmp_path):
    """A link that leads out of the source folder (a frame, the actions, the episode folder itself) skips
    its episode with a reason naming the link; links that stay inside are followed."""
    src, outside = tmp_path / "src", tmp_path / "outside"
    write_frames_episode(outside, "elsewhere")
    write_frames_episode(src, "frame_link")
    (src / "frame_link" / "frames" / "frame_2.png").unlink()
    (src / "frame_link" / "frames" / "frame_2.png").symlink_to(outside / "elsewhere" / "frames" / "frame_2.png")
    write_frames_episode(src, "actions_link")
    (src / "actions_link" / "actions.jsonl").unlink()
    (src / "actions_link" / "actions.jsonl").symlink_to(outside / "elsewhere" / "actions.jsonl")
    (src / "folder_link").symlink_to(outside / "elsewhere")
    good = write_frames_episode(src, "good")
    (src / "inside_link").symlink_to(good)                     # inside the source folder: followed

    report = import_all(src, tmp_path / "out", _settings(), progress=False)
    assert sorted(report.skipped) == ["actions_link", "folder_link", "frame_link"] and report.n_ok == 2
    for name, link in [("frame_link", "frame_link/frames/frame_2.png"), ("actions_link", "actions_link/actions.jsonl"),
                       ("folder_link", "folder_link")]:
        assert report.skipped[name].startswith(f"{src / link}: a symbolic link to {outside.resolve()}"), name
        assert "outside the source folder" in report.skipped[name]
