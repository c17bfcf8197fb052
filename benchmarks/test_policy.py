"""Policy throughput: forward frames/s and train-step (forward + backward) frames/s and peak memory,
with and without activation checkpointing.

Every figure is recorded as achieved GFLOP/s (model FLOPs counted once with
``torch.utils.flop_counter``; recomputation under checkpointing is not credited) next to a same-run
plain fp32 matmul's GFLOP/s, so the ratio is an MFU-like number that survives a noisy machine.
Frames/s are stored in ``extra_info``.

Memory (CPU): a background thread samples glibc's live allocated bytes (``mallinfo2``: heap in use +
mmapped chunks, all arenas; RSS where that is missing) every 0.5 ms during one train step, with
parameters and gradients already allocated by a warm-up step, so the figure is the peak *activation +
transient* memory a step adds on top of the resident weights and grads. torch's CPU allocator does
not cache, so this tracks live tensors; the sampling interval makes it a slight underestimate.

Quick mode (``STEVE1_BENCH_QUICK=1``): the tiny preset only. Full mode adds the 2x preset
(250M parameters, about 4 GB for a B=1, T=16 train step).
"""

from __future__ import annotations

import ctypes
import os
import threading
import time

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.conftest import QUICK, record
from tests.fixtures.policy import build_policy_from_preset
from steve1.models.policy import behavioural_cloning_loss

FORWARD_CASES = [("tiny", 2, 8)] if QUICK else [("tiny", 4, 16), ("2x", 1, 16), ("2x", 2, 32)]
TRAIN_CASES = [("tiny", 2, 8)] if QUICK else [("tiny", 4, 16), ("2x", 1, 16)]
_PAGE = os.sysconf("SC_PAGE_SIZE")


def matmul_gflops(n: int = 1024 if QUICK else 2048, repeats: int = 3) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n ** 3 / best / 1e9


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _inputs(b: int, t: int):
    g = torch.Generator().manual_seed(0)
    obs = {"img": torch.randint(0, 256, (b, t, 128, 128, 3), dtype=torch.uint8, generator=g),
           "mineclip_embed": torch.randn(b, t, 512, generator=g)}
    first = torch.zeros(b, t, dtype=torch.bool)
    first[:, 0] = True
    action = {"buttons": torch.randint(0, 8641, (b, t), generator=g),
              "camera": torch.randint(0, 121, (b, t), generator=g)}
    return obs, first, action


def _count_flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


_models: dict[str, torch.nn.Module] = {}


def _policy(name: str) -> torch.nn.Module:
    if name not in _models:
        _models.clear()  # keep at most one big model alive
        torch.manual_seed(0)
        _models[name] = build_policy_from_preset(name)
    return _models[name]


@pytest.mark.parametrize("preset,b,t", FORWARD_CASES)
def test_policy_forward(benchmark, preset, b, t):
    policy = _policy(preset).eval()
    obs, first, _ = _inputs(b, t)

    def forward():
        with torch.inference_mode():
            return policy(obs, first, policy.initial_state(b))

    flops = _count_flops(forward)
    reference = matmul_gflops()
    benchmark.pedantic(forward, rounds=3, iterations=1, warmup_rounds=1)
    seconds = benchmark.stats.stats.median
    record(benchmark, figure=flops / seconds / 1e9, reference=reference, unit="GFLOP/s",
           reference_name="fp32 matmul", frames_per_s=b * t / seconds, preset=preset, B=b, T=t,
           gflop_per_frame=flops / (b * t) / 1e9, threads=torch.get_num_threads())
    print(f"  {preset} forward B={b} T={t}: {b * t / seconds:.2f} frames/s")


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                    "fsmblks", "uordblks", "fordblks", "keepcost")]


try:
    _LIBC = ctypes.CDLL("libc.so.6")
    _LIBC.mallinfo2.restype = _MallInfo2
except (OSError, AttributeError):  # not glibc >= 2.33: fall back to RSS
    _LIBC = None
MEMORY_METER = "glibc mallinfo2 live bytes" if _LIBC is not None else "RSS"


