"""Episode embedding: per-frame features + windowed pooling == STEVE-1's per-window encode_video."""

from __future__ import annotations

import json

import cv2
import h5py
import numpy as np
import pytest
import torch
from torch.testing import assert_close

from steve1.data import formats
from fixtures.embedding import naive_window_embeddings
from steve1.data.embedding import Embedder, embed_all, embed_frames, make_embedder, shard, write_manifest
from steve1.data.episodes import Episode, read_embeds, write_episode
from steve1.models.mineclip import build_mineclip
from steve1.models.mineclip_files import random_weights_info

SMALL = {"resolution": (32, 48), "embed_dim": 64, "vision_width": 64, "vision_layers": 1, "text_width": 32,
         "text_layers": 1, "text_heads": 2}


def small_embedder(batch_size: int) -> Embedder:
    return Embedder(model=build_mineclip(SMALL, seed=3), weights=random_weights_info("small", 3),
                    device=torch.device("cpu"), batch_size=batch_size)


@pytest.mark.parametrize("batch_size", [5, 64])
def test_windowed_embeddings_equal_naive_encode_video(batch_size):
    frames = np.random.default_rng(0).integers(0, 256, (23, 32, 48, 3), dtype=np.uint8)
    embedder = small_embedder(batch_size)
    embeds, valid = embed_frames(embedder, frames)
    naive, naive_valid = naive_window_embeddings(embedder, frames, windows_per_call=3)
    assert embeds.shape == (23, 64) and embeds.dtype == np.float32
    np.testing.assert_array_equal(valid, np.arange(23) >= formats.NONE_EMBED_OFFSET)
    np.testing.assert_array_equal(valid, naive_valid)
    assert not embeds[:15].any()
    assert_close(embeds, naive, atol=1e-5, rtol=1e-5)


def test_episode_shorter_than_a_window_is_all_invalid():
    embeds, valid = embed_frames(small_embedder(4), np.zeros((10, 32, 48, 3), np.uint8))
    assert embeds.shape == (10, 64) and not valid.any() and not embeds.any()


def test_shards_cover_every_episode_once():
    ids = [f"ep{i}" for i in range(7)]
    parts = [shard(ids, r, 3) for r in range(3)]
    assert sorted(sum(parts, [])) == ids and parts[0] == ["ep0", "ep3", "ep6"]


