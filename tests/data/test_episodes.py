"""Episode and embeds stores: round trip, codecs, atomicity, validation, storage faults named."""

from __future__ import annotations

import errno
from pathlib import Path

import numpy as np
import pytest

from steve1.data import formats
from steve1.data.episodes import (Episode, EpisodeFormatError, EpisodeReader, FrameStorage, StoreError, list_episode_ids,
                                  read_embeds, verify_store, write_embeds, write_episode)
from steve1.io import DiskFullError
from fixtures.episodes import smooth_frames


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


@pytest.mark.parametrize("codec", formats.CODECS)
def test_round_trip(tmp_path, codec):
    ep = make_episode()
    if codec in formats.PER_FRAME_CODECS:
        ep.frames = smooth_frames(10)  # lossy: frames like footage, not noise
    path = write_episode(tmp_path / "ep-1.h5", ep, FrameStorage(codec))
    with EpisodeReader(path) as r:
        assert r.n_frames == 10 and r.episode_id == "ep-1" and r.frame_codec == codec
        assert r.attrs[formats.A_FORMAT_VERSION] == formats.EPISODE_FORMAT_VERSION
        if codec in formats.LOSSLESS_CODECS:
            np.testing.assert_array_equal(r.frames(2, 5), ep.frames[2:5])
        else:
            err = np.abs(r.frames(2, 5).astype(int) - ep.frames[2:5])
            assert err.mean() < 8.0, err.mean()  # 4:2:0 chroma on the fixture's sharp block edges
        assert r.frames(-2).shape == (2, 128, 128, 3) and r.frames(5, 2).shape == (0, 128, 128, 3)
        np.testing.assert_array_equal(r.array(formats.FRAMES, 1, 4), r.frames(1, 4))
        np.testing.assert_array_equal(r.array(formats.BUTTONS), ep.buttons)
        assert r.env_action_keys() == ["attack", "camera"]
    assert list_episode_ids(tmp_path) == ["ep-1"]


def test_jpeg_frames_are_each_a_jpeg_of_the_quality_asked(tmp_path):
    """frame_bytes[offsets[i]:offsets[i+1]] is frame i's JPEG: smaller and further from the
    frames at a lower quality; a pool of threads decodes the same pixels as one thread."""
    import simplejpeg
    from concurrent.futures import ThreadPoolExecutor

    ep = make_episode(n=40)
    ep.frames = smooth_frames(40)
    sizes, errors = {}, {}
    for q in (50, 95):
        path = write_episode(tmp_path / f"q{q}.h5", ep, FrameStorage("jpeg", quality=q))
        with EpisodeReader(path) as r:
            store = r.frame_store
            data, offsets = store.data[:], store.offsets
            assert offsets[0] == 0 and offsets[-1] == len(data) and r.attrs[formats.A_FRAME_QUALITY] == q
            third = simplejpeg.decode_jpeg(data[offsets[3]:offsets[4]].tobytes(), colorspace="RGB")
            np.testing.assert_array_equal(r.frames(3, 4)[0], third)
            out = np.empty((37, 128, 128, 3), np.uint8)
            with ThreadPoolExecutor(3) as pool:
                store.read_into(out, 2, 39, pool, parts=3)
            np.testing.assert_array_equal(out, r.frames(2, 39))
            sizes[q] = len(data) / 40
            errors[q] = np.abs(r.frames().astype(int) - ep.frames).mean()
    assert sizes[50] < sizes[95] < ep.frames[0].nbytes / 4 and errors[95] < errors[50] < 12.0, (sizes, errors)


def test_jpeg_writes_are_byte_reproducible_across_processes(tmp_path):
    """Same frames and quality, same file bytes: here and in a fresh process with other thread settings."""
    import hashlib
    import subprocess
    import sys

    ep = make_episode(n=30)
    ep.frames = smooth_frames(30, seed=3)
    np.save(tmp_path / "frames.npy", ep.frames)
    write_episode(tmp_path / "a.h5", ep, FrameStorage("jpeg"))
    write_episode(tmp_path / "b.h5", ep, FrameStorage("jpeg"))
    code = ("import sys, numpy as np; sys.path[:0] = [sys.argv[3], sys.argv[3] + '/..']; from test_episodes import make_episode; "
            "from steve1.data.episodes import FrameStorage, write_episode; ep = make_episode(n=30); "
            "ep.frames = np.load(sys.argv[1]); write_episode(sys.argv[2], ep, FrameStorage('jpeg'))")
    env = {**__import__("os").environ, "BLOSC_NTHREADS": "3", "OMP_NUM_THREADS": "3"}
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "frames.npy"), str(tmp_path / "c.h5"),
                    str(Path(__file__).parent)], check=True, env=env)
    digests = {hashlib.sha256((tmp_path / f"{n}.h5").read_bytes()).hexdigest() for n in "abc"}
    assert len(digests) == 1


