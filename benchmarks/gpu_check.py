"""GPU readiness in one command: ``python -m benchmarks.gpu_check --out DIR [--dry-run]`` (``make gpu-check``).

Measures, on one GPU, every GPU figure the project claims, each section under its own time cap
(the whole run stays inside ~7 minutes; a section that fails or runs out of time records its
error and the run goes on):

1. ``env``: GPU name, memory, driver / CUDA / cuDNN / NCCL, torch / deepspeed / accelerate, bf16 support.
2. ``numerics``: bf16 autocast against float32. The tiny policy (forward + backward) and the tiny
   MineCLIP image and text towers against the official float32 goldens (``tests/goldens``
   or ``$STEVE1_REFERENCE``; without them, against float32 on the same device, and it says so);
   a seeded random 2x policy and a full-size MineCLIP in bf16 against float32 on the same device.
   Max abs and relative log-prob / feature differences, argmax agreement, gradient cosine and relative
   error, against the tolerances stated in :data:`TOL` (fixed before any GPU run).
3. ``train``: frames/s, MFU and peak memory of the 2x policy through the real trainer
   (:func:`steve1.train.trainer.setup_run` + :func:`~steve1.train.trainer.train_batch`: Accelerate,
   DeepSpeed ZeRO-2 from ``configs/deepspeed/zero2.json``, one process, bf16 autocast) at T 640,
   truncated BPTT 128, with and without gradient checkpointing. The batch starts at the paper
   profile's 12 and halves on out-of-memory. Batches are synthetic and already on the GPU (the
   loader is section 6), so the figure is the GPU's. FLOPs per frame are counted once with
   ``torch.utils.flop_counter.FlopCounterMode`` over one forward + backward of a fresh policy
   (model FLOPs: checkpointing's recomputation is not credited); MFU divides by the device's
   dense bf16 peak from :data:`PEAK_BF16_TFLOPS`.
4. ``finetune``: the fine-tuning guide's setting (``train.freeze: [cnn, transformer]``, T 320,
   the finetune profile's trunc_t, gradient checkpointing): peak memory against a 24 GB card, frames/s.
5. ``embed``: full-size MineCLIP through the embed stage's own code
   (:func:`steve1.data.embedding.make_embedder` + ``embed_frames``, ``compute_dtype: bfloat16``):
   frames/s against ``docs/capacity.md``'s assumed 10,000 per H100; the image tower alone on frames already
   on the GPU, with its FLOPs per frame (FlopCounterMode) and share of the device's peak.
6. ``loader``: the training loader (jpeg frames of the shipped real recording, 0 workers, one decode
   thread) in frames per CPU-second on this node, and the cores one GPU needs at section 3's rate.

Writes ``DIR/gpu_check.json`` (one key per section, plus ``device``, ``started``, ``seconds``) and
``DIR/gpu_check.md``. ``--dry-run`` runs every section on the CPU at tiny sizes (tests do, so the
script cannot rot).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

import steve1  # noqa: F401  (before torch computes: it sets MKL's reproducible mode, which embed requires)
import torch

REPO = Path(__file__).resolve().parents[1]
REFERENCE = Path(os.environ.get("STEVE1_REFERENCE", REPO / "tests" / "goldens"))
CAPACITY_ASSUMED_EMBED_FPS = 10_000.0    # docs/capacity.md: MineCLIP full size, one H100, bf16 (assumed)
WATCHDOG_GRACE_S = 30                    # past the sections' caps, the watchdog ends a run stuck in C code
MFU_GOAL = 0.45                          # issue 29: STEVE-1's 100M frames in under 4 hours on one H100
CARD_24GB = 24 * 2**30                   # a "24 GB" card (RTX 3090/4090, A10G, L4): 24 GiB
CARD_24GB_USABLE = CARD_24GB - 1.5 * 2**30   # less the CUDA context and allocator slack

# Dense (no sparsity) bf16 tensor-core peaks from the vendors' data sheets, TFLOP/s. Matched in order
# against torch.cuda.get_device_name() (lower case): more specific names first.
PEAK_BF16_TFLOPS: list[tuple[str, str, float]] = [
    ("gh200", "GH200 (H100 SXM die)", 989.4),
    ("h200", "H200 SXM", 989.4),
    ("h100 pcie", "H100 PCIe", 756.0),
    ("h100 nvl", "H100 NVL", 835.0),
    ("h100", "H100 SXM", 989.4),
    ("h800 pcie", "H800 PCIe", 756.0),
    ("h800", "H800 SXM", 989.4),
    ("a100", "A100 (SXM and PCIe)", 312.0),
    ("a800", "A800", 312.0),
    ("l40s", "L40S", 362.0),
    ("a10g", "A10G", 70.0),
    ("l4", "L4", 121.0),
]

# Stated tolerances of bf16 autocast against float32, fixed before any GPU run: what a sound bf16 path
# should meet (8 mantissa bits, ~0.4% per rounding, accumulated over the CNN, the blocks and the heads).
# Log-probs are the heads' log_softmax outputs (temperature-scaled logits reach +-12 on the tiny golden,
# so an absolute bound alone would punish a large-logit model); argmax agreement counts the rows the
# reference decides (see _logp_compare); gradients compare the BC loss's full gradient vectors.
TOL = {"policy_logp_max_abs": 1.0, "policy_logp_rel_err": 0.05, "policy_argmax_agreement": 0.95,
       "policy_grad_cosine": 0.99, "mineclip_cosine_min": 0.99, "mineclip_argmax_agreement": 0.9}


class SectionTimeout(BaseException):
    """A section ran past its cap (BaseException: no ``except Exception`` inside a section swallows it)."""


@dataclass(frozen=True)
class Sizes:
    """Problem sizes of a run: the GPU run's, or the dry run's tiny ones."""

    preset: str                 # the policy trained and checked at scale
    mineclip: str               # the MineCLIP measured at scale
    train_batches: tuple[int, ...]   # batch sizes tried in turn (next on out-of-memory)
    T: int
    trunc_t: int
    grad_accum: int
    ft_T: int
    ft_trunc_t: int
    ft_batches: tuple[int, ...]
    timed_s: float              # seconds of timed training steps per configuration (at least min_batches)
    min_batches: int
    numerics_bt: tuple[int, int]     # (B, T) of the at-scale policy numerics check
    mineclip_clips: int         # 16-frame clips of the at-scale MineCLIP numerics check
    golden_rows: Optional[int]  # batch rows of the goldens checked (None: all)
    embed_frames: int
    embed_batch: int
    loader_bt: tuple[int, int]
    loader_epochs: int
    caps: dict[str, float]      # seconds per section


def _profile(name: str) -> dict[str, Any]:
    import yaml

    return yaml.safe_load((REPO / "configs" / "profiles" / f"{name}.yaml").read_text())


def sizes(dry_run: bool) -> Sizes:
    paper, finetune = _profile("paper"), _profile("finetune")
    if dry_run:
        return Sizes(preset="tiny", mineclip="tiny", train_batches=(1,), T=8, trunc_t=4, grad_accum=1, ft_T=8,
                     ft_trunc_t=4, ft_batches=(2,), timed_s=0.1, min_batches=1, numerics_bt=(1, 4), mineclip_clips=1,
                     golden_rows=1,
                     embed_frames=32, embed_batch=16, loader_bt=(1, 32), loader_epochs=3,
                     # generous: the dry run checks that the code runs, and a shared CI machine is slow at times
                     caps={name: 180 for name in ("env", "numerics", "train", "finetune", "embed", "loader")})
    b = int(paper["train"]["batch_size"])
    halvings = tuple(dict.fromkeys(max(1, b >> i) for i in range(5)))      # 12, 6, 3, 1
    return Sizes(preset="2x", mineclip="full", train_batches=halvings, T=int(paper["sample"]["T"]), trunc_t=128,
                 grad_accum=int(paper["train"]["grad_accum"]), ft_T=int(finetune["sample"]["T"]),
                 ft_trunc_t=int(finetune["train"]["trunc_t"]), ft_batches=halvings, timed_s=12.0, min_batches=2,
                 numerics_bt=(2, 64), mineclip_clips=4, golden_rows=None,
                 embed_frames=4096, embed_batch=int(paper["embed"]["batch_size"]), loader_bt=(12, 640),
                 loader_epochs=2,
                 caps={"env": 20, "numerics": 50, "train": 170, "finetune": 80, "embed": 50, "loader": 50})


# ----------------------------------------------------------------------------------------- helpers

def _device() -> torch.device:
    return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak(device: torch.device) -> dict[str, float]:
    """Peak memory since :func:`_reset_peak`: CUDA allocated and reserved (GiB); on the CPU the process's
    maximum resident size (ru_maxrss, the process's whole life), as the trainer's own peak_memory_mb does."""
    if device.type == "cuda":
        return {"peak_allocated_gib": torch.cuda.max_memory_allocated(device) / 2**30,
                "peak_reserved_gib": torch.cuda.max_memory_reserved(device) / 2**30}
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30
    return {"peak_allocated_gib": rss, "peak_reserved_gib": rss}


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def spec_peak_tflops(gpu_name: str) -> Optional[tuple[float, str]]:
    """(dense bf16 TFLOP/s, label) of :data:`PEAK_BF16_TFLOPS` for a ``torch.cuda.get_device_name``;
    None off the table."""
    name = gpu_name.lower()
    for key, label, tflops in PEAK_BF16_TFLOPS:
        if key in name:
            return tflops, label
    return None


def peak_tflops(device: torch.device) -> tuple[float, str]:
    """The device's dense bf16 peak (TFLOP/s) and where it comes from. Off the table (the CPU of a dry run,
    an unlisted GPU) it is a same-run matmul's achieved rate, and the source says so."""
    if device.type == "cuda":
        spec = spec_peak_tflops(torch.cuda.get_device_name(device))
        if spec is not None:
            return spec[0], f"spec table: {spec[1]} dense bf16"
    n = 1024 if device.type == "cpu" else 8192
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    _sync(device)
    best = math.inf
    for _ in range(3):
        t0 = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    kind = str(dtype).removeprefix("torch.")
    return 2 * n**3 / best / 1e12, f"measured {kind} {n}x{n} matmul (no spec for this device)"