def _episode(tmp_path, eid: str, n: int) -> np.ndarray:
    """Write a decoded episode and its raw 640x360 mp4; return the raw RGB frames."""
    rng = np.random.default_rng(1)
    raw = rng.integers(0, 256, (n, 45, 80, 3), dtype=np.uint8).repeat(8, axis=1).repeat(8, axis=2)  # 360x640
    writer = cv2.VideoWriter(str(tmp_path / "raw" / f"{eid}.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 20, (640, 360))
    for frame in raw:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    ep = Episode(episode_id=eid, frames=np.zeros((n, 128, 128, 3), np.uint8), buttons=np.zeros(n, int),
                 camera=np.full(n, 60), env_actions={"camera": np.zeros((n, 2))}, source_step=np.arange(n),
                 gui_open=np.zeros(n, bool), cursor_xy=np.zeros((n, 2), np.float32), attrs={"fps": 20})
    write_episode(tmp_path / "episodes" / f"{eid}.h5", ep)
    return raw


def test_embed_all_writes_resumes_and_records_weights(tmp_path):
    from steve1.data.video import iter_processed_frames

    (tmp_path / "raw").mkdir()
    _episode(tmp_path, "ep-a", 18)
    _episode(tmp_path, "ep-b", 12)
    embedder = make_embedder(None, "tiny", seed=0, batch_size=8, device="cpu")
    dirs = (tmp_path / "episodes", tmp_path / "raw", tmp_path / "embeds")
    done = embed_all(embedder, *dirs)
    assert {k: v["status"] for k, v in done.items()} == {"ep-a": "written", "ep-b": "written"}

    embeds, valid, attrs = read_embeds(tmp_path / "embeds" / "ep-a.h5")
    assert embeds.shape == (18, 512) and valid.sum() == 3
    assert attrs[formats.A_WEIGHTS] == "random-tiny:seed=0" and attrs[formats.A_N_FRAMES] == 18
    frames = np.concatenate(list(iter_processed_frames(tmp_path / "raw" / "ep-a.mp4", np.arange(18), np.zeros(18, bool),
                                                       np.zeros((18, 2)), size=(256, 160))))
    naive, _ = naive_window_embeddings(embedder, frames)
    assert_close(embeds, naive, atol=1e-5, rtol=1e-5)

    assert all(v["status"] == "skipped" for v in embed_all(embedder, *dirs).values())
    other = make_embedder(None, "tiny", seed=1, batch_size=8, device="cpu")
    assert all(v["status"] == "written" for v in embed_all(other, *dirs).values())
    manifest = write_manifest(other, dirs[0], dirs[2], "float32")
    on_disk = json.loads((tmp_path / "embeds" / "manifest.json").read_text())
    assert on_disk == json.loads(json.dumps(manifest))
    assert on_disk["weights"] == "random-tiny:seed=1" and on_disk["episodes"]["ep-b"] == {"n_frames": 12, "n_valid": 0}

    # an episode re-decoded from changed sources (same length) is embedded again
    path = tmp_path / "episodes" / "ep-a.h5"
    with h5py.File(path, "a") as f:
        f.attrs[formats.A_VIDEO_SHA256] = "a-new-video"
    assert {k: v["status"] for k, v in embed_all(other, *dirs).items()} == {"ep-a": "written", "ep-b": "skipped"}


def test_missing_video_is_a_clear_error(tmp_path):
    (tmp_path / "raw").mkdir()
    _episode(tmp_path, "ep-a", 4)
    (tmp_path / "raw" / "ep-a.mp4").unlink()
    with pytest.raises(FileNotFoundError, match="ep-a.mp4: raw video of episode ep-a not found"):
        embed_all(small_embedder(4), tmp_path / "episodes", tmp_path / "raw", tmp_path / "embeds")


def test_embed_stage_end_to_end(tmp_path):
    import yaml

    from stages.embed import main

    (tmp_path / "raw").mkdir()
    _episode(tmp_path, "ep-a", 17)
    params = {"paths": {"raw": str(tmp_path / "raw"), "episodes": str(tmp_path / "episodes"),
                        "embeds": str(tmp_path / "embeds")},
              "embed": {"batch_size": 16, "device": "cpu", "store_dtype": "float16"}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert main(["--params", str(tmp_path / "params.yaml")]) == 0
    embeds, valid, attrs = read_embeds(tmp_path / "embeds" / "ep-a.h5")
    assert embeds.shape == (17, 512) and valid.tolist() == [False] * 15 + [True] * 2
    assert attrs[formats.A_WEIGHTS] == "random-tiny:seed=0"
    assert json.loads((tmp_path / "embeds" / "manifest.json").read_text())["store_dtype"] == "float16"
    params["embed"]["weights"] = str(tmp_path / "absent.pth")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert main(["--params", str(tmp_path / "params.yaml")]) == 1


def test_an_unwritable_embeds_folder_fails_before_mineclip_is_built(tmp_path, monkeypatch):
    from steve1.data import embedding
    from steve1.io import NotWritableError
    from steve1.params import EmbedParams

    (tmp_path / "a-file").write_text("")
    monkeypatch.setattr(embedding, "make_embedder", lambda *a, **k: pytest.fail("MineCLIP built before the check"))
    with pytest.raises(NotWritableError, match=r"a-file/embeds: output folder is not writable"):
        embedding.run_embed(EmbedParams(), tmp_path / "episodes", tmp_path / "raw", tmp_path / "a-file" / "embeds")