def _set_version(path, version, drop_codec=False):
    import h5py

    with h5py.File(path, "r+") as f:
        f.attrs[formats.A_FORMAT_VERSION] = version
        if drop_codec:
            del f.attrs[formats.A_FRAME_CODEC]


def test_version_1_files_still_read(tmp_path):
    """Version 1 had no frame_codec attribute and always a filtered frames dataset."""
    ep = make_episode()
    path = write_episode(tmp_path / "ep-1.h5", ep, FrameStorage("blosc-lz4"))
    _set_version(path, 1, drop_codec=True)
    with EpisodeReader(path) as r:
        np.testing.assert_array_equal(r.frames(), ep.frames)
        assert r.frame_codec == "hdf5-filter"


@pytest.mark.parametrize("version,hint", [(3, "it was written by a newer steve1: update this checkout"),
                                          (0, "it is not a steve1 episode file: run the decode stage again")])
def test_an_unreadable_format_version_fails_with_what_to_do(tmp_path, version, hint):
    path = write_episode(tmp_path / "ep-1.h5", make_episode(), FrameStorage("jpeg"))
    _set_version(path, version)
    with pytest.raises(EpisodeFormatError, match=rf"{path}: episode format_version {version}, this code reads 1, 2; {hint}"):
        EpisodeReader(path).frames()


def test_a_damaged_jpeg_frame_is_named_with_its_file_and_rows(tmp_path):
    import h5py

    ep = make_episode(n=50)
    ep.frames = smooth_frames(50)
    path = write_episode(tmp_path / "ep.h5", ep, FrameStorage("jpeg"))
    with h5py.File(path, "r") as f:
        where = f[formats.FRAME_BYTES].id.get_offset() + int(f[formats.FRAME_OFFSETS][20])
    with open(path, "r+b") as fh:
        fh.seek(where)
        fh.write(b"\x00" * 16)   # frame 20's JPEG header
    with EpisodeReader(path) as r:
        r.frames(0, 20)   # the frames before it are intact
        with pytest.raises(StoreError, match=rf"{path}: cannot decode frames \[16, 24\) of this episode file .*"
                                             r"run the decode stage again"):
            r.frames(16, 24)


def test_length_mismatch_is_refused():
    ep = make_episode()
    with pytest.raises(EpisodeFormatError, match="lengths differ"):
        Episode(**{**ep.__dict__, "buttons": ep.buttons[:-1]})


def test_embeds_round_trip(tmp_path):
    e = np.random.default_rng(1).normal(size=(20, 512)).astype(np.float32)
    valid = np.arange(20) >= formats.NONE_EMBED_OFFSET
    write_embeds(tmp_path / "ep.h5", "ep", e, valid, weights="random-tiny:seed=0", store_dtype="float16")
    got, got_valid, attrs = read_embeds(tmp_path / "ep.h5")
    np.testing.assert_allclose(got, e, atol=2e-3, rtol=1e-3)
    np.testing.assert_array_equal(got_valid, valid)
    assert attrs[formats.A_WEIGHTS] == "random-tiny:seed=0"


def test_fresh_process_reads_blosc_frames(tmp_path):
    """A reader in a new process (a DataLoader worker, the train stage) must have the Blosc filter."""
    import subprocess
    import sys

    ep = make_episode()
    write_episode(tmp_path / "ep-1.h5", ep, FrameStorage("blosc-lz4"))
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
        write_episode(tmp_path / f"e{i}.h5", ep, FrameStorage("blosc-lz4"))
        digests.add(hashlib.sha256((tmp_path / f"e{i}.h5").read_bytes()).hexdigest())
    assert len(digests) == 1
    assert os.environ["BLOSC_NTHREADS"] == "2"               # readers keep their threads


# ------------------------------------------------------------------------------ storage faults