def _reset_accelerate() -> None:
    """Forget Accelerate's process-wide state so the next trainer set-up builds its own (the process group
    DeepSpeed made stays: a world of one)."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


# ----------------------------------------------------------------------------------------- 1 env

def section_env(ctx: "Context") -> dict[str, Any]:
    import accelerate

    device = ctx.device
    out: dict[str, Any] = {"torch": torch.__version__, "accelerate": accelerate.__version__,
                           "python": platform.python_version(), "cpu_cores": len(os.sched_getaffinity(0)),
                           "cuda_available": torch.cuda.is_available()}
    try:
        import deepspeed

        out["deepspeed"] = deepspeed.__version__
    except Exception as exc:  # noqa: BLE001 - recorded
        out["deepspeed"] = f"not importable: {exc}"
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        out.update({"gpu_name": torch.cuda.get_device_name(device), "gpu_count": torch.cuda.device_count(),
                    "gpu_memory_gib": props.total_memory / 2**30, "compute_capability": f"{props.major}.{props.minor}",
                    "multiprocessors": props.multi_processor_count, "cuda": torch.version.cuda,
                    "cudnn": torch.backends.cudnn.version(), "bf16_supported": bool(torch.cuda.is_bf16_supported())})
        try:
            nccl = torch.cuda.nccl.version()
            out["nccl"] = ".".join(str(v) for v in nccl) if isinstance(nccl, tuple) else str(nccl)
        except Exception as exc:  # noqa: BLE001
            out["nccl"] = f"unavailable: {exc}"
        out["driver"] = _nvidia_smi("driver_version")
    else:
        out.update({"gpu_name": "none (CPU)", "gpu_count": 0, "gpu_memory_gib": 0.0, "cuda": torch.version.cuda,
                    "nccl": None, "driver": None, "bf16_supported": True})   # CPU autocast has bf16
        out["cpu_model"] = _cpu_model()
    out["peak_bf16_tflops"], out["peak_source"] = peak_tflops(device)
    return out


def _nvidia_smi(field: str) -> Optional[str]:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        proc = subprocess.run([exe, f"--query-gpu={field}", "--format=csv,noheader"], capture_output=True, text=True,
                              timeout=10)
        return proc.stdout.strip().splitlines()[0] if proc.returncode == 0 and proc.stdout.strip() else None
    except (OSError, subprocess.TimeoutExpired):
        return None


def _commit() -> Optional[str]:
    """This tree's git commit (``+dirty`` with uncommitted changes); None outside a git checkout."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.TimeoutExpired):
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# ----------------------------------------------------------------------------------------- 2 numerics

