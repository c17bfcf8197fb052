"""STEVE-1 behavioural cloning: truncated BPTT over [B,T] chunks, through Accelerate (+ DeepSpeed).

Each batch of B chunks of T frames runs as T/trunc_t calls of trunc_t frames. The transformer
memory is carried (detached) from call to call and from batch to batch, as STEVE-1 does; the
dataset sets ``first`` only at a chunk's first frame, and the policy reads only ``first[:, 0]`` of
a call, so calls must start where chunks start: ``trunc_t`` divides ``T`` (validated in params)
and :func:`check_firsts` refuses a batch with a ``first`` anywhere else. :func:`reset_memory`
clears the carried memory of rows that start a new chunk, which is what the policy's mask does
anyway, so nothing of an unrelated segment survives even in a saved checkpoint.

The loss is the negative log-likelihood of the taken buttons + camera actions; ``official``
reduction sums over a call's steps and averages over the batch (STEVE-1's training loss, kept
as the default so loss values compare with the paper's code), ``mean`` averages per step.
One call is one micro-step; ``grad_accum`` micro-steps make an optimizer step. The learning
rate follows :func:`steve1.train.optim.lr_at` of the frames seen (all processes), set before
every micro-step as STEVE-1 does.

Bookkeeping (validation, logging, checkpoints, snapshots) happens at batch ends, where the
loader position is a whole number of batches and no gradient is pending, so a checkpoint
taken there resumes bit-exactly.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import resource
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from accelerate.utils import DistributedType
from torch import nn

from steve1.data.dataset import ChunkLoader, make_dataloader
from steve1.data import formats as F
from steve1.data.episodes import open_store
from steve1.data.sampling import episode_files, load_sampling, set_dirs, split_chunks, split_key
from steve1.io import atomic_path, check_writable, write_json_atomic
from steve1.models.build import build_policy_for_params
from steve1.models.checkpoints import load_policy_weights
from steve1.models.policy import behavioural_cloning_loss
from steve1.models.transformer import BlockState
from steve1.models.vpt import AgentPolicy
from steve1.params import Params, TrainParams
from steve1.train import checkpoint as ckpt
from steve1.train.accelerator import build_accelerator, mixed_precision
from steve1.train.augment import AugmentConfig, augment_frames
from steve1.train.freeze import apply_freeze
from steve1.train.optim import lr_at, make_optimizer, set_lr

log = logging.getLogger(__name__)

# Fields that change what is trained; a checkpoint made with different values is not resumed.
_NOT_FINGERPRINTED = {"run", "num_workers", "log_every_steps", "val_freq", "val_freq_begin", "val_freq_switch_steps",
                      "val_every_nth", "checkpoint_every_steps", "snapshot_every_frames", "grad_norm_range",
                      "tensorboard"}


class NonFiniteLossError(RuntimeError):
    """The loss or gradient norm became NaN/inf; training stopped without saving."""


# ----------------------------------------------------------------------------- pure pieces

def reset_memory(state: list[BlockState], first0: torch.Tensor) -> list[BlockState]:
    """Forget the carried memory of rows whose next call starts a new chunk (``first0`` bool [B]).

    Masks the cached frames (as the policy does for ``first[:, 0]``) and zeroes their keys/values.
    """
    keep = ~first0.bool()[:, None, None]  # [B,1,1]
    out = []
    for mask, (k, v) in state:
        mask = None if mask is None else mask & keep
        out.append((mask, (torch.where(keep, k, torch.zeros_like(k)), torch.where(keep, v, torch.zeros_like(v)))))
    return out


def detach_state(state: list[BlockState]) -> list[BlockState]:
    """Cut the graph between calls: truncated BPTT."""
    return [(m, (k.detach(), v.detach())) for m, (k, v) in state]


def check_firsts(first: torch.Tensor, trunc_t: int) -> None:
    """Refuse a batch with ``first`` set inside a call (the policy would ignore it there)."""
    inside = first.clone()
    inside[:, ::trunc_t] = False
    if bool(inside.any()):
        b, t = (int(i) for i in inside.nonzero()[0])
        raise ValueError(f"batch row {b} has first=True at frame {t}, which is not a multiple of trunc_t={trunc_t}: "
                         f"the policy only resets memory at a call's first frame")


def to_model_inputs(batch: Mapping[str, torch.Tensor], device) -> dict[str, Any]:
    """Loader batch -> obs/first/action on ``device`` (frames stay uint8: the policy scales them)."""
    return {"img": batch["frames"].to(device, non_blocking=True),
            "mineclip_embed": batch["goal_embeds"].to(device, non_blocking=True),
            "first": batch["firsts"].to(device, non_blocking=True),
            "buttons": batch["buttons"].to(device, non_blocking=True),
            "camera": batch["camera"].to(device, non_blocking=True)}


def call_slice(inputs: Mapping[str, torch.Tensor], i: int, trunc_t: int) -> dict[str, torch.Tensor]:
    """The i-th trunc_t-frame call of a [B,T,...] batch (views, no copies)."""
    return {k: v[:, i * trunc_t:(i + 1) * trunc_t] for k, v in inputs.items()}


class EmbedDimError(ValueError):
    """The goal embeddings' width differs from ``train.mineclip_embed_dim``."""


