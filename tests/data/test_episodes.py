"""Episode and embeds stores: round trip, codecs, atomicity, validation."""

from __future__ import annotations

import numpy as np
import pytest

from steve1.data import formats as F
from steve1.data.episodes import (Episode, EpisodeFormatError, EpisodeReader, list_episode_ids,
                                  read_embeds, write_embeds, write_episode)


def make_episode(n=10, eid="ep-1"):
    rng = np.random.default_rng(0)
    return Episode(
        episode_id=eid,
        frames=rng.integers(0, 256, (n, 128, 128, 3), dtype=np.uint8),
        buttons=rng.integers(0, 8641, n), camera=rng.integers(0, 121, n),
        env_actions={"attack": rng.integers(0, 2, n), "camera": rng.normal(size=(n, 2))},
        source_step=np.arange(n) * 2, gui_open=np.zeros(n, bool), cursor_xy=np.zeros((n, 2)),
        attrs={"fps": 20, "conversion_json": {"camera_int_truncation": False}},
    )


@pytest.mark.parametrize("codec", F.CODECS)
def test_round_trip(tmp_path, codec):
    ep = make_episode()
    path = write_episode(tmp_path / "ep-1.h5", ep, codec=codec)
    with EpisodeReader(path) as r:
        assert r.n_frames == 10 and r.episode_id == "ep-1"
        np.testing.assert_array_equal(r.frames(2, 5), ep.frames[2:5])
        np.testing.assert_array_equal(r.array(F.BUTTONS), ep.buttons)
        assert r.env_action_keys() == ["attack", "camera"]
    assert list_episode_ids(tmp_path) == ["ep-1"]


def test_length_mismatch_is_refused():
    ep = make_episode()
    with pytest.raises(EpisodeFormatError, match="lengths differ"):
        Episode(**{**ep.__dict__, "buttons": ep.buttons[:-1]})


def test_embeds_round_trip(tmp_path):
    e = np.random.default_rng(1).normal(size=(20, 512)).astype(np.float32)
    valid = np.arange(20) >= F.NONE_EMBED_OFFSET
    write_embeds(tmp_path / "ep.h5", "ep", e, valid, weights="random-tiny:seed=0", store_dtype="float16")
    got, got_valid, attrs = read_embeds(tmp_path / "ep.h5")
    np.testing.assert_allclose(got, e, atol=2e-3, rtol=1e-3)
    np.testing.assert_array_equal(got_valid, valid)
    assert attrs[F.A_WEIGHTS] == "random-tiny:seed=0"


def test_fresh_process_reads_blosc_frames(tmp_path):
    """A reader in a new process (a DataLoader worker, the train stage) must have the Blosc filter."""
    import subprocess
    import sys

    ep = make_episode()
    write_episode(tmp_path / "ep-1.h5", ep, codec="blosc-lz4")
    code = ("import sys; from steve1.data.episodes import EpisodeReader; "
            "sys.stdout.buffer.write(EpisodeReader(sys.argv[1]).frames(0, 3).tobytes())")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "ep-1.h5")], capture_output=True, check=True)
    assert out.stdout == ep.frames[:3].tobytes()


def test_blosc_writes_are_byte_reproducible(tmp_path, monkeypatch):
    """Threaded Blosc compression is not reproducible; writes must not depend on BLOSC_NTHREADS."""
    import hashlib
    import os

    monkeypatch.setenv("BLOSC_NTHREADS", "2")
    ep = make_episode(n=120)
    ramp = np.arange(128)[None, :, None, None] + np.arange(120)[:, None, None, None]
    ep.frames[:] = (ramp % 251).astype(np.uint8)          # compressible, so Blosc really splits work
    digests = set()
    for i in range(4):
        write_episode(tmp_path / f"e{i}.h5", ep, codec="blosc-lz4")
        digests.add(hashlib.sha256((tmp_path / f"e{i}.h5").read_bytes()).hexdigest())
    assert len(digests) == 1
    assert os.environ["BLOSC_NTHREADS"] == "2"               # readers keep their threads
