"""Training throughput through the trainer's own hot path (``steve1.train.trainer.train_step``:
Accelerate, BC loss, clip, AdamW step), with and without activation checkpointing.

Each case records achieved GFLOP/s (model FLOPs of forward + backward counted once with
``torch.utils.flop_counter``; recomputation is not credited) next to a same-run fp32 matmul, and
stores frames/s and the peak memory one step adds above the resident weights, grads and AdamW
state (glibc live bytes, sampled every 0.5 ms; the meter of ``benchmarks/test_policy.py``).
Plain and checkpointed steps are interleaved in one test so load on a shared machine hits both.

The trainer frees gradients after each step (``zero_grad(set_to_none=True)``), so a step's peak
includes allocating them again: ``grad_mb`` (trainable parameters x 4 bytes) is stored too, and
``peak - grad_mb`` is the activation + transient part that checkpointing acts on.

Quick mode: tiny preset, B=2, T=16. Full mode: the 1x preset (VPT foundation 1x sizes), B=1,
T=16 and T=64 (one truncated-BPTT call; 64 is the default trunc_t).
"""

from __future__ import annotations

import time

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.conftest import QUICK, record
from benchmarks.test_policy import MEMORY_METER, _PeakMemory, matmul_gflops
from tests.fixtures.policy import build_policy_from_preset
from steve1.params import TrainParams
from steve1.train.accelerator import build_accelerator
from steve1.train.optim import make_optimizer
from steve1.train.trainer import BCModule, train_step

CASES = [("tiny", 2, 16)] if QUICK else [("1x", 1, 16), ("1x", 1, 64)]
ROUNDS = 3


def _call(b: int, t: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    first = torch.zeros(b, t, dtype=torch.bool)
    first[:, 0] = True
    return {"img": torch.randint(0, 256, (b, t, 128, 128, 3), dtype=torch.uint8, generator=g),
            "mineclip_embed": torch.randn(b, t, 512, generator=g), "first": first,
            "buttons": torch.randint(0, 8641, (b, t), generator=g), "camera": torch.randint(0, 121, (b, t), generator=g)}


@pytest.mark.parametrize("preset,b,t", CASES)
def test_train_step_with_and_without_checkpointing(benchmark, preset, b, t):
    torch.manual_seed(0)
    accelerator = build_accelerator(TrainParams(deepspeed="none"))
    policy = build_policy_from_preset(preset)
    policy.value_head.requires_grad_(False)
    module = BCModule(policy)
    model, optimizer = accelerator.prepare(module, make_optimizer(module, 1e-6, 0.039428))
    call = _call(b, t)

    def step():
        train_step(model, optimizer, accelerator, call, policy.initial_state(b), 5.0)

    with FlopCounterMode(display=False) as counter:
        model(call, policy.initial_state(b))[0].backward()
    flops = counter.get_total_flops()
    optimizer.zero_grad(set_to_none=True)
    step()  # warm-up: grads and AdamW moments become resident, as in a real run
    times, peaks = {False: [], True: []}, {False: 0.0, True: 0.0}
    for _ in range(ROUNDS):
        for enabled in (False, True):
            policy.set_gradient_checkpointing(enabled)
            with _PeakMemory() as mem:
                t0 = time.perf_counter()
                step()
                times[enabled].append(time.perf_counter() - t0)
            peaks[enabled] = max(peaks[enabled], mem.delta_mb)
    reference = matmul_gflops()
    policy.set_gradient_checkpointing(True)
    benchmark.pedantic(step, rounds=1, iterations=1, warmup_rounds=0)
    policy.set_gradient_checkpointing(False)

    best = {k: min(v) for k, v in times.items()}
    fps = {k: b * t / s for k, s in best.items()}
    time_cost = best[True] / best[False] - 1
    memory_cut = 1 - peaks[True] / peaks[False] if peaks[False] > 0 else float("nan")
    grad_mb = sum(p.numel() * p.element_size() for p in module.parameters() if p.requires_grad) / 2**20
    act_cut = 1 - (peaks[True] - grad_mb) / (peaks[False] - grad_mb) if peaks[False] > grad_mb else float("nan")
    record(benchmark, figure=flops / best[True] / 1e9, reference=reference, unit="GFLOP/s",
           reference_name="fp32 matmul", preset=preset, B=b, T=t, threads=torch.get_num_threads(),
           frames_per_s_plain=fps[False], frames_per_s_checkpointed=fps[True],
           gflops_plain=flops / best[False] / 1e9, peak_step_mb_plain=peaks[False],
           peak_step_mb_checkpointed=peaks[True], checkpointing_time_cost=time_cost,
           checkpointing_memory_cut=memory_cut, grad_mb=grad_mb, checkpointing_activation_cut=act_cut,
           memory_meter=MEMORY_METER, gflop_per_step=flops / 1e9)
    print(f"  {preset} B={b} T={t}: plain {fps[False]:.2f} frames/s, {peaks[False]:.0f} MB; checkpointed "
          f"{fps[True]:.2f} frames/s, {peaks[True]:.0f} MB -> time {time_cost:+.0%}, memory {-memory_cut:+.0%} "
          f"(grads {grad_mb:.0f} MB; activations {-act_cut:+.0%})")