def _live_bytes() -> int:
    """Bytes malloc has handed out and not got back (heap in use + mmapped chunks), all arenas.

    torch's CPU allocator does not cache, so this tracks live tensors; RSS would also count
    memory glibc keeps after a free, which hides what checkpointing saves.
    """
    if _LIBC is None:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    info = _LIBC.mallinfo2()
    return info.uordblks + info.hblkhd


class _PeakMemory:
    """Peak of :func:`_live_bytes` above its level at entry, sampled every 0.5 ms by a thread."""

    def __enter__(self):
        self.base = self.peak = _live_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _live_bytes())
            time.sleep(0.0005)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _live_bytes())
        self.delta_mb = (self.peak - self.base) / 2 ** 20


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "checkpointed"])
@pytest.mark.parametrize("preset,b,t", TRAIN_CASES)
def test_policy_train_step(benchmark, preset, b, t, checkpointing):
    policy = _policy(preset).train()
    obs, first, action = _inputs(b, t)

    def step():
        pd, vpred, _ = policy(obs, first, policy.initial_state(b))
        behavioural_cloning_loss(pd, action).backward()

    policy.set_gradient_checkpointing(False)
    flops = _count_flops(step)  # model FLOPs (forward + backward), without recomputation
    policy.set_gradient_checkpointing(checkpointing)
    try:
        step()  # warm-up: allocates the grads, which a real training loop keeps resident
        with _PeakMemory() as mem:
            step()
        reference = matmul_gflops()
        benchmark.pedantic(step, rounds=2 if preset == "2x" else 3, iterations=1, warmup_rounds=0)
    finally:
        policy.set_gradient_checkpointing(False)
        policy.zero_grad(set_to_none=True)
    seconds = benchmark.stats.stats.median
    record(benchmark, figure=flops / seconds / 1e9, reference=reference, unit="GFLOP/s",
           reference_name="fp32 matmul", frames_per_s=b * t / seconds, peak_step_mb=mem.delta_mb,
           memory_meter=MEMORY_METER, preset=preset, B=b, T=t, checkpointing=checkpointing,
           threads=torch.get_num_threads())
    print(f"  {preset} train step B={b} T={t} checkpointing={checkpointing}: {b * t / seconds:.2f} frames/s, "
          f"peak step memory {mem.delta_mb:.0f} MB above weights+grads")


@pytest.mark.parametrize("preset,b,t", TRAIN_CASES[-1:])
def test_checkpointing_cost(benchmark, preset, b, t):
    """Checkpointed vs plain train step, interleaved in the same run (best of 3 each), plus both peaks."""
    policy = _policy(preset).train()
    obs, first, action = _inputs(b, t)

    def step():
        pd, vpred, _ = policy(obs, first, policy.initial_state(b))
        behavioural_cloning_loss(pd, action).backward()

    times, peaks = {False: [], True: []}, {}
    try:
        step()  # allocate grads
        for _ in range(3):
            for enabled in (False, True):
                policy.set_gradient_checkpointing(enabled)
                with _PeakMemory() as mem:
                    times[enabled].append(_timed(step))
                peaks[enabled] = max(peaks.get(enabled, 0.0), mem.delta_mb)
        policy.set_gradient_checkpointing(True)
        benchmark.pedantic(step, rounds=1, iterations=1, warmup_rounds=0)
    finally:
        policy.set_gradient_checkpointing(False)
        policy.zero_grad(set_to_none=True)
    plain, ckpt = min(times[False]), min(times[True])
    record(benchmark, figure=b * t / ckpt, reference=b * t / plain, unit="frames/s",
           reference_name="same train step without checkpointing", preset=preset, B=b, T=t,
           extra_time=ckpt / plain - 1, peak_step_mb_plain=peaks[False], peak_step_mb_checkpointed=peaks[True],
           memory_saving=1 - peaks[True] / peaks[False], memory_meter=MEMORY_METER)
    print(f"  {preset} B={b} T={t}: checkpointing costs {100 * (ckpt / plain - 1):+.0f}% time and saves "
          f"{100 * (1 - peaks[True] / peaks[False]):.0f}% peak step memory ({peaks[False]:.0f} -> {peaks[True]:.0f} MB)")
