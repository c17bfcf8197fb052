"""Offline evaluation of a STEVE-1 policy on the validation chunks (no Minecraft needed).

Per step, over every evaluated chunk, with the true hindsight goal:

* ``nll_buttons``, ``nll_camera``, ``nll`` (their sum): negative log-likelihood of the recorded
  actions under the policy's log-probs (after the pi-head temperature, as in training);
* ``acc_buttons``, ``acc_camera``, ``acc_joint``: the argmax equals the recorded action;
* ``camera_bin_error_pitch`` / ``_yaw`` / ``camera_bin_error`` (their mean): absolute distance in
  camera bins (0..10 per axis) between the argmax camera index and the recorded one;
* goal sensitivity: ``kl_other_goal`` = KL(pi(.|true goal) || pi(.|a goal from another episode))
  and ``kl_null_goal`` = KL(pi(.|true goal) || pi(.|zero goal)), summed over the two heads, plus
  the NLL under those goals (``nll_other_goal``, ``nll_null_goal``);
* ``guided.s<scale>``: the same action metrics under classifier-free guidance
  ``(1+s)·logp_cond − s·logp_null`` for each ``cond_scale``.

Guided log-probs are **renormalised** (``log_softmax`` of the mixed log-probs) before the NLL is
read. The official ``act`` does not renormalise because it only samples (argmax and Gumbel-max are
unchanged by an additive constant), but an unnormalised "NLL" is not a likelihood: it can be
negative and is not comparable across scales or with the unguided NLL. Accuracy and bin error are
unaffected. ``log_normalizer`` (mean over steps of the summed per-head logsumexp of the mixed
log-probs) is reported too, so the official unnormalised value is ``-(nll - log_normalizer)``.

Each chunk runs through the recurrent policy in order, in calls of ``call_t`` frames with the
state carried and ``first`` set at the chunk's first frame only (the training convention);
chunked calls equal one long call. The true-goal, zero-goal and other-goal rows share the frames
and run as one ``3B`` batch.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np
import torch

from steve1.actions import N_CAMERA_BINS
from steve1 import headline
from steve1.data import formats
from steve1.data.dataset import LoaderConfig, make_dataloader
from steve1.data.episodes import read_embeds
from steve1.data.sampling import Sampling, episode_files, split_key
from steve1.devices import resolve_device
from steve1.errors import MissingInputError, UserError
from steve1.io import sha256_file, write_json_atomic
from steve1.layout import EVAL_PLOT_CHUNKS as PLOT_CHUNKS, EVAL_PLOT_SETS as PLOT_SETS, EVAL_PLOT_SWEEP as PLOT_SWEEP, Layout
from steve1.models.build import build_policy_for_params
from steve1.models.checkpoints import load_policy_weights
from steve1.models.policy import ACTION_KEYS, guide
from steve1.models.vpt import AgentPolicy
from steve1.params import Params, TrainParams

log = logging.getLogger(__name__)

COUNT_KEYS = ("n_chunks", "n_steps")

Pd = Mapping[str, torch.Tensor]  # {"camera": [B,T,1,121], "buttons": [B,T,1,8641]} log-probs


class EvalInputError(UserError, ValueError):
    """The evaluate stage's inputs (sampling, embeds, weights, device) cannot give metrics; the message says which."""


# ----------------------------------------------------------------------------- pure per-step metrics

