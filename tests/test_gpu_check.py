"""``benchmarks/gpu_check.py`` (``make gpu-check``): its dry run on the CPU writes every section with
numeric figures (so the script cannot rot between GPU sessions), a failing or overrunning section is
recorded and the run goes on, and MFU's peak comes from the device's spec table."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time

import pytest

from benchmarks import gpu_check as G


def test_dry_run_writes_every_section_with_numeric_figures(tmp_path, repo_root):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(repo_root), "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--dry-run", "--out", str(out)],
                          cwd=repo_root, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads((out / "gpu_check.json").read_text())
    assert doc["dry_run"] is True and doc["device"].startswith("cpu") and doc["started"] and doc["seconds"] > 0
    for section, figures in G.FIGURES.items():
        assert section in doc, section
        assert "error" not in doc[section], doc[section].get("error")
        for key in figures:
            value = G.lookup(doc[section], key)
            assert isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value), \
                f"{section}.{key} = {value!r}"
    # the trainer really trained: ZeRO-2 through Accelerate, optimizer steps taken, finite loss
    for config in (doc["train"]["plain"], doc["train"]["checkpointed"], doc["finetune"]):
        assert config["deepspeed"] == "zero2" and config["optimizer_steps"] > 0 and config["loss_finite"]
    assert doc["train"]["checkpointed"]["gradient_checkpointing"] and not doc["train"]["plain"]["gradient_checkpointing"]
    assert doc["finetune"]["freeze"] == ["cnn", "transformer"]
    assert doc["finetune"]["trained_params"] < doc["train"]["plain"]["trained_params"]
    summary = (out / "gpu_check.md").read_text()
    assert "DRY RUN" in summary and all(f"## {name}" in summary for name in G.SECTIONS)


def test_a_failing_section_is_recorded_and_the_next_runs(tmp_path):
    import torch

    ctx = G.Context(device=torch.device("cpu"), sizes=G.sizes(True), tmp=tmp_path)

    def broken(_ctx):
        raise RuntimeError("CUDA error: an illegal memory access")

    def too_slow(_ctx):
        time.sleep(30)
        return {"never": 1}

    failed = G.run_section("broken", broken, ctx, cap=10)
    assert failed["error"] == "RuntimeError: CUDA error: an illegal memory access" and "traceback" in failed
    timed_out = G.run_section("slow", too_slow, ctx, cap=0.2)
    assert timed_out["error"].startswith("SectionTimeout") and timed_out["section_seconds"] < 10
    assert G.run_section("fine", lambda _ctx: {"x": 1.0}, ctx, cap=10)["x"] == 1.0

    def half_done(ctx):   # one configuration measured, the next overruns: the first one's figures stay
        ctx.partial["plain"] = {"frames_per_s": 5.0}
        time.sleep(30)

    kept = G.run_section("half", half_done, ctx, cap=0.2)
    assert kept["error"].startswith("SectionTimeout") and kept["plain"] == {"frames_per_s": 5.0}


@pytest.mark.parametrize("name,tflops", [("NVIDIA H100 80GB HBM3", 989.4), ("NVIDIA H100 PCIe", 756.0),
                                         ("NVIDIA H100 NVL", 835.0), ("NVIDIA H200", 989.4),
                                         ("NVIDIA A100-SXM4-80GB", 312.0), ("NVIDIA A100 80GB PCIe", 312.0)])
def test_peak_flops_come_from_the_spec_table(name, tflops):
    assert G.spec_peak_tflops(name)[0] == tflops
    assert G.spec_peak_tflops("NVIDIA GeForce GTX 1080") is None


def test_out_of_memory_tries_the_next_batch_size_and_other_errors_stop(monkeypatch):
    import torch

    tried = []

    def fake_measure(params, timed_s, device, min_batches):
        tried.append(params)
        if params > 3:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return {"batch_size": params, "frames_per_s": 1.0}

    monkeypatch.setattr(G, "measure_trainer", fake_measure)
    result = G.train_with_backoff(lambda b: b, (12, 6, 3, 1), 1.0, torch.device("cpu"))
    assert tried == [12, 6, 3] and result["batch_size"] == 3 and result["batch_sizes_out_of_memory"] == [12, 6]
    with pytest.raises(RuntimeError, match="out of memory at every batch size"):
        G.train_with_backoff(lambda b: b, (12, 6), 1.0, torch.device("cpu"))

    def broken(params, timed_s, device, min_batches):
        raise ValueError("bad shapes")

    monkeypatch.setattr(G, "measure_trainer", broken)
    with pytest.raises(ValueError, match="bad shapes"):
        G.train_with_backoff(lambda b: b, (12, 6), 1.0, torch.device("cpu"))


def test_the_gpu_run_takes_the_paper_and_finetune_shapes_within_eight_minutes():
    full = G.sizes(dry_run=False)
    assert (full.preset, full.T, full.trunc_t, full.train_batches[0]) == ("2x", 640, 128, 12)
    assert full.ft_T == 320 and full.mineclip == "full"
    assert sum(full.caps.values()) + 60 <= 8 * 60   # start-up included


STUCK = """
import dataclasses, sys, time
from benchmarks import gpu_check as G

def stuck(ctx):   # a section its alarm cannot stop (as one blocked in an NCCL or CUDA call)
    while True:
        try:
            time.sleep(5)
        except G.SectionTimeout:
            pass

G.SECTIONS["loader"] = stuck
G.WATCHDOG_GRACE_S = 1
dry = G.sizes
G.sizes = lambda dry_run: dataclasses.replace(dry(dry_run), caps={**dry(dry_run).caps, "env": 5, "loader": 0.5})
sys.exit(G.main(["--dry-run", "--out", sys.argv[1], "--sections", "env", "loader"]))
"""


@pytest.mark.slow   # a subprocess that waits out a budget (~15 s)
def test_a_section_stuck_past_the_budget_is_recorded_by_the_watchdog(tmp_path, repo_root):
    env = {**os.environ, "PYTHONPATH": str(repo_root), "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-c", STUCK, str(tmp_path)], cwd=repo_root, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 3, proc.stdout[-2000:] + proc.stderr[-2000:]
    doc = json.loads((tmp_path / "gpu_check.json").read_text())
    assert doc["env"]["gpu_name"] == "none (CPU)"                    # the section before it was kept
    assert doc["loader"]["error"].startswith("Hung: section 'loader'")
    assert "**failed**: `Hung: section 'loader'" in (tmp_path / "gpu_check.md").read_text()
