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

Bookkeeping (logging, validation and best weights, snapshots, checkpoints; logging, validation
and checkpoints stop the run on a non-finite value) happens at batch ends, where the loader
position is a whole number of batches and no gradient is pending, so a checkpoint taken there
resumes bit-exactly. :func:`train` reads as that loop: :func:`train_batch`, then the named
bookkeeping functions; the counters they advance are a :class:`~steve1.train.run_state.RunState`,
which is also what a checkpoint stores.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import resource
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

import torch
from accelerate.utils import DistributedType
from torch import nn

from steve1.data.dataset import ChunkLoader, LoaderConfig, make_dataloader
from steve1.data import formats
from steve1.data.episodes import open_store
from steve1.data.sampling import Sampling, episode_files, split_key
from steve1.errors import UserError
from steve1.io import check_writable, sha256_file, write_json_atomic
from steve1.models.build import build_policy_for_params
from steve1.models.checkpoints import load_policy_weights, save_policy_weights
from steve1.models.policy import behavioural_cloning_loss
from steve1.models.transformer import BlockState
from steve1.models.vpt import AgentPolicy
from steve1.layout import Layout, RunLayout
from steve1.params import BEST_ON_ALL, AugmentParams, Params, TrainParams
from steve1.shapes import NOT_FINGERPRINTED, declared_values, named_files, nested
from steve1.train import checkpoint as ckpt
from steve1.train.accelerator import build_accelerator, mixed_precision
from steve1.train.augment import augment_frames
from steve1.train.freeze import apply_freeze
from steve1.train.optim import lr_at, make_optimizer, set_lr
from steve1.train.process import RunFolderLock
from steve1.train.run_state import RunState
from steve1.train.val_sets import ValSets, best_criterion, improves, val_subset

log = logging.getLogger(__name__)



class NonFiniteLossError(UserError, RuntimeError):
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


class EmbedDimError(UserError):
    """The goal embeddings' width differs from ``train.mineclip_embed_dim``."""


def check_embed_dim(sampling: Sampling, episodes_dir, embeds_dir, expected: int) -> None:
    """Refuse, before any work, embeds files whose ``embed_dim`` attr differs from ``expected``.

    Reads the first train episode of every set (a set is embedded by one MineCLIP): a 768-d CLIP's
    embeddings fed into a 512-d goal layer would otherwise fail deep in the first forward.
    """
    dirs = sampling.set_dirs(episodes_dir, embeds_dir)
    seen: set[str] = set()
    for key, _, _ in sampling.train_chunks:
        set_name = split_key(key)[0]
        if set_name in seen:
            continue
        seen.add(set_name)
        path = episode_files(key, dirs)[1]
        if not path.is_file():
            continue  # the loader names missing files
        with open_store(path, "embeds") as f:
            dim = int(f.attrs.get(formats.A_EMBED_DIM, f[formats.EMBEDS].shape[-1] if formats.EMBEDS in f else expected))
        if dim != expected:
            raise EmbedDimError(f"{path}: goal embeddings are {dim}-d (attr {formats.A_EMBED_DIM}) but "
                                f"train.mineclip_embed_dim is {expected}; set train.mineclip_embed_dim: {dim} "
                                f"or re-embed with a {expected}-d model")


def check_goal_width(goal_embeds: torch.Tensor, expected: int) -> None:
    """The same check on a loaded batch [B,T,D] (shape only: no device sync)."""
    if goal_embeds.shape[-1] != expected:
        raise EmbedDimError(f"the loader's goal embeddings are {goal_embeds.shape[-1]}-d but "
                            f"train.mineclip_embed_dim is {expected}")