def check_embed_dim(sampling: Mapping[str, Any], episodes_dir, embeds_dir, expected: int) -> None:
    """Refuse, before any work, embeds files whose ``embed_dim`` attr differs from ``expected``.

    Reads the first train episode of every set (a set is embedded by one MineCLIP): a 768-d CLIP's
    embeddings fed into a 512-d goal layer would otherwise fail deep in the first forward.
    """
    dirs = set_dirs(sampling, episodes_dir, embeds_dir)
    seen: set[str] = set()
    for key, _, _ in split_chunks(sampling, "train"):
        set_name = split_key(key)[0]
        if set_name in seen:
            continue
        seen.add(set_name)
        path = episode_files(key, dirs)[1]
        if not path.is_file():
            continue  # the loader names missing files
        with open_store(path, "embeds") as f:
            dim = int(f.attrs.get(F.A_EMBED_DIM, f[F.EMBEDS].shape[-1] if F.EMBEDS in f else expected))
        if dim != expected:
            raise EmbedDimError(f"{path}: goal embeddings are {dim}-d (attr {F.A_EMBED_DIM}) but "
                                f"train.mineclip_embed_dim is {expected}; set train.mineclip_embed_dim: {dim} "
                                f"or re-embed with a {expected}-d model")


def check_goal_width(goal_embeds: torch.Tensor, expected: int) -> None:
    """The same check on a loaded batch [B,T,D] (shape only: no device sync)."""
    if goal_embeds.shape[-1] != expected:
        raise EmbedDimError(f"the loader's goal embeddings are {goal_embeds.shape[-1]}-d but "
                            f"train.mineclip_embed_dim is {expected}")


def config_fingerprint(params: Params) -> str:
    """Hash of everything that changes the trained weights; a checkpoint is resumed only on a match."""
    tp = params.train.model_dump(mode="json", exclude=_NOT_FINGERPRINTED)
    doc = {"train": tp, "learning_rate": params.learning_rate, "T": params.train_T,
           "sample": params.sample.model_dump(mode="json")}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- model + loss

class BCModule(nn.Module):
    """The trained part of the policy (``net`` + ``pi_head``) with the BC loss in ``forward``.

    The value head stays outside: STEVE-1 never trains it, and leaving it out keeps DDP free of
    unused parameters and DeepSpeed away from its 0-dim normaliser tensors (which its broadcast
    cannot view as bytes). Keys are the policy's own (``net.*``, ``pi_head.*``).
    """

    def __init__(self, policy: AgentPolicy, reduction: str = "official", autocast: bool = False):
        super().__init__()
        self.net, self.pi_head = policy.net, policy.pi_head
        self.reduction, self.autocast = reduction, autocast

    def forward(self, call: Mapping[str, torch.Tensor], state: list[BlockState]):
        obs = {"img": call["img"], "mineclip_embed": call["mineclip_embed"]}
        with torch.autocast(call["img"].device.type, dtype=torch.bfloat16, enabled=self.autocast):
            latent, new_state = self.net(obs, call["first"], state)  # [B,t,H]
            pd = {k: head(latent).float() for k, head in self.pi_head.items()}  # [B,t,1,N]
        loss = behavioural_cloning_loss(pd, {"buttons": call["buttons"], "camera": call["camera"]},
                                        reduction=self.reduction)
        return loss, new_state


