"""Decode throughput: the full decode path (jsonl parse, cv2 decode, cursor, resize, actions, HDF5
write) against a plain cv2 read of the same mp4 in the same run; bytes per frame per codec; and
per frame codec, what training reads pay: bytes per frame, frames decoded into a batch buffer per
CPU-second (one thread), and the pixel error against the lossless frames and against STEVE-1's
own 128x128 mp4v frames of the same recording.

Throughput is frames of the source video per CPU-second of this process (all threads), so the
figure is "per core" and less sensitive to other load on a shared machine; wall-clock figures
are recorded beside it.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path

import cv2
import pytest

import numpy as np

from benchmarks.conftest import QUICK, record
from steve1.data import formats
from steve1.data.decode import decode_recording
from steve1.data.episodes import EpisodeReader, FrameStorage, write_episode
from steve1.data.video import DECODE_THREADS
from steve1.params import DecodeParams
from tests.fixtures.mp4 import read_rgb_frames

REPO = Path(__file__).resolve().parents[1]
REAL = REPO / "assets" / "recordings" / "trimmed_lovely-persimmon-angora-a39257c803d3-20220422-051333"
N_LINES = 1056           # the decode path reads one frame per jsonl line
ROUNDS = 1 if QUICK else 5


def _plain_decode(n: int) -> int:
    """The reference: read (decode + BGR convert) the first n frames, same FFmpeg thread count."""
    cap = cv2.VideoCapture(str(REAL.with_suffix(".mp4")), cv2.CAP_FFMPEG, [cv2.CAP_PROP_N_THREADS, DECODE_THREADS])
    k = 0
    while k < n and cap.read()[0]:
        k += 1
    cap.release()
    return k


@functools.lru_cache(maxsize=1)
def _decoded():
    """The recording through the decode path, once a run (setup of the codec benchmarks, not measured)."""
    return decode_recording(REAL.with_suffix(".mp4"), REAL.with_suffix(".jsonl"), REAL.name, DecodeParams())


def _timed(fn, rounds: int = ROUNDS) -> tuple[float, float]:
    """Best (cpu seconds, wall seconds) over ``rounds`` calls."""
    best = (float("inf"), float("inf"))
    for _ in range(rounds):
        c0, w0 = time.process_time(), time.perf_counter()
        fn()
        best = min(best, (time.process_time() - c0, time.perf_counter() - w0))
    return best


@pytest.mark.parametrize("store", [False, True], ids=["decode", "decode+store"])
def test_decode_throughput(benchmark, tmp_path, store):
    """decode: jsonl -> actions, cv2 decode, cursor, resize (frames in memory); +store: HDF5 lzf write."""
    settings = DecodeParams()

    def full():
        ep = decode_recording(REAL.with_suffix(".mp4"), REAL.with_suffix(".jsonl"), REAL.name, settings)
        if store:
            write_episode(tmp_path / "ep.h5", ep, FrameStorage.from_params(settings))

    assert _plain_decode(N_LINES) == N_LINES
    plain_cpu, plain_wall = _timed(lambda: _plain_decode(N_LINES))
    full_cpu, full_wall = _timed(full)
    benchmark.pedantic(full, rounds=1, iterations=1)
    ratio = record(benchmark, figure=N_LINES / full_cpu, reference=N_LINES / plain_cpu, unit="frames/cpu-s",
                   reference_name="plain cv2 read", wall_figure=N_LINES / full_wall,
                   wall_reference=N_LINES / plain_wall, frames=N_LINES, store=store,
                   codec=settings.frame_codec if store else None)
    assert ratio > 0.3   # a regression guard; the goal (decode >= 0.8) is tracked in benchmarks/results


@pytest.mark.parametrize("codec", formats.CODECS)
def test_codec_bytes_per_frame(benchmark, tmp_path, codec):
    ep = _decoded()
    path = tmp_path / f"{codec}.h5"
    rounds = max(ROUNDS, 3)   # sub-second writes: one round is at the mercy of the page cache
    ref_cpu, _ = _timed(lambda: write_episode(tmp_path / "ref.h5", ep, FrameStorage("none")), rounds)
    cpu, _ = _timed(lambda: write_episode(path, ep, FrameStorage(codec, level=1)), rounds)
    benchmark.pedantic(lambda: write_episode(path, ep, FrameStorage(codec, level=1)), rounds=1, iterations=1)
    bytes_per_frame = path.stat().st_size / ep.n_frames
    record(benchmark, figure=ep.n_frames / cpu, reference=ep.n_frames / ref_cpu, unit="frames/cpu-s written",
           reference_name="write with codec none", bytes_per_frame=bytes_per_frame, codec=codec,
           raw_bytes_per_frame=ep.frames[0].nbytes)
    print(f"{codec}: {bytes_per_frame:,.0f} bytes/frame ({bytes_per_frame / ep.frames[0].nbytes:.1%} of raw)")


# ------------------------------------------------------------------ frame codecs: size, decode per core, pixel error

@pytest.fixture(scope="module")
def frames(tmp_path_factory) -> dict:
    """The recording's lossless 128x128 frames (decode path; the first 256 in quick mode) and
    STEVE-1's mp4v frames of them.

    STEVE-1 stores each episode's frames as ``frames.mp4``: cv2.VideoWriter, fourcc mp4v, 20 fps,
    128x128; this writes the lossless frames the same way and reads them back with cv2.
    """
    lossless = _decoded().frames
    lossless = lossless[:256] if QUICK else lossless
    path = tmp_path_factory.mktemp("mp4v") / "frames.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 20, (128, 128))
    for f in lossless:
        writer.write(np.ascontiguousarray(f[..., ::-1]))
    writer.release()
    return {"lossless": lossless, "mp4v_path": path, "mp4v": read_rgb_frames(path)}


def _errors(got: np.ndarray, want: np.ndarray) -> dict[str, float]:
    diff = np.abs(got.astype(np.int16) - want.astype(np.int16))
    mse = float(np.mean(diff.astype(np.float64) ** 2))
    return {"psnr_db": float(10 * np.log10(255 ** 2 / mse)) if mse else None, "mean_abs_error": float(diff.mean()),
            "p999_abs_error": float(np.percentile(diff, 99.9))}


def _memcpy_per_cpu_s(frames: np.ndarray) -> float:
    dst = np.empty_like(frames)
    cpu, _ = _timed(lambda: np.copyto(dst, frames), 3)
    return len(frames) / cpu


@pytest.mark.parametrize("codec", formats.CODECS)
def test_frame_codec_decode_per_core(benchmark, tmp_path, frames, codec, monkeypatch):
    """Figure: frames decoded (or read) into a warm batch buffer per CPU-second, one thread."""
    monkeypatch.setenv("BLOSC_NTHREADS", "1")   # per core
    lossless = frames["lossless"]
    path = write_episode(tmp_path / f"{codec}.h5", _episode(lossless), FrameStorage(codec))
    out = np.empty_like(lossless)
    with EpisodeReader(path) as r:
        store = r.frame_store
        store.read_into(out, 0, len(out))
        cpu, _ = _timed(lambda: store.read_into(out, 0, len(out)), max(ROUNDS, 3))
        benchmark.pedantic(lambda: store.read_into(out, 0, len(out)), rounds=1, iterations=1)
        stored = (store.offsets[-1] + store.offsets.nbytes if store.frames is None
                  else store.frames.id.get_storage_size())
    vs_lossless, vs_mp4v = _errors(out, lossless), _errors(out, frames["mp4v"])
    official = _errors(frames["mp4v"], lossless)
    record(benchmark, figure=len(out) / cpu, reference=_memcpy_per_cpu_s(lossless), unit="frames/cpu-s decoded",
           reference_name="memcpy of the same frames", codec=codec, frames=len(out),
           bytes_per_frame=stored / len(out), psnr_vs_lossless_db=vs_lossless["psnr_db"],
           mean_abs_error_vs_lossless=vs_lossless["mean_abs_error"],
           p999_abs_error_vs_lossless=vs_lossless["p999_abs_error"], psnr_vs_mp4v_db=vs_mp4v["psnr_db"],
           mp4v_bytes_per_frame=frames["mp4v_path"].stat().st_size / len(frames["mp4v"]),
           mp4v_psnr_vs_lossless_db=official["psnr_db"], mp4v_mean_abs_error_vs_lossless=official["mean_abs_error"])
    print(f"  {codec:10s}: {stored / len(out):7,.0f} B/frame, {len(out) / cpu:8,.0f} frames/cpu-s, "
          f"PSNR {vs_lossless['psnr_db'] or float('inf'):.2f} dB vs lossless (mean |err| {vs_lossless['mean_abs_error']:.2f}), "
          f"{vs_mp4v['psnr_db']:.2f} dB vs STEVE-1's mp4v (itself {official['psnr_db']:.2f} dB vs lossless, "
          f"{frames['mp4v_path'].stat().st_size / len(frames['mp4v']):,.0f} B/frame)")


def test_official_mp4v_decode_per_core(benchmark, frames):
    """STEVE-1's frames.mp4 read back with cv2 (how its loader reads them), per CPU-second."""
    n = len(frames["mp4v"])
    cpu, _ = _timed(lambda: read_rgb_frames(frames["mp4v_path"]), max(ROUNDS, 3))
    benchmark.pedantic(lambda: read_rgb_frames(frames["mp4v_path"]), rounds=1, iterations=1)
    official = _errors(frames["mp4v"], frames["lossless"])
    record(benchmark, figure=n / cpu, reference=_memcpy_per_cpu_s(frames["lossless"]), unit="frames/cpu-s decoded",
           reference_name="memcpy of the same frames", codec="mp4v (STEVE-1 frames.mp4)",
           bytes_per_frame=frames["mp4v_path"].stat().st_size / n, psnr_vs_lossless_db=official["psnr_db"],
           mean_abs_error_vs_lossless=official["mean_abs_error"], p999_abs_error_vs_lossless=official["p999_abs_error"])


def _episode(frames: np.ndarray):
    from tests.fixtures.episodes import make_episode

    ep = make_episode("real", len(frames))
    ep.frames = frames
    return ep