def config_fingerprint(params: Params, inputs: str = "") -> str:
    """Hash of everything that changes the trained weights: the train stage's declared params
    (``steve1.shapes``, less the keys that change no weight) and ``inputs``, the digest of what they
    read (:func:`inputs_digest`); a checkpoint is resumed only on a match."""
    doc = {"params": declared_values(params, "train", exclude=NOT_FINGERPRINTED), "T": params.train_T,
           "inputs": inputs}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def inputs_digest(params: Params, sampling: Sampling, sampling_path: Path) -> str:
    """Digest of the content training reads: the sampling JSON, the episode and embeds files its chunks
    name, and the files the train params name (start weights, model, DeepSpeed JSON). New data under the
    same params is another run: its checkpoint is not resumed."""
    h = hashlib.sha256(Path(sampling_path).read_bytes())
    layout = Layout.from_params(params)
    dirs = sampling.set_dirs(layout.episodes, layout.embeds)
    keys = sorted({key for split in ("train", "val") for key, _, _ in sampling.chunks(split)})
    files = [(key, path) for key in keys for path in episode_files(key, dirs)]
    files += [(name, Path(name)) for name in named_files(params, "train")]
    for name, path in files:
        digest = sha256_file(path) if path.is_file() else "missing"
        h.update(f"{name}\0{path.name}\0{digest}\n".encode())
    return h.hexdigest()


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

    def forward(self, call: Mapping[str, torch.Tensor], state: list[BlockState], per_row: bool = False):
        """(loss, new state); ``per_row``: the loss of each row [B] instead (its mean is the call's loss)."""
        obs = {"img": call["img"], "mineclip_embed": call["mineclip_embed"]}
        with torch.autocast(call["img"].device.type, dtype=torch.bfloat16, enabled=self.autocast):
            latent, new_state = self.net(obs, call["first"], state)  # [B,t,H]
            pd = {k: head(latent).float() for k, head in self.pi_head.items()}  # [B,t,1,N]
        action = {"buttons": call["buttons"], "camera": call["camera"]}
        if per_row:
            nll = behavioural_cloning_loss(pd, action, reduction="none")  # [B,t]
            return (nll.sum(dim=1) if self.reduction == "official" else nll.mean(dim=1)), new_state  # [B]
        return behavioural_cloning_loss(pd, action, reduction=self.reduction), new_state


def _log_data(params: Params, sampling: Sampling) -> None:
    """What the run trains on: the sampling, each set's share, augmentation."""
    sets = sampling.sets or {}
    shares = ", ".join(f"{name} {s['totals']['train']['share']:.1%}" for name, s in sets.items()) or "one set"
    aug = params.train.augment
    log.info("data: %s, %d train chunks (%s); augmentation %s", Layout.from_params(params).sampling,
             len(sampling.train_chunks), shares,
             aug.model_dump(exclude={"enabled"}) if aug.enabled else "off")