def build_start_policy(tp: TrainParams) -> AgentPolicy:
    """From scratch (preset or ``in_model``), from VPT weights, or from STEVE-1 weights; seeded init;
    ``train.freeze`` groups (and the value head, which STEVE-1 never trains) set not to train."""
    torch.manual_seed(tp.seed)
    policy = build_policy_for_params(tp)
    if tp.in_weights:
        initialised = load_policy_weights(policy, tp.in_weights, allow_vpt=True, goal_init=tp.goal_init)
        if initialised:
            log.info("%s is VPT weights: initialised %s (%s)", tp.in_weights, ", ".join(initialised), tp.goal_init)
    policy.value_head.requires_grad_(False)
    if tp.freeze:
        frozen = apply_freeze(policy, tp.freeze)
        log.info("train.freeze %s: %d parameter tensors frozen", tp.freeze, len(frozen))
    return policy


# ----------------------------------------------------------------------------- the hot path

def train_step(model, optimizer, accelerator, call: Mapping[str, torch.Tensor], state: list[BlockState],
               max_grad_norm: float):
    """One micro-step: forward, backward and, at an accumulation boundary, clip and step.

    Returns (loss, grad_norm or None, detached new state); all stay on the device (no host sync).
    Under DeepSpeed, ``accelerator.backward`` runs the engine's clip + step at the boundary and
    ``optimizer.step`` is a no-op; the norm is the engine's (pre-clip, as torch's clip returns).
    """
    with accelerator.accumulate(model):
        loss, new_state = model(call, state)
        accelerator.backward(loss)
        grad_norm = None
        if accelerator.sync_gradients:
            if accelerator.distributed_type == DistributedType.DEEPSPEED:
                grad_norm = model.get_global_grad_norm()
            else:
                grad_norm = accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return loss.detach(), grad_norm, detach_state(new_state)