def _autocast(device: torch.device, enabled: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def _logp_compare(pd: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> dict[str, float]:
    """Max abs log-prob difference and argmax agreement per head (the worse head). A random policy's
    log-probs are nearly uniform, so its argmax flips on rounding alone: ``argmax_agreement_decided``
    counts only the rows whose reference top-1 leads its top-2 by more than the log-prob tolerance
    (vacuously 1 without such rows; ``decided_rows`` says how many there were)."""
    diffs, rels, agree, decided, n_decided = [], [], [], [], 0
    for key in ("camera", "buttons"):
        a, b = pd[key].float().cpu(), ref[key].float().cpu()
        diffs.append(float((a - b).abs().max()))
        rels.append(float((a - b).norm() / b.norm().clamp(min=1e-30)))
        same = a.argmax(-1) == b.argmax(-1)
        agree.append(float(same.float().mean()))
        top2 = b.topk(2, dim=-1).values
        clear = (top2[..., 0] - top2[..., 1]) > TOL["policy_logp_max_abs"]
        n_decided += int(clear.sum())
        decided.append(float(same[clear].float().mean()) if bool(clear.any()) else 1.0)
    return {"logp_max_abs_diff": max(diffs), "logp_rel_err": max(rels), "argmax_agreement": min(agree),
            "argmax_agreement_decided": min(decided), "decided_rows": n_decided}


def _policy_pass(policy, call: dict[str, torch.Tensor], device: torch.device, bf16: bool):
    """Forward + backward of the BC loss through the trainer's BCModule on ``call``: (the heads' log-probs,
    read by hooks during that forward; the flat gradient)."""
    from steve1.train.trainer import BCModule

    module = BCModule(policy, autocast=bf16)
    policy.zero_grad(set_to_none=True)
    pd: dict[str, torch.Tensor] = {}
    hooks = [head.register_forward_hook(lambda m, i, o, k=k: pd.__setitem__(k, o.detach().float()))
             for k, head in policy.pi_head.items()]
    try:
        loss, _ = module(call, policy.initial_state(call["img"].shape[0], device))
    finally:
        for h in hooks:
            h.remove()
    loss.backward()
    grad = torch.cat([p.grad.float().flatten() for p in module.parameters() if p.grad is not None]).cpu()
    policy.zero_grad(set_to_none=True)
    return pd, grad


def _grad_compare(g: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    rel = float((g - ref).norm() / ref.norm().clamp(min=1e-30))
    cos = float(torch.nn.functional.cosine_similarity(g, ref, dim=0))
    return {"grad_rel_err": rel, "grad_cosine": cos}


def _policy_check(policy, call, device, golden: Optional[dict[str, torch.Tensor]]) -> dict[str, Any]:
    policy.to(device).train()
    call = {k: v.to(device) for k, v in call.items()}
    pd32, g32 = _policy_pass(policy, call, device, bf16=False)
    pd16, g16 = _policy_pass(policy, call, device, bf16=True)
    ref = golden if golden is not None else pd32
    out = {"reference": "official fp32 golden" if golden is not None else "fp32 on this device",
           **_logp_compare(pd16, ref), **_grad_compare(g16, g32)}
    if golden is not None:
        out["fp32_vs_golden_logp_max_abs_diff"] = _logp_compare(pd32, golden)["logp_max_abs_diff"]
    out["ok"] = bool(out["logp_max_abs_diff"] <= TOL["policy_logp_max_abs"]
                     and out["logp_rel_err"] <= TOL["policy_logp_rel_err"]
                     and out["argmax_agreement_decided"] >= TOL["policy_argmax_agreement"]
                     and out["grad_cosine"] >= TOL["policy_grad_cosine"])
    return out


def _mineclip_check(model, video: torch.Tensor, tokens: torch.Tensor, device: torch.device,
                    golden: Optional[dict[str, torch.Tensor]]) -> dict[str, Any]:
    """Image tower (per-frame features), text tower, and the video->text argmax of their similarity."""
    cos = torch.nn.functional.cosine_similarity
    model.to(device).eval()
    video, tokens = video.to(device), tokens.to(device)
    out: dict[str, Any] = {}
    with torch.no_grad():
        runs = {}
        for bf16 in (False, True):
            with _autocast(device, bf16):
                img = model.encode_image_frames(video).float()                # [b,16,E]
                txt = model.encode_text(tokens).float()                       # [n,E]
                vid = model.pool_windows(img).float()                         # [b,E]
            runs[bf16] = (img.cpu(), txt.cpu(), vid.cpu())
    ref_img, ref_txt, ref_vid = runs[False]
    if golden is not None:
        ref_img, ref_txt, ref_vid = golden["image_features"], golden["encode_text"], golden["encode_video"]
        out["fp32_vs_golden_image_max_abs_diff"] = float((runs[False][0] - ref_img).abs().max())
    img, txt, vid = runs[True]
    out.update({"reference": "official fp32 golden" if golden is not None else "fp32 on this device",
                "image_max_abs_diff": float((img - ref_img).abs().max()),
                "image_cosine_min": float(cos(img.flatten(0, -2), ref_img.flatten(0, -2), dim=-1).min()),
                "text_max_abs_diff": float((txt - ref_txt).abs().max()),
                "text_cosine_min": float(cos(txt, ref_txt, dim=-1).min())})
    sim = cos(vid[:, None], txt[None], dim=-1)
    ref_sim = cos(ref_vid[:, None], ref_txt[None], dim=-1)
    out["video_text_argmax_agreement"] = float((sim.argmax(-1) == ref_sim.argmax(-1)).float().mean())
    out["ok"] = bool(min(out["image_cosine_min"], out["text_cosine_min"]) >= TOL["mineclip_cosine_min"]
                     and out["video_text_argmax_agreement"] >= TOL["mineclip_argmax_agreement"])
    return out


def _random_call(B: int, T: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    first = torch.zeros(B, T, dtype=torch.bool)
    first[:, 0] = True
    return {"img": torch.randint(0, 256, (B, T, 128, 128, 3), dtype=torch.uint8, generator=g),
            "mineclip_embed": torch.randn(B, T, 512, generator=g), "first": first,
            "buttons": torch.randint(0, 8641, (B, T), generator=g),
            "camera": torch.randint(0, 121, (B, T), generator=g)}


@contextlib.contextmanager
def _no_tf32():
    """float32 references in true float32: cuDNN convolutions default to TF32 on Ampere and later."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def section_numerics(ctx: "Context") -> dict[str, Any]:
    with _no_tf32():
        return _numerics(ctx)


def _numerics(ctx: "Context") -> dict[str, Any]:
    from steve1.models.mineclip import build_mineclip
    from steve1.models.mineclip_files import canonical_key
    from steve1.models.vpt import build_policy
    from tests.fixtures.policy import build_policy_from_preset

    device, s = ctx.device, ctx.sizes
    out = ctx.partial
    out.update({"tolerances": dict(TOL), "golden_dir": str(REFERENCE) if REFERENCE.is_dir() else None})
    # -- the tiny policy against the official goldens (reference/vpt: seq.chunk0, T 8 from the initial state)
    vpt = REFERENCE / "vpt"
    if (vpt / "tiny_io.pt").is_file():
        kw = json.loads((vpt / "tiny_policy_kwargs.json").read_text())
        policy = build_policy(kw["policy_kwargs"], kw["pi_head_kwargs"])
        policy.load_state_dict(torch.load(vpt / "tiny_state_dict.pt", weights_only=True), strict=True)
        io = torch.load(vpt / "tiny_io.pt", weights_only=True)
        rows, sl = slice(0, s.golden_rows), slice(0, 8)
        call = {"img": io["inputs.img"][rows, sl], "mineclip_embed": io["inputs.mineclip_embed"][rows, sl],
                "first": io["inputs.first"][rows, sl], "buttons": io["inputs.action.buttons"][rows, sl],
                "camera": io["inputs.action.camera"][rows, sl]}
        golden = {k: io[f"seq.chunk0.pi_logits.{k}"][rows] for k in ("camera", "buttons")}
    else:
        torch.manual_seed(0)
        policy, call, golden = build_policy_from_preset("tiny"), _random_call(2, 8), None
    out["policy_tiny"] = _policy_check(policy, call, device, golden)
    del policy
    # -- the at-scale policy (2x; the dry run's tiny), seeded random weights, bf16 vs fp32 here
    torch.manual_seed(0)
    B, T = s.numerics_bt
    out["policy_2x"] = {"preset": s.preset, "B": B, "T": T,
                                 **_policy_check(build_policy_from_preset(s.preset), _random_call(B, T), device, None)}
    _free(device)
    # -- MineCLIP towers: the tiny model against the goldens, then the at-scale one bf16 vs fp32 here
    mc = REFERENCE / "mineclip"
    if (mc / "tiny_io.pt").is_file():
        model = build_mineclip(json.loads((mc / "tiny_config.json").read_text()), seed=None)
        official = torch.load(mc / "tiny_state_dict.pt", weights_only=True)
        model.load_state_dict({k: v for k, v in official.items() if canonical_key(k) == k}, strict=True)
        io = torch.load(mc / "tiny_io.pt", weights_only=True)
        rows = slice(0, s.golden_rows)
        golden = {k: io[k][rows] for k in ("image_features", "encode_video")} | {"encode_text": io["encode_text"]}
        out["mineclip_tiny"] = _mineclip_check(model, io["video_uint8"][rows], io["text_tokens"], device, golden)
    else:
        model = build_mineclip("tiny", seed=0)
        out["mineclip_tiny"] = _mineclip_check(model, *_mineclip_inputs(model, 2), device, None)
    big = build_mineclip(s.mineclip, seed=0)
    video, tokens = _mineclip_inputs(big, s.mineclip_clips)
    out["mineclip_full"] = {"preset": s.mineclip, **_mineclip_check(big, video, tokens, device, None)}
    del big, model
    _free(device)
    out["all_ok"] = all(v["ok"] for v in out.values() if isinstance(v, dict) and "ok" in v)
    return out


def _mineclip_inputs(model, clips: int) -> tuple[torch.Tensor, torch.Tensor]:
    h, w = model.config.resolution
    g = torch.Generator().manual_seed(0)
    video = torch.randint(0, 256, (clips, 16, 3, h, w), dtype=torch.uint8, generator=g)
    tokens = model.tokenize(["chop a tree", "dig as far as possible", "look at the sky", "collect seeds"])
    return video, tokens


# ----------------------------------------------------------------------------------------- 3, 4 training

def train_params(root: Path, *, preset: str, batch_size: int, T: int, trunc_t: int, grad_accum: int,
                 gradient_checkpointing: bool, freeze: list[str] | None = None):
    """A Params of the real schema for a run under ``root`` (no DVC workspace: every path is in ``root``)."""
    from steve1.params import Params

    return Params.model_validate({
        "paths": {k: str(root / k) for k in ("episodes", "embeds", "samplings", "models")},
        "sample": {"name": "gpu_check", "T": T},
        "train": {"run": "gpu_check", "preset": preset, "deepspeed": "zero2", "mixed_precision": "auto",
                  "batch_size": batch_size, "grad_accum": grad_accum, "trunc_t": trunc_t, "n_frames": 10**12,
                  "warmup_frames": 0, "gradient_checkpointing": gradient_checkpointing, "freeze": freeze or [],
                  "num_workers": 0}})


def _sampling(T: int, batch_size: int) -> "Sampling":
    """A sampling of ``batch_size`` train chunks; their files are never opened (batches are synthetic)."""
    from steve1.data import formats
    from steve1.data.sampling import Sampling, make_sampling

    lengths = {f"ep-{i}": formats.NONE_EMBED_OFFSET + T for i in range(batch_size)}
    return Sampling.from_body(make_sampling(lengths, train_frames=10**9, val_frames=0, seed=0, T=T, min_btwn_goals=15))


def _synthetic_batch(B: int, T: int, device: torch.device) -> dict[str, torch.Tensor]:
    """A loader batch (the loader's keys and dtypes); all but ``firsts`` already on the device, as after the
    loader's pinned copy, so the timing is the GPU's. ``firsts`` stays on the CPU as the loader gives it."""
    call = _random_call(B, T)
    first = torch.zeros(B, T, dtype=torch.bool)
    first[:, 0] = True
    return {"frames": call["img"].to(device), "goal_embeds": call["mineclip_embed"].to(device), "firsts": first,
            "buttons": call["buttons"].to(device), "camera": call["camera"].to(device)}


def flops_per_frame(tp, trunc_t: int, device: torch.device) -> float:
    """Model FLOPs of one frame's forward + backward (the BC loss of the trainer's BCModule), counted by
    ``torch.utils.flop_counter.FlopCounterMode`` over one [1, trunc_t] call of a fresh policy of ``tp``'s
    architecture and frozen groups, without checkpointing (recomputation is not credited)."""
    from torch.utils.flop_counter import FlopCounterMode

    from steve1.models.build import build_policy_for_params
    from steve1.train.freeze import apply_freeze
    from steve1.train.trainer import BCModule

    policy = build_policy_for_params(tp.model_copy(update={"gradient_checkpointing": False})).to(device)
    policy.value_head.requires_grad_(False)
    if tp.freeze:
        apply_freeze(policy, tp.freeze)
    module = BCModule(policy, autocast=False)
    call = {k: v.to(device) for k, v in _random_call(1, trunc_t).items()}
    with FlopCounterMode(display=False) as counter:
        loss, _ = module(call, policy.initial_state(1, device))
        loss.backward()
    flops = counter.get_total_flops() / trunc_t
    del policy, module, call, loss
    _free(device)
    return float(flops)


def measure_trainer(params, timed_s: float, device: torch.device, min_batches: int = 2) -> dict[str, Any]:
    """Frames/s and peak memory of ``params``' run through the trainer's own set-up and batch loop."""
    from steve1.train.accelerator import mixed_precision
    from steve1.train.run_state import RunState
    from steve1.train.trainer import LogWindow, setup_run, train_batch

    tp, T = params.train, params.train_T
    _reset_accelerate()
    _reset_peak(device)
    at_start = torch.cuda.memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0
    t_setup = time.perf_counter()
    run = setup_run(params, _sampling(T, tp.batch_size))
    try:
        setup_s = time.perf_counter() - t_setup
        batch = _synthetic_batch(tp.batch_size, T, run.device)
        rs, window = RunState(fingerprint="gpu_check"), LogWindow.open(run.device, 0)
        memory = run.policy.initial_state(tp.batch_size, run.device)
        run.model.train()
        t0 = time.perf_counter()
        memory = train_batch(run, rs, batch, memory, window)       # warm-up: optimizer state, kernels, autotune
        _sync(run.device)
        warmup_s = time.perf_counter() - t0
        n, t0 = 0, time.perf_counter()
        while n < min_batches or time.perf_counter() - t0 < timed_s:
            memory = train_batch(run, rs, batch, memory, window)
            n += 1
        _sync(run.device)
        seconds = time.perf_counter() - t0
        loss = float((window.loss_sum / max(window.n_calls, 1)).item())
        frames = n * tp.batch_size * T
        return {"batch_size": tp.batch_size, "T": T, "trunc_t": tp.trunc_t, "grad_accum": tp.grad_accum,
                "gradient_checkpointing": tp.gradient_checkpointing, "freeze": list(tp.freeze),
                "mixed_precision": mixed_precision(tp),   # the trainer's: bf16 autocast on GPU, fp32 ("no") on CPU
                "deepspeed": tp.deepspeed, "batches_timed": n, "frames_timed": frames, "seconds": seconds,
                "frames_per_s": frames / seconds, "setup_s": setup_s, "warmup_batch_s": warmup_s,
                "optimizer_steps": rs.step, "mean_loss": loss, "loss_finite": math.isfinite(loss),
                "trained_params": sum(p.numel() for p in run.policy.parameters() if p.requires_grad),
                "allocated_at_start_gib": at_start,   # left over from an earlier configuration (should be ~0)
                **_peak(run.device)}
    finally:
        with contextlib.suppress(Exception):
            run.accelerator.free_memory()
        del run
        _free(device)


def train_with_backoff(make_params: Callable[[int], Any], batches: tuple[int, ...], timed_s: float,
                       device: torch.device, min_batches: int = 2) -> dict[str, Any]:
    """:func:`measure_trainer` at the first batch size of ``batches`` that fits (out-of-memory tries the next)."""
    tried = []
    for b in batches:
        try:
            result = measure_trainer(make_params(b), timed_s, device, min_batches)
        except Exception as exc:  # noqa: BLE001 - out of memory: try a smaller batch; anything else is the error
            if not _is_oom(exc):
                raise
            tried.append(b)
            result = None
        if result is None:
            _free(device)   # here the exception and its traceback (the failed attempt's tensors) are gone
            continue
        return {**result, "batch_sizes_out_of_memory": tried}
    raise RuntimeError(f"out of memory at every batch size tried {list(batches)}")


def section_train(ctx: "Context") -> dict[str, Any]:
    s, device = ctx.sizes, ctx.device
    peak, source = ctx.peak()
    root = ctx.tmp / "train"

    def make(gc_on: bool) -> Callable[[int], Any]:
        return lambda b: train_params(root, preset=s.preset, batch_size=b, T=s.T, trunc_t=s.trunc_t,
                                      grad_accum=s.grad_accum, gradient_checkpointing=gc_on)

    fpf = flops_per_frame(make(False)(1).train, s.trunc_t, device)
    out = ctx.partial
    out.update({"preset": s.preset, "flops_per_frame": fpf,
                "flops_method": "torch.utils.flop_counter.FlopCounterMode, one forward + backward of a "
                                f"[1, {s.trunc_t}] call, no recomputation credited",
                "peak_tflops": peak, "peak_source": source})
    for name, gc_on in (("plain", False), ("checkpointed", True)):
        try:
            r = train_with_backoff(make(gc_on), s.train_batches, s.timed_s, device, s.min_batches)
        except SectionTimeout:
            raise
        except Exception as exc:  # noqa: BLE001 - one configuration failing does not lose the other
            out[name] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(limit=8)}
            continue
        r["mfu"] = fpf * r["frames_per_s"] / (peak * 1e12)
        r["hours_per_100M_frames"] = 1e8 / r["frames_per_s"] / 3600
        out[name] = r
        ctx.train_fps = max(ctx.train_fps or 0.0, r["frames_per_s"])   # the loader section's yardstick
    fps = [out[k]["frames_per_s"] for k in ("plain", "checkpointed") if "frames_per_s" in out.get(k, {})]
    out["mfu_goal"] = MFU_GOAL
    if fps:
        out["best_frames_per_s"] = max(fps)
        out["best_mfu"] = fpf * max(fps) / (peak * 1e12)
        out["best_hours_per_100M_frames"] = 1e8 / max(fps) / 3600
    return out


def section_finetune(ctx: "Context") -> dict[str, Any]:
    s, device = ctx.sizes, ctx.device
    root = ctx.tmp / "finetune"
    freeze = ["cnn", "transformer"]

    def make(b: int):
        return train_params(root, preset=s.preset, batch_size=b, T=s.ft_T, trunc_t=s.ft_trunc_t, grad_accum=1,
                            gradient_checkpointing=True, freeze=freeze)

    r = train_with_backoff(make, s.ft_batches, s.timed_s / 2, device, s.min_batches)
    reserved = r["peak_reserved_gib"] * 2**30
    r.update({"card_gib": CARD_24GB / 2**30, "usable_gib": CARD_24GB_USABLE / 2**30,
              "fits_24gb": bool(reserved <= CARD_24GB_USABLE),
              "peak_share_of_24gb": reserved / CARD_24GB, "max_batch_in_24gb": None})
    ctx.finetune_fps = r["frames_per_s"]
    ctx.partial.update(r)
    # a second, small batch (one timed batch) gives peak memory as a line in B: the largest batch a 24 GB card holds
    b, small = r["batch_size"], max(1, r["batch_size"] // 6)
    if small != b:
        probe = measure_trainer(make(small), 0.0, device, 1)
        slope = (r["peak_reserved_gib"] - probe["peak_reserved_gib"]) / (b - small)
        base = probe["peak_reserved_gib"] - slope * small
        r.update({"probe_batch_size": small, "probe_peak_reserved_gib": probe["peak_reserved_gib"],
                  "probe_frames_per_s": probe["frames_per_s"], "gib_per_batch_row": slope})
        if device.type == "cuda" and slope > 0:   # the CPU's peak is the process's whole-life RSS: no line there
            r["max_batch_in_24gb"] = max(0, math.floor((CARD_24GB_USABLE / 2**30 - base) / slope))
    return r


# ----------------------------------------------------------------------------------------- 5 embed

def section_embed(ctx: "Context") -> dict[str, Any]:
    from steve1.data.embedding import embed_frames, make_embedder

    s, device = ctx.sizes, ctx.device
    embedder = make_embedder(None, preset=s.mineclip, seed=0, batch_size=s.embed_batch, device="auto",
                             compute_dtype="bfloat16")
    w, h = embedder.frame_size
    frames = np.random.default_rng(0).integers(0, 256, (s.embed_frames, h, w, 3), dtype=np.uint8)
    embed_frames(embedder, frames[: 2 * s.embed_batch])          # warm-up (kernels, autotune)
    _sync(device)
    _reset_peak(device)
    n, t0 = 0, time.perf_counter()
    while n < 1 or time.perf_counter() - t0 < s.timed_s:
        embeds, valid = embed_frames(embedder, frames)
        n += 1
    _sync(device)
    whole = n * len(frames) / (time.perf_counter() - t0)
    # the image tower alone on frames already on the device: the GPU's ceiling for this model
    x = torch.from_numpy(frames[: s.embed_batch]).to(device).permute(0, 3, 1, 2)
    n, t0 = 0, time.perf_counter()
    with torch.no_grad():
        while n < s.min_batches or time.perf_counter() - t0 < s.timed_s / 2:
            with embedder.autocast():
                embedder.model.encode_image_frames(x)
            n += 1
    _sync(device)
    tower = n * s.embed_batch / (time.perf_counter() - t0)
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        embedder.model.encode_image_frames(x[:1])
    tower_flops = float(counter.get_total_flops())
    peak, source = ctx.peak()
    dtype = str(embedder.autocast_dtype).removeprefix("torch.") if embedder.autocast_dtype else "float32"
    out = {"preset": s.mineclip, "compute_dtype": dtype,   # the embedder's own: bf16 autocast on GPU, fp32 on CPU
           "batch_size": s.embed_batch, "frames": int(len(frames)), "frames_per_s": whole,
           "image_tower_frames_per_s": tower, "image_tower_flops_per_frame": tower_flops,
           "image_tower_share_of_peak": tower_flops * tower / (peak * 1e12), "peak_source": source,
           "assumed_frames_per_s": CAPACITY_ASSUMED_EMBED_FPS,
           "vs_assumed": whole / CAPACITY_ASSUMED_EMBED_FPS, "finite": bool(np.isfinite(embeds[valid]).all()),
           **_peak(device)}
    del embedder
    _free(device)
    return out


# ----------------------------------------------------------------------------------------- 6 loader

def section_loader(ctx: "Context") -> dict[str, Any]:
    from benchmarks.test_dataloader import REAL, _epoch
    from steve1.data import formats
    from steve1.data.dataset import LoaderConfig, make_dataloader
    from steve1.data.decode import decode_recording
    from steve1.data.episodes import FrameStorage, episode_path, write_embeds, write_episode
    from steve1.data.sampling import Sampling, make_sampling
    from steve1.params import DecodeParams
    from tests.fixtures.episodes import make_embeds, make_episode

    s = ctx.sizes
    B, T = s.loader_bt
    root = ctx.tmp / "loader"
    real = decode_recording(REAL.with_suffix(".mp4"), REAL.with_suffix(".jsonl"), REAL.name, DecodeParams()).frames
    loop = np.concatenate([real, real[::-1]])
    n = formats.NONE_EMBED_OFFSET + T
    lengths = {}
    for i in range(B):                                   # one chunk per episode, listed twice: two batches an epoch
        ep = make_episode(f"ep-{i}", n, tag=i + 1, seed=i + 1)
        ep.frames = loop[(np.arange(n) + 97 * i) % len(loop)]
        write_episode(episode_path(root / "episodes", ep.episode_id), ep, FrameStorage("jpeg"))
        e, v = make_embeds(n, i + 1)
        write_embeds(episode_path(root / "embeds", ep.episode_id), ep.episode_id, e, v, weights="gpu_check")
        lengths[ep.episode_id] = n
    sampling = Sampling.from_body(make_sampling(lengths, train_frames=10**9, val_frames=0, seed=0, T=T, min_btwn_goals=15))
    sampling.train_chunks = sampling.train_chunks * 2
    config = LoaderConfig(batch_size=B, seed=0, T=T, p_uncond=0.1, pin_memory=False, num_workers=0, decode_threads=1)
    loader = make_dataloader(sampling, "train", config, sampling.set_dirs(root / "episodes", root / "embeds"))
    _epoch(loader)                                       # opens files, allocates buffers
    c0, t0 = time.process_time(), time.perf_counter()   # 0 workers: this process (all threads) is the loader
    for _ in range(s.loader_epochs):
        _epoch(loader)
    cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    frames = s.loader_epochs * len(loader) * B * T
    per_core = frames / max(cpu, 1e-9)
    out = {"codec": "jpeg", "B": B, "T": T, "workers": 0, "decode_threads": 1, "frames": frames,
           "frames_per_s": frames / wall, "frames_per_cpu_s": per_core, "node_cores": len(os.sched_getaffinity(0)),
           "gpu_train_frames_per_s": ctx.train_fps, "cores_per_gpu": None,
           "finetune_frames_per_s": ctx.finetune_fps, "cores_per_gpu_finetune": None}
    if ctx.train_fps:
        out["cores_per_gpu"] = ctx.train_fps / per_core
    if ctx.finetune_fps:
        out["cores_per_gpu_finetune"] = ctx.finetune_fps / per_core
    return out


# ----------------------------------------------------------------------------------------- the run

@dataclass
class Context:
    device: torch.device
    sizes: Sizes
    tmp: Path
    train_fps: Optional[float] = None
    finetune_fps: Optional[float] = None
    partial: dict[str, Any] = field(default_factory=dict)   # what the running section has so far (kept on a timeout)
    _peak: Optional[tuple[float, str]] = None

    def peak(self) -> tuple[float, str]:
        if self._peak is None:
            self._peak = peak_tflops(self.device)
        return self._peak


SECTIONS: dict[str, Callable[[Context], dict[str, Any]]] = {
    "env": section_env, "numerics": section_numerics, "train": section_train, "finetune": section_finetune,
    "embed": section_embed, "loader": section_loader}

# The figures each section must give as finite numbers (the dry-run test checks them; the summary shows them).
FIGURES: dict[str, list[str]] = {
    "env": ["gpu_memory_gib", "cpu_cores", "peak_bf16_tflops"],
    "numerics": [f"{m}.{k}" for m in ("policy_tiny", "policy_2x")
                 for k in ("logp_max_abs_diff", "logp_rel_err", "argmax_agreement_decided", "grad_cosine")]
                + [f"{m}.{k}" for m in ("mineclip_tiny", "mineclip_full")
                   for k in ("image_cosine_min", "text_cosine_min", "video_text_argmax_agreement")],
    "train": ["flops_per_frame", "plain.frames_per_s", "plain.mfu", "plain.peak_allocated_gib",
              "checkpointed.frames_per_s", "checkpointed.mfu", "checkpointed.peak_allocated_gib"],
    "finetune": ["frames_per_s", "peak_allocated_gib", "peak_reserved_gib", "peak_share_of_24gb"],
    "embed": ["frames_per_s", "image_tower_frames_per_s", "image_tower_flops_per_frame", "vs_assumed"],
    "loader": ["frames_per_cpu_s", "cores_per_gpu", "cores_per_gpu_finetune"],
}


def lookup(doc: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(doc, dict) or part not in doc:
            return None
        doc = doc[part]
    return doc


def _on_alarm(signum, frame):  # noqa: ARG001
    raise SectionTimeout()


def run_section(name: str, fn: Callable[[Context], dict[str, Any]], ctx: Context, cap: float) -> dict[str, Any]:
    """``fn(ctx)`` under a ``cap``-second alarm; an exception or the cap becomes ``{"error": ...}``."""
    t0, c0 = time.perf_counter(), time.process_time()
    old = signal.signal(signal.SIGALRM, _on_alarm)
    ctx.partial = {}
    signal.setitimer(signal.ITIMER_REAL, cap)
    try:
        out = fn(ctx)
    except SectionTimeout:
        out = {**ctx.partial, "error": f"SectionTimeout: section {name!r} ran past its cap of {cap:.0f} s"}
    except Exception as exc:  # noqa: BLE001 - recorded; the run goes on
        out = {**ctx.partial, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(limit=12)}
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    _free(ctx.device)
    out["section_seconds"] = time.perf_counter() - t0
    out["section_cpu_seconds"] = time.process_time() - c0
    out["cap_seconds"] = cap
    print(f"gpu_check: {name} {'FAILED ' + out['error'].splitlines()[0] if 'error' in out else 'ok'} "
          f"({out['section_seconds']:.1f} s, {out['section_cpu_seconds']:.1f} CPU-s)", flush=True)
    return out


def _finite(obj: Any) -> Any:
    """NaN/inf as null: the JSON stays standard."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def summary_markdown(doc: dict[str, Any]) -> str:
    """The Markdown summary for benchmarks/results/."""
    def num(v: Any) -> str:
        if isinstance(v, bool) or v is None:
            return str(v)
        if isinstance(v, (int, float)):
            return f"{v:,.4g}" if abs(v) < 1e4 else f"{v:,.0f}"
        return str(v)

    env = doc.get("env", {})
    lines = [f"# GPU check: {doc['device']}, {doc['started'][:10]}", "",
             f"`{doc.get('command', 'python -m benchmarks.gpu_check')}` at commit {doc.get('commit')}; "
             f"{doc['seconds']:.0f} s "
             f"in all.{' DRY RUN: CPU, tiny sizes; the figures only show the script works.' if doc['dry_run'] else ''}",
             "", "| environment | |", "|---|---|"]
    for key in ("gpu_name", "gpu_memory_gib", "driver", "cuda", "cudnn", "nccl", "torch", "deepspeed", "accelerate",
                "bf16_supported", "cpu_cores", "peak_bf16_tflops", "peak_source"):
        if key in env:
            lines.append(f"| {key} | {num(env[key])} |")
    for name in SECTIONS:
        if name not in doc:
            lines += ["", f"## {name}", "", "not run"]
            continue
        sec = doc[name]
        took = f"{sec.get('section_seconds', 0):.0f} s of a {sec.get('cap_seconds', 0):.0f} s cap"
        lines += ["", f"## {name} ({took})", ""]
        if "error" in sec:
            lines += [f"**failed**: `{sec['error'].splitlines()[0]}`"]
            continue
        if name == "env":
            continue
        lines += ["| figure | value |", "|---|---|"]
        for key, value in _flatten(sec):
            if key.endswith(("traceback", "section_seconds", "section_cpu_seconds", "cap_seconds")):
                continue
            lines.append(f"| {key} | {num(value)} |")
    return "\n".join(lines) + "\n"


HEADLINE = ["env.gpu_name", "env.peak_bf16_tflops", "numerics.all_ok", "numerics.policy_tiny.logp_max_abs_diff",
            "numerics.policy_tiny.grad_cosine", "numerics.policy_2x.logp_rel_err", "numerics.policy_2x.grad_cosine",
            "numerics.mineclip_full.image_cosine_min", "train.flops_per_frame",
            "train.plain.batch_size", "train.plain.frames_per_s", "train.plain.mfu", "train.plain.peak_allocated_gib",
            "train.checkpointed.batch_size", "train.checkpointed.frames_per_s", "train.checkpointed.mfu",
            "train.checkpointed.peak_allocated_gib", "train.best_hours_per_100M_frames",
            "finetune.batch_size", "finetune.frames_per_s", "finetune.peak_reserved_gib", "finetune.fits_24gb",
            "finetune.max_batch_in_24gb", "embed.frames_per_s", "embed.image_tower_frames_per_s", "embed.vs_assumed",
            "loader.frames_per_cpu_s", "loader.cores_per_gpu"]


def headline(doc: dict[str, Any]) -> str:
    """The key figures, one per line (what a session reading only the command's output needs)."""
    lines = []
    for key in HEADLINE:
        value = lookup(doc, key)
        lines.append(f"  {key}: {value:.4g}" if isinstance(value, float) else f"  {key}: {value}")
    return "\n".join(lines)


def _flatten(doc: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for k, v in doc.items():
        if isinstance(v, dict):
            out += _flatten(v, f"{prefix}{k}.")
        else:
            out.append((f"{prefix}{k}", v))
    return out


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, type=Path, help="folder for gpu_check.json and gpu_check.md")
    ap.add_argument("--dry-run", action="store_true", help="every section on the CPU at tiny sizes (under a minute)")
    ap.add_argument("--sections", nargs="+", choices=list(SECTIONS), default=list(SECTIONS))
    args = ap.parse_args(argv)
    started, t0 = datetime.now(timezone.utc), time.perf_counter()
    if args.dry_run:   # before anything asks torch about CUDA: on a GPU node the dry run stays on the CPU too
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    device = torch.device("cpu") if args.dry_run else _device()
    if not args.dry_run and device.type != "cuda":
        print("gpu_check: no CUDA device here; running on the CPU at full size would take hours. "
              "Use --dry-run to check the script on the CPU.", file=sys.stderr)
        return 2
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)   # its per-engine INFO lines would bury the results
    s = sizes(args.dry_run)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu: {_cpu_model()}"
    command = " ".join(["python -m benchmarks.gpu_check", *(argv if argv is not None else sys.argv[1:])])
    doc: dict[str, Any] = {"device": gpu, "started": started.isoformat(timespec="seconds"), "dry_run": args.dry_run,
                           "commit": _commit(), "command": command}
    args.out.mkdir(parents=True, exist_ok=True)
    running: list[str] = []
    # A section stuck inside C code (an NCCL or CUDA call) never sees its alarm: past the whole run's budget
    # the watchdog records that, writes what the run has, and ends the process.
    budget = sum(s.caps[n] for n in args.sections) + WATCHDOG_GRACE_S

    def on_hang() -> None:
        name = running[-1] if running else "?"
        doc[name] = {"error": f"Hung: section {name!r} was still running when the whole run's budget of {budget} s "
                              f"ran out (stuck in C code: its own cap could not interrupt it); the watchdog ended "
                              f"the run"}
        _write(args.out, doc, t0)
        print(f"gpu_check: {doc[name]['error']}", flush=True)
        os._exit(3)

    watchdog = threading.Timer(budget, on_hang)
    watchdog.daemon = True
    watchdog.start()
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        ctx = Context(device=device, sizes=s, tmp=Path(tmp))
        for name in args.sections:
            running.append(name)
            doc[name] = run_section(name, SECTIONS[name], ctx, s.caps[name])
            _write(args.out, doc, t0)      # results so far survive a kill from outside
    watchdog.cancel()
    doc = _write(args.out, doc, t0)
    failed = [n for n in args.sections if "error" in doc[n]]
    print(headline(doc))
    print(f"gpu_check: {doc['seconds']:.0f} s; wrote {args.out / 'gpu_check.json'} and gpu_check.md"
          f"{'; failed: ' + ', '.join(failed) if failed else ''}", flush=True)
    return 1 if failed else 0


def _write(out: Path, doc: dict[str, Any], t0: float) -> dict[str, Any]:
    """``gpu_check.json`` and ``gpu_check.md`` of the sections run so far (atomic: a reader never sees half)."""
    from steve1.io import write_json_atomic, write_text_atomic

    doc["seconds"] = time.perf_counter() - t0
    clean = _finite(json.loads(json.dumps(doc, default=str)))
    write_json_atomic(out / "gpu_check.json", clean)
    write_text_atomic(out / "gpu_check.md", summary_markdown(clean))
    return clean


if __name__ == "__main__":
    raise SystemExit(main())