def _ep_file(tmp_path, n=200, codec="lzf", chunk_frames=32):
    """Frames that compress (noise-free terrain), so every chunk goes through the codec."""
    from fixtures.episodes import make_episode as factory_episode, smooth_frames

    ep = factory_episode("ep", n)
    ep.frames[:] = smooth_frames(n, noise=0)
    return write_episode(tmp_path / "ep.h5", ep, FrameStorage(codec, chunk_frames=chunk_frames))


@pytest.mark.parametrize("codec", ["lzf", "blosc-lz4", "gzip"])
def test_a_damaged_chunk_is_named_with_its_file_and_rows(tmp_path, codec):
    from fixtures.episodes import damage_chunk

    path = _ep_file(tmp_path, codec=codec)
    start, end = damage_chunk(path, formats.FRAMES, index=3)  # a chunk in the middle of the file
    assert (start, end) == (96, 128)
    with EpisodeReader(path) as r:
        assert r.frames(0, 96).shape[0] == 96  # the chunks before it still read
        with pytest.raises(StoreError, match=rf"{path}: cannot read frames \[90, 100\) of this episode file \(.+\)"):
            r.frames(90, 100)
        with pytest.raises(StoreError, match=str(path)):
            r.frames(96, 128)


def test_a_truncated_or_foreign_file_is_named_when_opened(tmp_path):
    path = _ep_file(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(StoreError, match=rf"{path}: cannot open this episode file \(.*\); it is damaged or truncated: "
                                         r"delete it and run the decode stage again"):
        EpisodeReader(path).n_frames
    emb = tmp_path / "emb.h5"
    emb.write_bytes(b"not hdf5 at all")
    with pytest.raises(StoreError, match=rf"{emb}: cannot open this embeds file .* run the embed stage again"):
        read_embeds(emb)


def test_verify_store_reads_the_last_chunk_of_every_dataset(tmp_path):
    from fixtures.episodes import damage_chunk

    path = _ep_file(tmp_path)
    verify_store(path)  # intact
    damage_chunk(path, formats.FRAMES, index=-1)
    with pytest.raises(StoreError, match=rf"{path}: cannot read frames rows \[192, 200\) of this episode file"):
        verify_store(path)


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def _write(what, final, n):
    if what == "episode":
        write_episode(final, make_episode(n))
    else:
        write_embeds(final, "ep-1", np.full((n, 4), n, np.float32), np.ones(n, bool), weights="w")


@pytest.mark.parametrize("what", ["episode", "embeds"])
def test_disk_full_while_writing_a_store_names_the_path_and_leaves_nothing(tmp_path, monkeypatch, what):
    final = tmp_path / "out" / "ep-1.h5"
    _write(what, final, 10)  # an older complete file
    before = final.read_bytes()
    monkeypatch.setattr(Path, "write_bytes", _no_space)  # the one disk write of a store
    with pytest.raises(DiskFullError, match=rf"^disk full at {final}: free space"):
        _write(what, final, 20)
    assert [p.name for p in final.parent.iterdir()] == ["ep-1.h5"]  # no temp left
    assert final.read_bytes() == before  # the older file is untouched


def test_too_little_free_space_is_refused_before_writing(tmp_path, monkeypatch):
    import steve1.io

    monkeypatch.setattr(steve1.io, "free_bytes", lambda path: 1000)
    with pytest.raises(DiskFullError, match=r"disk full at .*ep\.h5 \(\d+ bytes to write, 1000 free\)"):
        write_episode(tmp_path / "ep.h5", make_episode(20))
    assert list(tmp_path.iterdir()) == []


def test_frame_storage_is_the_decode_params_frame_settings():
    from steve1.params import DecodeParams

    d = DecodeParams(frame_codec="blosc-zstd", codec_level=4, frame_quality=60, chunk_frames=16)
    s = FrameStorage.from_params(d)
    assert s == FrameStorage("blosc-zstd", level=4, quality=60, chunk_frames=16) and not s.per_frame
    assert s.settings() == {"frame_codec": "blosc-zstd", "codec_level": 4, "frame_quality": None, "chunk_frames": 16}
    assert FrameStorage("jpeg", quality=60).settings()["frame_quality"] == 60   # only a per-frame codec keeps it
    with pytest.raises(ValueError, match="unknown frame codec 'webp'; expected one of"):
        FrameStorage("webp")