@torch.no_grad()
def validate(model, accelerator, loader: ChunkLoader, trunc_t: int, device) -> float:
    """Mean loss per call over the fixed val subset (epoch 0 every time), averaged over processes."""
    model.eval()
    loader.load_state_dict({**loader.state_dict(), "epoch": 0, "step": 0})
    total, n, state = torch.zeros((), device=device), 0, None
    for batch in loader:
        inputs = to_model_inputs(batch, device)
        if state is None:
            state = _unwrap(model).net.recurrent_layer.initial_state(inputs["img"].shape[0], device)
        for i in range(inputs["img"].shape[1] // trunc_t):
            call = call_slice(inputs, i, trunc_t)
            loss, state = model(call, reset_memory(state, call["first"][:, 0]))
            total, n = total + loss.float(), n + 1
    model.train()
    mean = accelerator.gather(total.reshape(1) / max(n, 1)).mean()
    return float(mean.item())  # host sync: once per validation


def _unwrap(model) -> BCModule:
    return getattr(model, "module", model)


# ----------------------------------------------------------------------------- the run

@dataclass
class RunPaths:
    run: Path

    @property
    def latest(self) -> Path:
        return self.run / "latest.weights"

    @property
    def best(self) -> Path:
        return self.run / "best.weights"

    @property
    def snapshots(self) -> Path:
        return self.run / "snapshots"

    @property
    def dvclive(self) -> Path:
        return self.run / "dvclive"

    @property
    def tensorboard(self) -> Path:
        return self.run / "tensorboard"


def policy_state_dict(accelerator, model, policy: AgentPolicy) -> dict[str, torch.Tensor]:
    """Full policy weights in the official key order, fp32 CPU (gathers ZeRO-3 shards: collective)."""
    trained = accelerator.get_state_dict(model)
    out = {}
    for key, value in policy.state_dict().items():
        v = trained.get(key, value) if trained is not None else value
        v = v.detach().to("cpu", copy=True)
        out[key] = v.float() if v.is_floating_point() else v
    return out


def write_weights(sd: Mapping[str, torch.Tensor], path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(dict(sd), tmp)


def _peak_memory_mb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _due(step: int, last: int, every: int) -> bool:
    return step // every > last // every


def train(params: Params, *, on_step=None) -> dict[str, Any]:
    """Train (or resume) ``<paths.models>/<train.run>/``; returns the final summary.

    ``on_step(counters)`` is called at every batch end (tests use it to kill at a known point).
    """
    tp = params.train
    T = params.train_T
    run = RunPaths(Path(params.paths.models) / tp.run)
    check_writable(run.run)
    sampling_path = Path(params.paths.samplings) / f"{params.sample.name}.json"
    sampling = load_sampling(sampling_path)
    check_embed_dim(sampling, params.paths.episodes, params.paths.embeds, tp.mineclip_embed_dim)

    accelerator = build_accelerator(tp)
    device = accelerator.device
    world, rank = accelerator.num_processes, accelerator.process_index
    fingerprint = config_fingerprint(params)

    policy = build_start_policy(tp)
    autocast = mixed_precision(tp) == "bf16" and tp.deepspeed != "none"
    module = BCModule(policy, tp.loss_reduction, autocast=autocast)
    optimizer = make_optimizer(module, params.learning_rate, tp.weight_decay)
    model, optimizer = accelerator.prepare(module, optimizer)
    policy.value_head.to(device)

    loader_kwargs = dict(episodes_dir=params.paths.episodes, embeds_dir=params.paths.embeds, T=T,
                         p_uncond=tp.p_uncond, gap_dist=tp.gap_dist, official_goal_lag=tp.official_goal_lag,
                         rank=rank, world_size=world)
    loader = make_dataloader(sampling, "train", batch_size=tp.batch_size, seed=tp.seed, num_workers=tp.num_workers,
                             **loader_kwargs)
    val_sampling = {**sampling, "chunks": {**sampling["chunks"], "val": sampling["chunks"]["val"][::tp.val_every_nth]}}
    val_loader = None
    if val_sampling["chunks"]["val"]:
        val_loader = make_dataloader(val_sampling, "val", batch_size=tp.batch_size, seed=tp.seed, shuffle=False,
                                     **loader_kwargs)

    counters = {"step": 0, "micro": 0, "frames": 0, "batches": 0, "best_val_loss": None, "best_step": None,
                "last_val_step": 0, "last_ckpt_step": 0, "last_log_step": 0,
                "next_snapshot_frames": tp.snapshot_every_frames, "fingerprint": fingerprint}
    state = None
    found = ckpt.find_checkpoint(run.run)
    resuming = found is not None and ckpt.load_trainer_state(found).get("fingerprint") == fingerprint
    if found is not None and not resuming:
        log.warning("%s was made with different train params (fingerprint mismatch): starting afresh", found)
    if resuming:
        counters, state = ckpt.load_checkpoint(accelerator, found, device)
        loader.load_state_dict({**counters.pop("loader"), "rank": rank})
        log.info("resumed %s at step %d (%d frames)", found, counters["step"], counters["frames"])
    elif accelerator.is_main_process:
        for stale in (run.snapshots, run.dvclive, run.tensorboard, run.latest, run.best):
            if stale.is_dir():
                shutil.rmtree(stale)
            elif stale.exists():
                stale.unlink()
    if accelerator.is_main_process:
        run.snapshots.mkdir(parents=True, exist_ok=True)  # a declared output even when empty
    accelerator.wait_for_everyone()
    if state is None:
        state = policy.initial_state(tp.batch_size, device)

    live = _open_live(run, counters["step"], resuming) if accelerator.is_main_process else None
    board = _open_tensorboard(run, counters["step"], resuming) if tp.tensorboard and accelerator.is_main_process else None
    augment = AugmentConfig(**tp.augment.model_dump())
    if accelerator.is_main_process:
        write_json_atomic(run.run / "config.json", {
            "params": params.model_dump(mode="json"), "world_size": world, "fingerprint": fingerprint,
            "deepspeed": None if tp.deepspeed == "none" else accelerator.state.deepspeed_plugin.deepspeed_config,
            "mixed_precision": mixed_precision(tp), "sampling": str(sampling_path)})

    def save(reason: str) -> None:
        full = {**counters, "loader": loader.state_dict()}
        path = ckpt.save_checkpoint(accelerator, run.run, full, state)
        sd = policy_state_dict(accelerator, model, policy)
        if accelerator.is_main_process:
            write_weights(sd, run.latest)
            log.info("checkpoint (%s) at step %d, %d frames -> %s", reason, counters["step"], counters["frames"], path)

    if not resuming:
        save("start")  # so a failure at the first steps still leaves something to resume

    frames_per_call = tp.trunc_t * tp.batch_size * world
    calls_per_batch = T // tp.trunc_t
    low, high = tp.grad_norm_range
    loss_sum = torch.zeros((), device=device)
    norm_sum, n_calls, n_norms = torch.zeros((), device=device), 0, 0
    t_log, wait, frames_log = time.perf_counter(), 0.0, counters["frames"]
    batches = iter(loader)
    model.train()
    while counters["frames"] < tp.n_frames:
        t0 = time.perf_counter()
        batch = next(batches, None)
        if batch is None:  # epoch end: the loader moves on to the next epoch
            batches = iter(loader)
            batch = next(batches)
        wait += time.perf_counter() - t0
        check_firsts(batch["firsts"], tp.trunc_t)  # CPU tensor: no device sync
        check_goal_width(batch["goal_embeds"], tp.mineclip_embed_dim)
        inputs = to_model_inputs(batch, device)
        # seeded by (seed, batch index): a resumed run draws the same augmentation at the same batch
        inputs["img"] = augment_frames(inputs["img"], augment, tp.seed, counters["batches"])
        for i in range(calls_per_batch):
            call = call_slice(inputs, i, tp.trunc_t)
            set_lr(optimizer, lr_at(counters["frames"], params.learning_rate, tp.warmup_frames, tp.n_frames))
            loss, grad_norm, state = train_step(model, optimizer, accelerator, call,
                                                reset_memory(state, call["first"][:, 0]), tp.max_grad_norm)
            counters["micro"] += 1
            counters["frames"] += frames_per_call
            loss_sum, n_calls = loss_sum + loss.float(), n_calls + 1
            if grad_norm is not None:
                counters["step"] += 1
                norm_sum, n_norms = norm_sum + torch.as_tensor(grad_norm, device=device).float(), n_norms + 1
        counters["batches"] += 1
        step = counters["step"]
        at_boundary = counters["micro"] % tp.grad_accum == 0
        finished = counters["frames"] >= tp.n_frames

        if _due(step, counters["last_log_step"], tp.log_every_steps) or finished:
            # host sync (and a small all-reduce: the loss of every process's rows) once per logging interval
            mean_loss = accelerator.reduce(loss_sum / max(n_calls, 1), reduction="mean").item()
            mean_norm = (norm_sum / max(n_norms, 1)).item()  # already global: clipping reduces over processes
            _check_finite(mean_loss, mean_norm, counters, run)
            now = time.perf_counter()
            metrics = {"loss": mean_loss, "grad_norm": mean_norm, "lr": optimizer.param_groups[0]["lr"],
                       "frames": counters["frames"],
                       "frames_per_s": (counters["frames"] - frames_log) / max(now - t_log, 1e-9),
                       "data_wait_share": wait / max(now - t_log, 1e-9), "peak_memory_mb": _peak_memory_mb(device),
                       "grad_norm_out_of_range": float(not low <= mean_norm <= high)}
            if accelerator.is_main_process and metrics["grad_norm_out_of_range"]:
                log.warning("step %d: gradient norm %.3g is outside the expected [%g, %g] (train.grad_norm_range)",
                            step, mean_norm, low, high)
            _log(live, board, step, metrics)
            loss_sum, norm_sum, n_calls, n_norms = torch.zeros_like(loss_sum), torch.zeros_like(norm_sum), 0, 0
            t_log, wait, frames_log = now, 0.0, counters["frames"]
            counters["last_log_step"] = step

        if val_loader is not None and at_boundary and (finished or _due(
                step, counters["last_val_step"],
                tp.val_freq_begin if step < tp.val_freq_switch_steps else tp.val_freq)):
            val_loss = validate(model, accelerator, val_loader, tp.trunc_t, device)
            counters["last_val_step"] = step
            _log(live, board, step, {"val_loss": val_loss})
            if not math.isfinite(val_loss):
                raise NonFiniteLossError(f"validation loss is {val_loss} at step {step}; {_resume_hint(run)}")
            if counters["best_val_loss"] is None or val_loss < counters["best_val_loss"]:
                counters["best_val_loss"], counters["best_step"] = val_loss, step
                sd = policy_state_dict(accelerator, model, policy)
                if accelerator.is_main_process:
                    write_weights(sd, run.best)
                    write_json_atomic(run.run / "best.json", {"val_loss": val_loss, "step": step,
                                                              "frames": counters["frames"]})

        if tp.snapshot_every_frames and counters["frames"] >= counters["next_snapshot_frames"]:
            sd = policy_state_dict(accelerator, model, policy)
            if accelerator.is_main_process:
                write_weights(sd, run.snapshots / f"{counters['frames']}.weights")
            while counters["next_snapshot_frames"] <= counters["frames"]:
                counters["next_snapshot_frames"] += tp.snapshot_every_frames

        if at_boundary and (finished or _due(step, counters["last_ckpt_step"], tp.checkpoint_every_steps)):
            # a finite-loss check first: never checkpoint weights that saw a NaN
            pending = (loss_sum.sum() + norm_sum.sum()).item()  # host sync: once per checkpoint
            _check_finite(pending, 0.0, counters, run)
            counters["last_ckpt_step"] = step
            save("end" if finished else "periodic")
        if on_step is not None:
            on_step(dict(counters))

    final = policy_state_dict(accelerator, model, policy)  # also when a finished run is re-entered
    if accelerator.is_main_process:
        write_weights(final, run.latest)
    if val_loader is None and accelerator.is_main_process:
        shutil.copyfile(run.latest, run.best)  # no val split: the final weights are the best we know
        write_json_atomic(run.run / "best.json", {"val_loss": None, "step": counters["step"],
                                                  "frames": counters["frames"]})
    if live is not None:
        live.end()
    if board is not None:
        board.close()
    accelerator.wait_for_everyone()
    summary = {k: counters[k] for k in ("step", "frames", "batches", "best_val_loss", "best_step")}
    accelerator.end_training()
    return summary


def _resume_hint(run: RunPaths) -> str:
    found = ckpt.find_checkpoint(run.run)
    if found is None:
        return "no checkpoint was written"
    st = ckpt.load_trainer_state(found)
    return (f"stopped without saving; the last good checkpoint is {found} (step {st['step']}, {st['frames']} frames): "
            f"fix the cause (data, learning_rate) and rerun to resume from it")


def _check_finite(loss: float, norm: float, counters: Mapping[str, Any], run: RunPaths) -> None:
    if not (math.isfinite(loss) and math.isfinite(norm)):
        raise NonFiniteLossError(f"non-finite training loss/gradient norm (loss {loss}, grad norm {norm}) in the steps "
                                 f"after step {counters['last_log_step']} (now step {counters['step']}); "
                                 f"{_resume_hint(run)}")


def _open_live(run: RunPaths, step: int, resuming: bool):
    """dvclive under ``<run>/dvclive``; on resume, rows logged after the checkpoint are dropped."""
    from dvclive import Live

    if resuming:
        for tsv in (run.dvclive / "plots" / "metrics").rglob("*.tsv"):
            lines = tsv.read_text().splitlines()
            if lines:
                head, rows = lines[0], lines[1:]
                col = head.split("\t").index("step")
                rows = [r for r in rows if int(r.split("\t")[col]) <= step]
                tsv.write_text("\n".join([head, *rows]) + "\n")
    return Live(dir=str(run.dvclive), resume=resuming, report=None, dvcyaml=None, save_dvc_exp=False)


def _open_tensorboard(run: RunPaths, step: int, resuming: bool):
    """A SummaryWriter under ``<run>/tensorboard``; on resume, events logged after the checkpoint are purged."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise ImportError(f"train.tensorboard is true but TensorBoard is not installed ({exc}); "
                          f"pip install tensorboard, or set train.tensorboard: false") from None
    return SummaryWriter(log_dir=str(run.tensorboard), purge_step=step + 1 if resuming else None)


def _log(live, board, step: int, metrics: Mapping[str, float]) -> None:
    """The same scalars to dvclive and, when on, TensorBoard (main process only: both are None elsewhere)."""
    if board is not None:
        for name, value in metrics.items():
            board.add_scalar(name, value, step)
        board.flush()
    if live is None:
        return
    live.step = step
    for name, value in metrics.items():
        live.log_metric(name, value)
    live.make_summary()
    log.info("step %d: %s", step, ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