def step_metrics(pd: Pd, action: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per-step metrics of ``pd`` (log-probs [B,T,1,N]) against int actions [B,T]; each value [B,T] float."""
    out: dict[str, torch.Tensor] = {}
    argmax = {}
    for key in ACTION_KEYS:
        logp = pd[key][..., 0, :]  # [B,T,1,N] -> [B,T,N]
        a = action[key].long()
        out[f"nll_{key}"] = -logp.gather(-1, a.unsqueeze(-1)).squeeze(-1)  # [B,T]
        argmax[key] = logp.argmax(-1)
        out[f"acc_{key}"] = (argmax[key] == a).float()
    out["nll"] = out["nll_buttons"] + out["nll_camera"]
    out["acc_joint"] = out["acc_buttons"] * out["acc_camera"]
    pred, true = argmax["camera"], action["camera"].long()
    out["camera_bin_error_pitch"] = (pred // N_CAMERA_BINS - true // N_CAMERA_BINS).abs().float()
    out["camera_bin_error_yaw"] = (pred % N_CAMERA_BINS - true % N_CAMERA_BINS).abs().float()
    out["camera_bin_error"] = (out["camera_bin_error_pitch"] + out["camera_bin_error_yaw"]) / 2
    return out


def kl_divergence(p: Pd, q: Pd) -> torch.Tensor:
    """KL(p || q) per step, summed over the two heads (log-probs [B,T,1,N] -> [B,T])."""
    total = 0
    for key in ACTION_KEYS:
        lp, lq = p[key][..., 0, :], q[key][..., 0, :]
        total = total + (lp.exp() * (lp - lq)).sum(-1)
    return total


def renormalize(pd: Pd) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """``log_softmax`` of (guided) log-probs and the per-step log normaliser summed over heads [B,T]."""
    out, log_z = {}, 0
    for key in ACTION_KEYS:
        z = pd[key].logsumexp(-1, keepdim=True)  # [B,T,1,1]
        out[key] = pd[key] - z
        log_z = log_z + z[..., 0, 0]
    return out, log_z


def scale_key(scale: float) -> str:
    """``cond_scale`` -> metrics key without dots (DVC flattens nested keys with dots): 6 -> s6, 0.5 -> s0p5."""
    return "s" + f"{scale:g}".replace(".", "p").replace("-", "m")


# ----------------------------------------------------------------------------- accumulation

@dataclass
class _Sums:
    """Float64 running sums of [B,T] step metrics (on the device: no host sync per call)."""

    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    n: int = 0

    def add(self, values: Mapping[str, torch.Tensor], prefix: str = "") -> None:
        for k, v in values.items():
            s = v.double().sum()
            self.sums[prefix + k] = self.sums[prefix + k] + s if prefix + k in self.sums else s

    def means(self) -> dict[str, float]:
        return {k: float(v.item()) / max(self.n, 1) for k, v in self.sums.items()}


@torch.no_grad()
def evaluate_batch(policy: AgentPolicy, batch: Mapping[str, torch.Tensor], cond_scales: Sequence[float],
                   call_t: int, sums: _Sums) -> tuple[torch.Tensor, torch.Tensor]:
    """Run one batch of chunks through ``policy``, add its step metrics to ``sums``; return the
    per-chunk mean NLL and joint accuracy, each [B] (true goal).

    ``batch``: ``frames`` uint8 [B,T,128,128,3], ``goal_embeds`` [B,T,512] (true hindsight goals),
    ``buttons``/``camera`` int [B,T], optionally ``other_goal`` [B,512] (a goal from another
    episode, held for the whole chunk). All on the policy's device.
    """
    frames, goals = batch["frames"], batch["goal_embeds"]
    B, T = frames.shape[:2]
    other = batch.get("other_goal")
    n_rows = 3 if other is not None else 2
    state = policy.initial_state(n_rows * B, device=frames.device)
    chunk_nll = torch.zeros(B, dtype=torch.float64, device=frames.device)
    chunk_acc = torch.zeros(B, dtype=torch.float64, device=frames.device)
    for s in range(0, T, call_t):
        sl = slice(s, min(s + call_t, T))
        t = sl.stop - sl.start
        g = goals[:, sl].float()
        embeds = [g, torch.zeros_like(g)]
        if other is not None:
            embeds.append(other.float()[:, None].expand(B, t, other.shape[-1]))
        obs = {"img": frames[:, sl].repeat(n_rows, 1, 1, 1, 1), "mineclip_embed": torch.cat(embeds)}  # [nB,t,...]
        first = torch.zeros(n_rows * B, t, dtype=torch.bool, device=frames.device)
        first[:, 0] = s == 0  # only the chunk's first call resets memory
        pd, _, state = policy(obs, first, state)  # pd[k]: [nB,t,1,N]
        rows = [{k: v[i * B:(i + 1) * B] for k, v in pd.items()} for i in range(n_rows)]
        cond, null = rows[0], rows[1]
        action = {"buttons": batch["buttons"][:, sl], "camera": batch["camera"][:, sl]}
        m = step_metrics(cond, action)
        sums.add(m)
        chunk_nll += m["nll"].double().sum(1)
        chunk_acc += m["acc_joint"].double().sum(1)
        sums.add({"kl_null_goal": kl_divergence(cond, null), "nll_null_goal": step_metrics(null, action)["nll"]})
        if other is not None:
            sums.add({"kl_other_goal": kl_divergence(cond, rows[2]),
                      "nll_other_goal": step_metrics(rows[2], action)["nll"]})
        for scale in cond_scales:
            guided, log_z = renormalize(guide(cond, null, scale))
            sums.add({**step_metrics(guided, action), "log_normalizer": log_z}, prefix=f"{scale_key(scale)}/")
        sums.n += B * t
    return chunk_nll / T, chunk_acc / T


def summarize(means: Mapping[str, float], cond_scales: Sequence[float], n_chunks: int, n_steps: int) -> dict[str, Any]:
    """Flat sums -> the metrics document: top-level step/goal metrics and ``guided.<s>`` blocks."""
    out: dict[str, Any] = {k: v for k, v in means.items() if "/" not in k}
    out["guided"] = {scale_key(s): {k.split("/", 1)[1]: v for k, v in means.items()
                                    if k.startswith(scale_key(s) + "/")} for s in cond_scales}
    out.update(n_chunks=n_chunks, n_steps=n_steps)
    return out


def evaluate_policies(policies: Mapping[str, AgentPolicy], batches: Iterable[Mapping[str, torch.Tensor]], *,
                      cond_scales: Sequence[float], call_t: int, device: torch.device | str = "cpu"
                      ) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """Score every policy on the same batches (each batch is read once).

    Returns ``(metrics by policy name, per-chunk rows)``; a row has ``chunk`` (running index),
    ``index`` (the chunk's index in the evaluated list when the batch carries it) and
    ``nll_<name>``, ``acc_<name>`` (joint accuracy) for each policy.
    """
    if call_t < 1:
        raise ValueError(f"call_t must be >= 1, got {call_t}")
    sums = {name: _Sums() for name in policies}
    rows: list[dict[str, Any]] = []
    was_training = {name: p.training for name, p in policies.items()}
    for p in policies.values():
        p.eval()
    try:
        for batch in batches:
            batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            per_chunk = {name: [v.cpu() for v in evaluate_batch(p, batch, cond_scales, call_t, sums[name])]
                          for name, p in policies.items()}  # host sync once per batch
            index = batch.get("index")
            for b in range(batch["frames"].shape[0]):
                row = {"chunk": len(rows)}
                if index is not None:
                    row["index"] = int(index[b])
                if "episode" in batch:
                    row["episode"], row["start"] = batch["episode"][b], int(batch["start"][b])
                for name, (nll, acc) in per_chunk.items():
                    row.update({f"nll_{name}": float(nll[b]), f"acc_{name}": float(acc[b])})
                rows.append(row)
    finally:
        for name, p in policies.items():
            p.train(was_training[name])
    if not rows:
        raise EvalInputError("no chunks to evaluate: the validation split is empty (sample.val_frames > 0?)")
    n_steps = next(iter(sums.values())).n
    metrics = {name: summarize(s.means(), cond_scales, len(rows), n_steps) for name, s in sums.items()}
    return metrics, rows


def per_set(rows: Sequence[Mapping[str, Any]], policies: Sequence[str]) -> dict[str, dict[str, Any]]:
    """NLL and joint accuracy of each sampling set (``main`` and every ``sample.mix`` set) from the
    per-chunk rows: forgetting on the original data and gain on the new one are separate numbers.
    Chunks have one length, so the mean over a set's chunks is its per-step mean."""
    by_set: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        by_set.setdefault(split_key(row["episode"])[0], []).append(row)
    out = {}
    for name, chunk_rows in sorted(by_set.items()):
        entry: dict[str, Any] = {"n_chunks": len(chunk_rows)}
        for policy in policies:
            prefix = "" if policy == "model" else f"{policy}_"
            for metric in ("nll", "acc"):
                entry[f"{prefix}{metric}"] = float(np.mean([r[f"{metric}_{policy}"] for r in chunk_rows]))
        if "baseline" in policies:
            entry["delta_nll"] = entry["nll"] - entry["baseline_nll"]
            entry["delta_acc"] = entry["acc"] - entry["baseline_acc"]
        out[name] = entry
    return out


def deltas(model: Mapping[str, Any], baseline: Mapping[str, Any]) -> dict[str, Any]:
    """``model - baseline`` for every numeric leaf present in both (counts excluded)."""
    out: dict[str, Any] = {}
    for k, v in model.items():
        if k in COUNT_KEYS or k not in baseline:
            continue
        if isinstance(v, Mapping):
            out[k] = deltas(v, baseline[k])
        elif isinstance(v, (int, float)) and isinstance(baseline[k], (int, float)):
            out[k] = v - baseline[k]
    return out


def check_finite(metrics: Mapping[str, Any], where: str = "") -> None:
    """Refuse to write NaN/inf metrics (a bad embedding row or weights file would otherwise pass silently)."""
    for k, v in metrics.items():
        if isinstance(v, Mapping):
            check_finite(v, f"{where}{k}.")
        elif isinstance(v, float) and not math.isfinite(v):
            raise EvalInputError(f"metric {where}{k} is {v}: non-finite log-probs (check the weights and the embeds files)")


# ----------------------------------------------------------------------------- validation data

def eval_chunks(sampling: Sampling, every_nth: int, max_chunks: Optional[int]) -> list[tuple[str, int, int]]:
    """The val chunks evaluated: every ``every_nth`` in file order, at most ``max_chunks``."""
    chunks = sampling.chunks("val")[::every_nth]
    return chunks[:max_chunks] if max_chunks is not None else chunks


def other_episode_goals(chunks: Sequence[tuple[str, int, int]], lengths: Mapping[str, int], val_episodes: Sequence[str],
                        dirs: Mapping[str, tuple[Path, Path]], seed: int) -> Optional[np.ndarray]:
    """One goal per chunk from a *different* episode: float32 [n_chunks, D], or None with one episode.

    The episode is drawn (seeded per chunk) among the other val episodes, or among all other
    episodes of the sampling when val has only one; the row is a random valid window (>= 15).
    """
    episodes = sorted(lengths)
    pick: list[tuple[str, int]] = []
    for i, (eid, _, _) in enumerate(chunks):
        pool = [e for e in sorted(val_episodes) if e != eid] or [e for e in episodes if e != eid]
        if not pool:
            return None
        rng = np.random.default_rng([seed, i])
        other = pool[int(rng.integers(len(pool)))]
        pick.append((other, int(rng.integers(formats.NONE_EMBED_OFFSET, int(lengths[other])))))
    out: Optional[np.ndarray] = None
    for eid in sorted({e for e, _ in pick}):
        _, emb_path = episode_files(eid, dirs)
        embeds, valid, _ = read_embeds(emb_path)
        if out is None:
            out = np.empty((len(chunks), embeds.shape[1]), np.float32)   # [n_chunks, D]
        for i, (e, t) in enumerate(pick):
            if e == eid:
                if not valid[t]:
                    raise EvalInputError(f"{emb_path}: embedding row {t} is marked invalid")
                out[i] = embeds[t]
    return out


def val_batches(sampling: Sampling, chunks: Sequence[tuple[str, int, int]], episodes_dir: str | Path,
                embeds_dir: str | Path, *, batch_size: int, seed: int, gap_dist: str = "uniform",
                official_goal_lag: bool = False, other_goals: Optional[np.ndarray] = None
                ) -> Iterable[dict[str, Any]]:
    """Batches of the evaluated chunks in order, with seeded hindsight goals and no zero-goal chunks
    (``p_uncond=0``: the null goal is scored separately)."""
    config = LoaderConfig(batch_size=batch_size, seed=seed, p_uncond=0.0, gap_dist=gap_dist,
                          official_goal_lag=official_goal_lag, shuffle=False, drop_last=False)
    loader = make_dataloader(sampling.with_val_chunks(chunks), "val", config,
                             sampling.set_dirs(episodes_dir, embeds_dir))
    for batch in loader:
        idx = batch["index"].numpy()
        out = {k: batch[k] for k in ("frames", "goal_embeds", "buttons", "camera", "index")}
        out["episode"] = [chunks[i][0] for i in idx]
        out["start"] = [chunks[i][1] for i in idx]
        if other_goals is not None:
            out["other_goal"] = torch.from_numpy(other_goals[idx])
        yield out


# ----------------------------------------------------------------------------- the stage's work

def build_eval_policy(train_params: TrainParams) -> AgentPolicy:
    """An untrained policy with the train run's architecture: the trainer's own builder, so a run's
    weights always fit (``in_weights`` is not loaded; gradient checkpointing is off for inference)."""
    return build_policy_for_params(train_params, gradient_checkpointing=False)


def weights_path(params: Params) -> Path:
    """``evaluate.weights``, or the run's ``evaluate.checkpoint`` weights (``Layout.eval_weights``)."""
    return Path(params.evaluate.weights) if params.evaluate.weights else Layout.from_params(params).eval_weights


def run_offline_eval(params: Params) -> dict[str, Any]:
    """Score the trained weights (and ``evaluate.baseline_weights``) on the val chunks; write
    ``Layout.eval_metrics``, ``Layout.eval_offline`` and the dvclive plots. Returns the metrics."""
    e, tp, layout = params.evaluate, params.train, Layout.from_params(params)
    device = resolve_device(e.device, "evaluate.device")
    torch.manual_seed(e.seed)
    sampling_path = layout.sampling
    sampling = Sampling.load(sampling_path)
    chunks = eval_chunks(sampling, e.every_nth, e.max_chunks)
    if not chunks:
        raise EvalInputError(f"{sampling_path}: the val split has no chunks (set sample.val_frames > 0 and re-run sample)")

    wpath = weights_path(params)
    if not wpath.is_file():
        raise MissingInputError(f"{wpath}: weights not found (run the train stage, or set evaluate.weights)")
    policies = {"model": build_eval_policy(tp)}
    load_policy_weights(policies["model"], wpath, allow_vpt=False)
    run_info: dict[str, Any] = {"weights": str(wpath), "weights_sha256": sha256_file(wpath),
                                "sampling": str(sampling_path), "evaluate": e.model_dump(mode="json"),
                                "architecture": tp.in_model or tp.preset, "device": str(device)}
    if e.baseline_weights:
        bpath = Path(e.baseline_weights)
        if not bpath.is_file():
            raise MissingInputError(f"{bpath}: evaluate.baseline_weights not found")
        policies["baseline"] = build_eval_policy(tp)
        # a VPT file has no goal layer: zeroing it makes the baseline exactly the VPT policy
        initialised = load_policy_weights(policies["baseline"], bpath, allow_vpt=True, goal_init="zeros")
        if initialised:
            log.info("%s has no goal layer (VPT weights): %s set to zero", bpath, ", ".join(initialised))
        run_info.update(baseline_weights=str(bpath), baseline_sha256=sha256_file(bpath),
                        baseline_goal_layer_zeroed=bool(initialised))
    for p in policies.values():
        p.to(device)

    dirs = sampling.set_dirs(layout.episodes, layout.embeds)
    other = other_episode_goals(chunks, sampling.lengths, sampling.val, dirs, e.seed)
    if other is None:
        log.warning("only one episode in %s: no goal from another episode, kl_other_goal is not reported", sampling_path)
    call_t = e.call_t or tp.trunc_t
    batches = val_batches(sampling, chunks, layout.episodes, layout.embeds, batch_size=e.batch_size,
                          seed=e.seed, gap_dist=tp.gap_dist, official_goal_lag=tp.official_goal_lag, other_goals=other)
    by_policy, rows = evaluate_policies(policies, batches, cond_scales=e.cond_scales, call_t=call_t, device=device)

    metrics = dict(by_policy["model"])
    if "baseline" in by_policy:
        metrics["baseline"] = {k: v for k, v in by_policy["baseline"].items() if k not in COUNT_KEYS}
        metrics["delta"] = deltas(by_policy["model"], by_policy["baseline"])
    if sampling.sets is not None:   # a mixed sampling: each set's own before/after
        metrics["sets"] = per_set(rows, list(policies))
    check_finite(metrics)
    write_outputs(layout, metrics, by_policy, rows, e.cond_scales, run_info)
    log.info("offline eval of %s on %d chunks (%d steps): nll %.4f, acc_joint %.3f, kl_null_goal %.4g",
             wpath, metrics["n_chunks"], metrics["n_steps"], metrics["nll"], metrics["acc_joint"], metrics["kl_null_goal"])
    return metrics


def write_outputs(layout: Layout, metrics: Mapping[str, Any], by_policy: Mapping[str, Mapping[str, Any]],
                  rows: Sequence[Mapping[str, Any]], cond_scales: Sequence[float], run_info: Mapping[str, Any]) -> None:
    """dvclive custom plots (``Layout.eval_plots``), then ``Layout.eval_offline`` (what was scored and every
    metric) and ``Layout.eval_metrics`` (the headline figures, :func:`steve1.headline.evaluate`)."""
    from dvclive import Live  # heavy import, only for the stage

    sweep = []
    for s in cond_scales:
        point = {"cond_scale": float(s)}
        for name, m in by_policy.items():
            suffix = "" if name == "model" else f"_{name}"
            point.update({f"{k}{suffix}": v for k, v in m["guided"][scale_key(s)].items()})
        sweep.append(point)
    chunk_rows = [{("nll" if k == "nll_model" else k): v for k, v in r.items()} for r in rows]
    # Live() clears plots/custom and metrics.json in out_dir (not rollouts/ or other files)
    live = Live(dir=str(layout.eval), report=None, dvcyaml=None, save_dvc_exp=False)
    live.log_plot(PLOT_SWEEP, sweep, x="cond_scale", y="nll", title="guided NLL (renormalised) vs cond_scale")
    live.log_plot(PLOT_CHUNKS, chunk_rows, x="chunk", y="nll", title="per-chunk NLL (true goal)")
    bars = [{"set_policy": f"{name}: {policy}", "nll": entry[f"{prefix}nll"]}
            for name, entry in per_set(rows, list(by_policy)).items()
            for policy, prefix in (("model", ""), ("baseline", "baseline_")) if f"{prefix}nll" in entry]
    live.log_plot(PLOT_SETS, bars, x="nll", y="set_policy", template="bar_horizontal",
                  title="NLL per dataset (true goal): model vs baseline")
    # the detail (every metric, guided blocks, baseline and deltas) goes to the report, the headline to DVC metrics
    write_json_atomic(layout.eval_offline, {**run_info, "metrics": dict(metrics)})
    write_json_atomic(layout.eval_metrics, headline.evaluate(metrics, [(p["cond_scale"], p["nll"]) for p in sweep]))