def build_start_policy(tp: TrainParams) -> AgentPolicy:
    """From scratch (preset or ``in_model``), from VPT weights, or from STEVE-1 weights; seeded init;
    ``train.freeze`` groups (and the value head, which STEVE-1 never trains) set not to train."""
    torch.manual_seed(tp.seed)
    policy = build_policy_for_params(tp)
    architecture = tp.in_model or f"preset {tp.preset}"
    if tp.in_weights:
        initialised = load_policy_weights(policy, tp.in_weights, allow_vpt=True, goal_init=tp.goal_init)
        kind = f"VPT weights (initialised {', '.join(initialised)}: {tp.goal_init})" if initialised else "STEVE-1 weights"
        log.info("start point: %s, %s, architecture %s", tp.in_weights, kind, architecture)
    else:
        log.info("start point: random init (seed %d), architecture %s", tp.seed, architecture)
    policy.value_head.requires_grad_(False)
    if tp.freeze:
        frozen = apply_freeze(policy, tp.freeze)
        log.info("train.freeze %s: %d parameter tensors frozen", tp.freeze, len(frozen))
    n_train = sum(p.numel() for p in policy.parameters() if p.requires_grad)
    n_all = sum(p.numel() for p in policy.parameters())
    log.info("parameters: %d trained, %d frozen (value head included)", n_train, n_all - n_train)
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
def validate(model, accelerator, loader: ChunkLoader, trunc_t: int, device,
             sets: Optional[ValSets] = None) -> dict[str, float]:
    """Val losses over the fixed val subset (epoch 0 every time), all processes together.

    ``all``: the mean loss per call (averaged over processes); with ``sets`` (two or more sets with
    val chunks, :mod:`steve1.train.val_sets`) it is the mean per chunk and call, and each set's
    name maps to the same mean over its own chunks.
    """
    model.eval()
    loader.load_state_dict({**loader.state_dict(), "epoch": 0, "step": 0})
    total, n, state = torch.zeros((), device=device), 0, None
    n_sets = len(sets.names) if sets is not None else 0
    set_sum, set_n = torch.zeros(n_sets, device=device), torch.zeros(n_sets, device=device)
    for batch in loader:
        inputs = to_model_inputs(batch, device)
        B = inputs["img"].shape[0]
        if state is None or state[0][1][0].shape[0] != B:  # a mixed validation's last batch may be partial
            state = _unwrap(model).net.recurrent_layer.initial_state(B, device)
        rows = None if sets is None else torch.as_tensor(sets.chunk_set[batch["index"].numpy()], device=device)
        for i in range(inputs["img"].shape[1] // trunc_t):
            call = call_slice(inputs, i, trunc_t)
            if rows is None:
                loss, state = model(call, reset_memory(state, call["first"][:, 0]))
                total, n = total + loss.float(), n + 1
            else:
                row_loss, state = model(call, reset_memory(state, call["first"][:, 0]), per_row=True)
                set_sum.index_add_(0, rows, row_loss.float())
                set_n.index_add_(0, rows, torch.ones_like(row_loss, dtype=torch.float32))
    model.train()
    if sets is None:
        mean = accelerator.gather(total.reshape(1) / max(n, 1)).mean()
        return {BEST_ON_ALL: float(mean.item())}  # host sync: once per validation
    sums = accelerator.reduce(torch.stack([set_sum, set_n]), reduction="sum").cpu()  # host sync: once
    out = {BEST_ON_ALL: float(sums[0].sum() / sums[1].sum().clamp(min=1))}
    out.update({name: float(sums[0, i] / sums[1, i]) for i, name in enumerate(sets.names) if sums[1, i] > 0})
    return out


def _unwrap(model) -> BCModule:
    return getattr(model, "module", model)


# ----------------------------------------------------------------------------- the run

@dataclass
class Run:
    """What the batch-end bookkeeping works with, built once by :func:`train` (the counters are a :class:`RunState`)."""

    params: Params
    accelerator: Any
    model: Any                              # the prepared BCModule (as is, DDP-wrapped or a DeepSpeed engine)
    optimizer: Any
    policy: AgentPolicy                     # the whole policy, whose weights are written
    loader: ChunkLoader
    val_loader: Optional[ChunkLoader]       # None when the sampling has no val chunks
    paths: RunLayout
    augment: AugmentParams                  # train.augment
    val_sets: Optional[ValSets] = None      # the val subset's sets when two or more have val chunks
    best_on: str = BEST_ON_ALL              # the validation loss that chooses best.weights (val_sets.best_criterion)
    live: Any = None                        # dvclive, main process only
    board: Any = None                       # TensorBoard writer, main process only and when train.tensorboard

    @property
    def tp(self) -> TrainParams:
        return self.params.train

    @property
    def device(self) -> torch.device:
        return self.accelerator.device


@dataclass
class LogWindow:
    """Sums since the last metrics row; the sums stay on the device until :func:`log_metrics` reads them."""

    loss_sum: torch.Tensor
    norm_sum: torch.Tensor
    frames: int                             # the frame counter when the window opened
    n_calls: int = 0
    n_norms: int = 0
    wait: float = 0.0                       # seconds spent waiting for the loader
    t0: float = field(default_factory=time.perf_counter)

    @classmethod
    def open(cls, device, frames: int, t0: Optional[float] = None) -> "LogWindow":
        zero = torch.zeros((), device=device)
        return cls(zero, torch.zeros_like(zero), frames, t0=time.perf_counter() if t0 is None else t0)


def policy_state_dict(accelerator, model, policy: AgentPolicy) -> dict[str, torch.Tensor]:
    """Full policy weights in the official key order, fp32 CPU (gathers ZeRO-3 shards: collective)."""
    trained = accelerator.get_state_dict(model)
    out = {}
    for key, value in policy.state_dict().items():
        v = trained.get(key, value) if trained is not None else value
        v = v.detach().to("cpu", copy=True)
        out[key] = v.float() if v.is_floating_point() else v
    return out


def _peak_memory_mb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _due(step: int, last: int, every: int) -> bool:
    return step // every > last // every


def train(params: Params, *, on_step=None) -> dict[str, Any]:
    """Train (or resume) the run's folder (``Layout.run``); returns the final summary.

    ``on_step(state)`` gets the :class:`RunState` as a dict at every batch end (tests use it to kill
    at a known point).
    """
    tp, layout = params.train, Layout.from_params(params)
    check_writable(layout.run.dir)
    sampling = Sampling.load(layout.sampling)
    best_criterion(tp.best_on, sampling, layout.sampling)  # before any work
    check_embed_dim(sampling, layout.episodes, layout.embeds, tp.mineclip_embed_dim)
    # one trainer per run folder: the main process holds the lock until it exits (before any write)
    lock = RunFolderLock(layout.run.dir) if int(os.environ.get("RANK", "0")) == 0 else None
    try:
        return _train(params, layout, sampling, on_step)
    finally:
        if lock is not None:
            lock.release()


def _train(params: Params, layout: Layout, sampling: Sampling, on_step) -> dict[str, Any]:
    tp, sampling_path = params.train, layout.sampling
    _log_data(params, sampling)
    run = setup_run(params, sampling)
    rs, memory, resuming = start_or_resume(run, config_fingerprint(params, inputs_digest(params, sampling, sampling_path)))
    open_outputs(run, rs, resuming, sampling_path)
    if not resuming:
        save(run, rs, memory, "start")  # so a failure at the first steps still leaves something to resume

    window, batches = LogWindow.open(run.device, rs.frames), _endless(run.loader)
    run.model.train()
    while rs.frames < tp.n_frames:
        t0 = time.perf_counter()
        batch = next(batches)
        window.wait += time.perf_counter() - t0
        memory = train_batch(run, rs, batch, memory, window)
        step, finished = rs.step, rs.frames >= tp.n_frames
        at_boundary = rs.micro % tp.grad_accum == 0  # no gradient pending: validate and checkpoint only here
        if finished or _due(step, rs.last_log_step, tp.log_every_steps):
            window = log_metrics(run, rs, window)
        val_every = tp.val_freq_begin if step < tp.val_freq_switch_steps else tp.val_freq
        if run.val_loader is not None and at_boundary and (finished or _due(step, rs.last_val_step, val_every)):
            validate_and_keep_best(run, rs)
        if tp.snapshot_every_frames and rs.frames >= rs.next_snapshot_frames:
            write_snapshot(run, rs)
        if at_boundary and (finished or _due(step, rs.last_ckpt_step, tp.checkpoint_every_steps)):
            checkpoint(run, rs, memory, window, "end" if finished else "periodic")
        if on_step is not None:
            on_step(rs.to_dict())
    return finish(run, rs)


def _endless(loader: ChunkLoader) -> Iterator[dict[str, torch.Tensor]]:
    """The loader's batches, epoch after epoch (each pass resumes at the loader's position; the
    sampler refuses an epoch without batches, so this never spins)."""
    while True:
        yield from loader


# ----------------------------------------------------------------------------- setup and teardown

def setup_run(params: Params, sampling: Sampling) -> Run:
    """Accelerator, start policy, prepared model + optimizer, train and val loaders."""
    tp = params.train
    accelerator = build_accelerator(tp)
    world, rank = accelerator.num_processes, accelerator.process_index
    policy = build_start_policy(tp)
    autocast = mixed_precision(tp) == "bf16" and tp.deepspeed != "none"
    module = BCModule(policy, tp.loss_reduction, autocast=autocast)
    optimizer = make_optimizer(module, params.learning_rate, tp.weight_decay)
    model, optimizer = accelerator.prepare(module, optimizer)
    policy.value_head.to(accelerator.device)

    layout = Layout.from_params(params)
    config = LoaderConfig.for_training(params, rank=rank, world_size=world)
    dirs = sampling.set_dirs(layout.episodes, layout.embeds)
    loader = make_dataloader(sampling, "train", config, dirs)
    val_chunks, val_sets = val_subset(sampling, tp.val_every_nth)
    val_loader = None
    if val_chunks:
        val_loader = make_dataloader(sampling.with_val_chunks(val_chunks), "val",
                                     config.for_validation(drop_last=val_sets is None), dirs)
    return Run(params, accelerator, model, optimizer, policy, loader, val_loader,
               layout.run, tp.augment, val_sets, best_criterion(tp.best_on, sampling, layout.sampling))


def start_or_resume(run: Run, fingerprint: str) -> tuple[RunState, list[BlockState], bool]:
    """Resume from the run's checkpoint when its fingerprint matches; else clear the run's old outputs.

    Returns (run state, recurrent memory, resuming).
    """
    tp, paths, accelerator = run.tp, run.paths, run.accelerator
    rs, memory = RunState(fingerprint=fingerprint, next_snapshot_frames=tp.snapshot_every_frames), None
    found = ckpt.find_checkpoint(paths.checkpoint)
    resuming = found is not None and ckpt.load_trainer_state(found).fingerprint == fingerprint
    if found is not None and not resuming and accelerator.is_main_process:
        log.warning("%s was made with other train params or other input data (fingerprint mismatch): removed it, "
                    "training starts afresh", found)
    if resuming:
        rs, memory = ckpt.load_checkpoint(accelerator, found, run.device)
        run.loader.load_state_dict({**rs.loader, "rank": accelerator.process_index})
        if accelerator.is_main_process and ckpt.restore_kept(found, paths.dvclive):
            log.info("training curves restored from %s up to step %d", found, rs.step)
        finished = " (already finished: writing its final outputs)" if rs.frames >= tp.n_frames else ""
        log.info("resumed %s at step %d (%d frames)%s", found, rs.step, rs.frames, finished)
    elif accelerator.is_main_process:
        ckpt.remove_checkpoint(paths.checkpoint)   # another run's state: never resumed, never handed back
        for stale in (paths.snapshots, paths.dvclive, paths.tensorboard, paths.latest, paths.best, paths.best_json):
            if stale.is_dir():
                shutil.rmtree(stale)
            elif stale.exists():
                stale.unlink()
    if accelerator.is_main_process:
        paths.snapshots.mkdir(parents=True, exist_ok=True)  # a declared output even when empty
    accelerator.wait_for_everyone()
    if memory is None:
        memory = run.policy.initial_state(tp.batch_size, run.device)
    return rs, memory, resuming


def open_outputs(run: Run, rs: RunState, resuming: bool, sampling_path: Path) -> None:
    """dvclive, TensorBoard and ``config.json`` (main process only)."""
    tp, accelerator = run.tp, run.accelerator
    if not accelerator.is_main_process:
        return
    run.live = _open_live(run.paths, rs.step, resuming)
    run.board = _open_tensorboard(run.paths, rs.step, resuming) if tp.tensorboard else None
    write_json_atomic(run.paths.config, {
        "params": nested(declared_values(run.params, "train")), "world_size": accelerator.num_processes,
        "fingerprint": rs.fingerprint,
        "deepspeed": None if tp.deepspeed == "none" else accelerator.state.deepspeed_plugin.deepspeed_config,
        "mixed_precision": mixed_precision(tp), "sampling": str(sampling_path)})


def finish(run: Run, rs: RunState) -> dict[str, Any]:
    """Final weights (also when a finished run is re-entered), best weights without a val split; the summary."""
    paths, accelerator = run.paths, run.accelerator
    final = policy_state_dict(accelerator, run.model, run.policy)
    if accelerator.is_main_process:
        save_policy_weights(final, paths.latest)
    if run.val_loader is None and accelerator.is_main_process:
        shutil.copyfile(paths.latest, paths.best)  # no val split: the final weights are the best we know
        write_json_atomic(paths.best_json, {"val_loss": None, "step": rs.step, "frames": rs.frames})
    if run.live is not None:
        run.live.end()
    if run.board is not None:
        run.board.close()
    accelerator.wait_for_everyone()
    summary = {k: getattr(rs, k) for k in ("step", "frames", "batches", "best_val_loss", "best_step")}
    accelerator.end_training()
    return summary


# ----------------------------------------------------------------------------- one batch

def train_batch(run: Run, rs: RunState, batch: Mapping[str, torch.Tensor], memory: list[BlockState],
                window: LogWindow) -> list[BlockState]:
    """Every trunc_t-frame call of one [B,T] batch; advances ``rs`` and ``window``; returns the carried memory."""
    tp, params, device = run.tp, run.params, run.device
    check_firsts(batch["firsts"], tp.trunc_t)  # CPU tensor: no device sync
    check_goal_width(batch["goal_embeds"], tp.mineclip_embed_dim)
    inputs = to_model_inputs(batch, device)
    # seeded by (seed, batch index): a resumed run draws the same augmentation at the same batch
    inputs["img"] = augment_frames(inputs["img"], run.augment, tp.seed, rs.batches)
    frames_per_call = tp.trunc_t * tp.batch_size * run.accelerator.num_processes
    for i in range(params.train_T // tp.trunc_t):
        call = call_slice(inputs, i, tp.trunc_t)
        set_lr(run.optimizer, lr_at(rs.frames, params.learning_rate, tp.warmup_frames, tp.n_frames))
        loss, grad_norm, memory = train_step(run.model, run.optimizer, run.accelerator, call,
                                             reset_memory(memory, call["first"][:, 0]), tp.max_grad_norm)
        rs.micro += 1
        rs.frames += frames_per_call
        window.loss_sum, window.n_calls = window.loss_sum + loss.float(), window.n_calls + 1
        if grad_norm is not None:
            rs.step += 1
            window.norm_sum = window.norm_sum + torch.as_tensor(grad_norm, device=device).float()
            window.n_norms += 1
    rs.batches += 1
    return memory


# ----------------------------------------------------------------------------- batch-end bookkeeping

def log_metrics(run: Run, rs: RunState, window: LogWindow) -> LogWindow:
    """One metrics row (dvclive, TensorBoard) over the window, after a finite check; returns a new window."""
    low, high = run.tp.grad_norm_bounds
    # host sync (and a small all-reduce: the loss of every process's rows) once per logging interval
    mean_loss = run.accelerator.reduce(window.loss_sum / max(window.n_calls, 1), reduction="mean").item()
    mean_norm = (window.norm_sum / max(window.n_norms, 1)).item()  # already global: clipping reduces over processes
    _check_finite(mean_loss, mean_norm, rs, run.paths)
    now = time.perf_counter()
    metrics = {"loss": mean_loss, "grad_norm": mean_norm, "lr": run.optimizer.param_groups[0]["lr"],
               "frames": rs.frames,
               "frames_per_s": (rs.frames - window.frames) / max(now - window.t0, 1e-9),
               "data_wait_share": window.wait / max(now - window.t0, 1e-9), "peak_memory_mb": _peak_memory_mb(run.device),
               "grad_norm_out_of_range": float(not low <= mean_norm <= high)}
    if run.accelerator.is_main_process and metrics["grad_norm_out_of_range"]:
        log.warning("step %d: gradient norm %.3g is outside the expected [%g, %g] (train.grad_norm_range)",
                    rs.step, mean_norm, low, high)
    _log(run.live, run.board, rs.step, metrics)
    rs.last_log_step = rs.step
    return LogWindow.open(run.device, rs.frames, t0=now)


def validate_and_keep_best(run: Run, rs: RunState) -> None:
    """Validation losses logged (``val_loss``, and ``val/<set>/loss`` per set); a non-finite one stops the run;
    a new best of ``run.best_on``'s loss (``rs.best_val_loss``) writes ``best.weights`` + ``best.json``."""
    step = rs.step
    losses = validate(run.model, run.accelerator, run.val_loader, run.tp.trunc_t, run.device, run.val_sets)
    rs.last_val_step = step
    val_loss = losses[BEST_ON_ALL]
    per_set = {name: loss for name, loss in losses.items() if name != BEST_ON_ALL}
    _log(run.live, run.board, step, {"val_loss": val_loss, **{f"val/{name}/loss": v for name, v in per_set.items()}})
    for name, loss in losses.items():
        if not math.isfinite(loss):
            of = "" if name == BEST_ON_ALL else f" on set {name!r}"
            raise NonFiniteLossError(f"validation loss{of} is {loss} at step {step}; {_resume_hint(run.paths)}")
    score = improves(losses, run.best_on, rs.best_val_loss)
    if score is not None:
        rs.best_val_loss, rs.best_step = score, step
        sd = policy_state_dict(run.accelerator, run.model, run.policy)
        if run.accelerator.is_main_process:
            save_policy_weights(sd, run.paths.best)
            extra = {"best_on": run.best_on, "val_losses": per_set} if per_set else {}
            write_json_atomic(run.paths.best_json, {"val_loss": val_loss, "step": step, "frames": rs.frames, **extra})


def write_snapshot(run: Run, rs: RunState) -> None:
    """``snapshots/<frames>.weights``; the next one is due ``train.snapshot_every_frames`` later."""
    sd = policy_state_dict(run.accelerator, run.model, run.policy)
    if run.accelerator.is_main_process:
        save_policy_weights(sd, run.paths.snapshot(rs.frames))
    while rs.next_snapshot_frames <= rs.frames:
        rs.next_snapshot_frames += run.tp.snapshot_every_frames


def checkpoint(run: Run, rs: RunState, memory: list[BlockState], window: LogWindow, reason: str) -> None:
    """A finite check of the steps not yet logged, then :func:`save`: never checkpoint weights that saw a NaN."""
    pending = (window.loss_sum.sum() + window.norm_sum.sum()).item()  # host sync: once per checkpoint
    _check_finite(pending, 0.0, rs, run.paths)
    rs.last_ckpt_step = rs.step
    save(run, rs, memory, reason)


def save(run: Run, rs: RunState, memory: list[BlockState], reason: str) -> None:
    """A resumable checkpoint (collective) and ``latest.weights``."""
    rs.loader = run.loader.state_dict()
    path = ckpt.save_checkpoint(run.accelerator, run.paths.checkpoint, rs, memory, keep=(run.paths.dvclive,))
    sd = policy_state_dict(run.accelerator, run.model, run.policy)
    if run.accelerator.is_main_process:
        save_policy_weights(sd, run.paths.latest)
        log.info("checkpoint (%s) at step %d, %d frames -> %s", reason, rs.step, rs.frames, path)


def _resume_hint(paths: RunLayout) -> str:
    found = ckpt.find_checkpoint(paths.checkpoint)
    if found is None:
        return "no checkpoint was written"
    st = ckpt.load_trainer_state(found)
    return (f"stopped without saving; the last good checkpoint is {found} (step {st.step}, {st.frames} frames): "
            f"fix the cause (data, learning_rate) and rerun to resume from it")


def _check_finite(loss: float, norm: float, rs: RunState, paths: RunLayout) -> None:
    if not (math.isfinite(loss) and math.isfinite(norm)):
        raise NonFiniteLossError(f"non-finite training loss/gradient norm (loss {loss}, grad norm {norm}) in the steps "
                                 f"after step {rs.last_log_step} (now step {rs.step}); "
                                 f"{_resume_hint(paths)}")


def _open_live(run: RunLayout, step: int, resuming: bool):
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


def _open_tensorboard(run: RunLayout, step: int, resuming: bool):
    """A SummaryWriter under ``<run>/dvclive/tensorboard``; on resume, events logged after the checkpoint are purged."""
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
