"""Rollouts of a goal-conditioned agent with STEVE-1's programmatic metrics (the ``rollout`` stage).

Setup as the official ``run_agent.py``: ``HumanSurvival`` with VPT's env settings
(:data:`steve1.play.envs.ENV_KWARGS`: 640x360, fov 70, gamma 2, gui scale 1, cursor 16), the 11 paper
text prompts (:data:`PAPER_TEXT_PROMPTS`) turned into goals by the prior, classifier-free guidance
scale 6 for text and 7 for visual prompts. Each prompt runs ``n_episodes`` episodes of ``steps``
steps; episode ``i`` uses world seed ``seed + i`` for every prompt, so prompts are compared on
the same worlds. The official code calls ``env.seed`` *after* ``reset`` (which MineRL applies
only to the next reset); we seed before reset as MineRL documents.

``rollout.env`` picks MineRL or the deterministic stand-in world (:mod:`steve1.play.envs`); the env is
made first, so a missing MineRL stops the stage before any model is loaded, and every output names
the env (results, the metrics key, the video banner).

MineRL dies unpredictably, mostly on repeated env creation (the official scripts restart the
whole program in a shell loop). Here a worker's one env is reused across its episodes; an exception
from ``make``/``seed``/``reset``/``step`` closes it, a new one is made and the episode is retried from
scratch, at most ``max_retries`` times; every crash is recorded in the results. Exceptions
raised by the agent are bugs and propagate.

Episodes run through the engine's executor (``engine: local | ray``, :mod:`steve1.engine`): one per
unit of work, played by a worker holding one env and the agent (:mod:`steve1.play.worker`; on Ray an
actor per worker, ``ray.rollout``, loading the policy once). Nothing carries from one episode to the next: the
world is seeded by the episode's seed before reset, and the agent's memory and sampler are reset with
that same seed (retried attempts included), so which worker plays an episode, and what it played
before, changes no byte. This process alone writes the results, metrics and plots, in prompt order.

Outputs (:class:`steve1.layout.RolloutLayout`): ``results.json`` (per episode and per prompt with
confidence intervals; only what params and inputs determine, timings go to the log), one mp4 per
episode, ``metrics.json`` (each targeted prompt's mean of its metric, under the env's name) and
``plots/<metric>.json`` (per-prompt means with their interval, one DVC plot per metric).
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import math
import time
import traceback
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Protocol, Sequence

import cv2
import numpy as np

from steve1.devices import resolve_device
from steve1.engine import Executor, LocalExecutor, Lost, open_executor
from steve1.errors import UserError
from steve1.eval.programmatic import METRICS, ProgrammaticTracker, aggregate
from steve1.io import atomic_path, remove_stale_temps, write_json_atomic
from steve1.layout import Layout, RolloutLayout
from steve1.params import Params, ParamsError, RolloutParams, describe_invalid
from steve1.play.envs import (ENV_KWARGS, EnvCrash, EnvFactory, EnvSlot, closed_on_error, env_call, env_label,
                              make_minerl_env)
from steve1.play.envs import env_factory as make_env_factory
from steve1.play.worker import (SeededPolicy, Worker, driver_env, play_all, start_episode, world_seed,
                                worker_setup)

__all__ = ["ENV_KWARGS", "PAPER_TEXT_PROMPTS", "make_minerl_env", "rollouts_from_params", "run_rollouts"]

log = logging.getLogger(__name__)

RESULTS_FORMAT_VERSION = 3      # 3: per-episode agent seeds, a failed episode's reason, no envs_created

# official steve1/run_agent/paper_prompts.py
PAPER_TEXT_PROMPTS: dict[str, str] = {
    "dig": "dig as far as possible",
    "dirt": "get dirt, dig hole, dig dirt, gather a ton of dirt, collect dirt",
    "sky": "look at the sky",
    "leaves": "break leaves",
    "wood": "chop down the tree, gather wood, pick up wood, chop it down, break tree",
    "seeds": "break tall grass, break grass, collect seeds, punch the ground, run around in circles getting seeds from bushes",
    "flower": "break a flower",
    "explore": "go explore",
    "swim": "go swimming",
    "underwater": "go underwater",
    "inventory": "open inventory",
}
VISUAL_SUFFIX = "_visual"      # metrics key of a visual prompt: <name>_visual
BANNER_H = 40   # pixels of the prompt banner stacked above each video frame
STANDIN_SPEC = "steve1.eval.standin_env.StandInEnv"   # the stand-in's name in results (kept from its first home)


class RolloutError(UserError, RuntimeError):
    """A rollout cannot start: no weights, unreadable prompt file, goal width mismatch, video writer failure."""


class Agent(Protocol):
    """What the loop needs from an agent: a reset per episode and one action per frame."""

    def reset(self, seed: int) -> None:
        """Forget the last episode: empty memory, and a sampler seeded with the episode's ``seed``."""
        ...

    def act(self, pov: np.ndarray, goal_embed: np.ndarray, cond_scale: float) -> dict[str, Any]:
        """``pov`` uint8 [H,W,3] RGB (the env's), ``goal_embed`` float32 [D] -> a MineRL env action dict."""
        ...


@dataclass
class Prompt:
    """One conditioning: its goal embedding and the guidance scale it runs with."""

    name: str
    kind: str                      # "text" | "visual"
    text: str                      # the instruction, or the visual goal's file for visual prompts
    goal: np.ndarray               # float32 [D]
    cond_scale: float

    @property
    def key(self) -> str:
        """Its name in aggregates: ``text:<name>`` / ``visual:<name>``."""
        return f"{self.kind}:{self.name}"

    @property
    def label(self) -> str:
        return f"{self.text!r} ({self.kind}, scale {self.cond_scale:g})" if self.kind == "text" else \
            f"{self.name} (visual, scale {self.cond_scale:g})"


# ---------------------------------------------------------------- prompts

def text_prompts(prompts: Mapping[str, str], text_to_goal: Callable[[str], np.ndarray],
                 cond_scale: float = RolloutParams().text_cond_scale, dim: Optional[int] = None) -> list[Prompt]:
    """Text prompts with goals from ``text_to_goal`` (MineCLIP text tower + prior)."""
    return [Prompt(name, "text", text, _goal(text_to_goal(text), name, dim), cond_scale)
            for name, text in prompts.items()]


def visual_prompts(files: Mapping[str, str], cond_scale: float = RolloutParams().visual_cond_scale,
                   dim: Optional[int] = None) -> list[Prompt]:
    """Visual prompts: each a ``.npy`` file holding a MineCLIP visual embedding ([D] or [1,D])."""
    out = []
    for name, path in files.items():
        try:
            goal = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise RolloutError(f"visual prompt {name!r}: cannot read {path}: {exc}") from None
        out.append(Prompt(name, "visual", str(path), _goal(goal, f"{name} ({path})", dim), cond_scale))
    return out


def visual_prompts_from(source: str | Path, cond_scale: float = RolloutParams().visual_cond_scale,
                        dim: Optional[int] = None) -> list[Prompt]:
    """Every ``<name>.npy`` / ``<name>.pkl`` in a folder or a ``.zip`` (STEVE-1's visual_prompt_embeds.zip
    holds ``visual_prompt_embeds/<name>.pkl``), sorted by name. Pickles are read by a numpy-only unpickler."""
    from steve1.unpickle import UnsafePickleError, load_numpy_pickle

    source = Path(source)
    members: dict[str, tuple[str, bytes]] = {}
    if source.is_dir():
        for p in sorted(source.rglob("*")):
            if p.suffix in (".npy", ".pkl") and not p.name.startswith("."):
                members.setdefault(p.stem, (str(p), p.read_bytes()))
    elif source.is_file() and zipfile.is_zipfile(source):
        with zipfile.ZipFile(source) as z:
            for info in sorted(z.infolist(), key=lambda i: i.filename):
                p = Path(info.filename)
                if p.suffix in (".npy", ".pkl") and not p.name.startswith(".") and "__MACOSX" not in p.parts:
                    members.setdefault(p.stem, (f"{source}:{info.filename}", z.read(info)))
    else:
        raise RolloutError(f"rollout.visual_prompts_from: {source} is neither a folder nor a .zip file "
                           f"(STEVE-1's visual_prompt_embeds.zip: add it to weights.files)")
    if not members:
        raise RolloutError(f"rollout.visual_prompts_from: {source} holds no <name>.npy or <name>.pkl goal")
    out = []
    for name, (where, data) in sorted(members.items()):
        try:
            goal = np.load(io.BytesIO(data), allow_pickle=False) if where.endswith(".npy") \
                else load_numpy_pickle(data, where)
        except (UnsafePickleError, ValueError, OSError) as exc:
            raise RolloutError(f"visual prompt {name!r}: cannot read {where}: {exc}") from None
        out.append(Prompt(name, "visual", where, _goal(goal, f"{name} ({where})", dim), cond_scale))
    return out


def _goal(x: Any, where: str, dim: Optional[int]) -> np.ndarray:
    g = np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x, dtype=np.float32).reshape(-1)
    if dim is not None and g.shape != (dim,):
        raise RolloutError(f"goal embedding of {where} has {g.size} values, expected {dim} (the policy's goal width)")
    return g


# ---------------------------------------------------------------- video

def fitted_banner(text: str, width: int, height: int = BANNER_H) -> np.ndarray:
    """White RGB band [height, width, 3] with ``text`` in black, scaled down to fit the width."""
    font, thickness = cv2.FONT_HERSHEY_SIMPLEX, 1
    scale = 0.7
    (tw, th), _ = cv2.getTextSize(text, font, scale, thickness)
    if tw > width - 10:
        scale *= (width - 10) / tw
        (tw, th), _ = cv2.getTextSize(text, font, scale, thickness)
    band = np.full((height, width, 3), 255, dtype=np.uint8)
    cv2.putText(band, text, ((width - tw) // 2, (height + th) // 2), font, scale, (0, 0, 0), thickness, cv2.LINE_AA)
    return band


class VideoSink:
    """mp4 writer of RGB frames with a banner on top; the file appears only when closed
    without error (temp name + rename), so a crashed attempt leaves no video behind."""

    def __init__(self, path: str | Path, label: str, fps: int):
        self.path, self.label, self.fps = Path(path), label, fps
        self._writer: Optional[cv2.VideoWriter] = None
        self._banner: Optional[np.ndarray] = None
        self.n_frames = 0

    def __enter__(self) -> "VideoSink":
        self._ctx = atomic_path(self.path, suffix=".mp4")
        self._tmp = self._ctx.__enter__()
        return self

    def add(self, pov: np.ndarray) -> None:
        h, w = pov.shape[:2]
        if self._writer is None:
            self._banner = fitted_banner(self.label, w)
            self._writer = cv2.VideoWriter(str(self._tmp), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, (w, h + BANNER_H))
            if not self._writer.isOpened():
                raise RolloutError(f"{self.path}: OpenCV cannot open an mp4v video writer")
        frame = np.concatenate([self._banner, pov], axis=0)          # [H+BANNER_H, W, 3] RGB
        self._writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        self.n_frames += 1

    def __exit__(self, *exc: Any) -> None:
        if self._writer is not None:
            self._writer.release()
        self._ctx.__exit__(*exc)


# ---------------------------------------------------------------- episodes

def run_episode(slot: EnvSlot, agent: Agent, prompt: Prompt, episode: int, seed: int, steps: int,
                video_path: Optional[Path], fps: int, max_retries: int, env_name: str = "") -> dict[str, Any]:
    """One episode, retried on env crashes; returns its record (metrics, crashes, status)."""
    crashes: list[dict[str, Any]] = []
    banner = f"{prompt.label} | {env_name}" if env_name else prompt.label
    for attempt in range(max_retries + 1):
        t0 = time.monotonic()
        try:
            env = slot.get()
            obs = start_episode(env, seed)
            agent.reset(seed)
            tracker = ProgrammaticTracker(obs)
            n = 0
            with VideoSink(video_path, banner, fps) if video_path else contextlib.nullcontext() as sink:
                for n in range(1, steps + 1):
                    action = agent.act(obs["pov"], prompt.goal, prompt.cond_scale)
                    obs, _, done, _ = env_call("step", n, env.step, action)
                    tracker.update(obs)
                    if sink is not None:
                        sink.add(obs["pov"])
                    if done:
                        break
            log.info("%s episode %d: %d steps in %.1f s", prompt.key, episode, n, time.monotonic() - t0)
            return {
                "prompt": prompt.name, "kind": prompt.kind, "episode": episode, "seed": seed,
                "status": "ok", "reason": None, "attempts": attempt + 1, "steps": n,
                "metrics": tracker.result(), "video": str(video_path) if video_path else None, "crashes": crashes,
            }
        except EnvCrash as crash:
            record = {"prompt": prompt.name, "episode": episode, "seed": seed, "attempt": attempt + 1,
                      "phase": crash.phase, "step": crash.step, "error": repr(crash.exc),
                      "traceback": "".join(traceback.format_exception(crash.exc))[-2000:]}
            crashes.append(record)
            log.warning("env crashed (%s, step %s) in %s episode %d attempt %d: %r; recreating the env",
                        crash.phase, crash.step, prompt.name, episode, attempt + 1, crash.exc)
            slot.discard()
    return {
        "prompt": prompt.name, "kind": prompt.kind, "episode": episode, "seed": seed,
        "status": "failed", "reason": f"the env crashed on each of {max_retries + 1} attempts (rollout.max_retries)",
        "attempts": max_retries + 1, "steps": 0, "metrics": None, "video": None, "crashes": crashes,
    }


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return None if math.isnan(float(x)) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    return x


def _the_agent(agent: Agent | Callable[[], Agent]) -> list[Agent]:
    """A worker's one agent: ``agent``, or what the function ``agent`` builds (a Ray actor loads the policy once)."""
    return [agent if hasattr(agent, "act") else agent()]  # type: ignore[operator]


def play_one(worker: Worker, item: tuple[Prompt, int], *, cfg: RolloutParams, out: RolloutLayout) -> dict[str, Any]:
    """Episode ``item = (prompt, i)`` on a worker's env and agent (world and sampler seed ``cfg.seed + i``):
    the one per-episode function of either engine. Writes the video (temp name + rename); returns the record."""
    prompt, i = item
    (agent,) = worker.agents
    dim = getattr(agent, "goal_dim", None)
    if dim is not None and prompt.goal.shape != (dim,):
        raise RolloutError(f"goal embedding of {prompt.key} has {prompt.goal.size} values, expected {dim} "
                           f"(the policy's goal width)")
    video = out.video(prompt.kind, prompt.name, i) if cfg.video else None
    rec = run_episode(worker.slot, agent, prompt, i, world_seed(cfg.seed, i), cfg.steps, video, cfg.video_fps,
                      cfg.max_retries, env_label(cfg.env))
    if rec["video"]:
        rec["video"] = Path(rec["video"]).relative_to(out.dir).as_posix()
    return rec


def _lost_record(cfg: RolloutParams, item: tuple[Prompt, int], lost: Lost) -> dict[str, Any]:
    """A failed episode whose Ray worker died on every try: recorded as an env failure is."""
    prompt, i = item
    return {"prompt": prompt.name, "kind": prompt.kind, "episode": i, "seed": world_seed(cfg.seed, i), "status": "failed",
            "reason": lost.reason, "attempts": None, "steps": 0, "metrics": None, "video": None, "crashes": []}


def run_rollouts(prompts: Sequence[Prompt], agent: Agent | Callable[[], Agent], env_factory: EnvFactory,
                 cfg: RolloutParams, out_dir: str | Path | RolloutLayout, extra: Mapping[str, Any] = {},
                 first_env: Any = None, executor: Optional[Executor] = None) -> dict[str, Any]:
    """Every prompt x ``cfg.n_episodes`` episodes in ``cfg.env`` through ``executor`` (this process by
    default); writes the results (once each prompt is finished, in prompt order, so a killed run keeps
    what it finished), the videos, then the metrics and plots.

    ``agent`` is the agent, or a function building one (each Ray actor calls it once); ``first_env`` is an
    env already made (:func:`steve1.play.worker.driver_env`), only when the workers run here: Ray actors
    make theirs, checking MineRL first. ``extra`` is recorded in the results' config as given."""
    out = out_dir if isinstance(out_dir, RolloutLayout) else RolloutLayout(Path(out_dir))
    executor = executor or LocalExecutor()
    setup = worker_setup(executor, env_factory, functools.partial(_the_agent, agent), cfg.env, first_env)
    items = [(p, i) for p in prompts for i in range(cfg.n_episodes)]
    done: dict[tuple[str, int], dict[str, Any]] = {}
    n_written = 0                 # prompts whose episodes are all in the written results
    results: dict[str, Any] = {}
    work = functools.partial(play_one, cfg=cfg, out=out)
    for (prompt, i), rec in play_all(executor, work, items, task="rollout", setup=setup, key=_item_key,
                                     lost=functools.partial(_lost_record, cfg)):
        done[(prompt.key, i)] = rec
        log.info("%s episode %d: %s %s", prompt.name, i, rec["status"], rec["metrics"])
        while n_written < len(prompts) and all((prompts[n_written].key, j) in done for j in range(cfg.n_episodes)):
            n_written += 1
            episodes = [done[(p.key, j)] for p in prompts[:n_written] for j in range(cfg.n_episodes)]
            results = _results(prompts, episodes, cfg, extra)
            write_json_atomic(out.results, results)
    remove_stale_temps(out.videos)        # temps of workers that died mid-episode
    write_summaries(results, prompts, cfg, out)
    return results


def _item_key(item: tuple[Prompt, int]) -> str:
    return f"{item[0].key}:{item[1]}"


def _results(prompts: Sequence[Prompt], episodes: list[dict[str, Any]], cfg: RolloutParams,
             extra: Mapping[str, Any]) -> dict[str, Any]:
    agg = {}
    for j, p in enumerate(prompts):
        ok = [e["metrics"] for e in episodes if e["prompt"] == p.name and e["kind"] == p.kind and e["status"] == "ok"]
        agg[p.key] = aggregate(ok, cfg.ci, cfg.ci_level, cfg.n_bootstrap, seed=cfg.seed + 1000 * j)
    crashes = [c for e in episodes for c in e["crashes"]]
    env: dict[str, Any] = {"kind": cfg.env, "label": env_label(cfg.env)}
    env.update({"spec": "HumanSurvival", **ENV_KWARGS} if cfg.env == "minerl" else
               {"spec": STANDIN_SPEC, "resolution": ENV_KWARGS["resolution"],
                "note": "deterministic stand-in world: these numbers measure the pipeline, not Minecraft skill"})
    return _jsonable({
        "format_version": RESULTS_FORMAT_VERSION,
        "env": env,
        "config": {**cfg.model_dump(mode="json"), "extra": dict(extra)},
        "metrics": list(METRICS),
        "prompts": [{"name": p.name, "kind": p.kind, "text": p.text, "cond_scale": p.cond_scale} for p in prompts],
        "episodes": episodes,
        "aggregate": agg,
        "crashes": crashes,
        "n_failed": sum(e["status"] == "failed" for e in episodes),
    })


# ---------------------------------------------------------------- metrics and plots

def headline_metrics(results: Mapping[str, Any], prompts: Sequence[Prompt], targets: Mapping[str, str]
                     ) -> dict[str, dict[str, Optional[float]]]:
    """``{<env>: {<prompt>[_visual]: mean of the prompt's target metric}}`` for each prompt named in
    ``targets``; the env key says which world produced them (``standin`` / ``minerl``)."""
    env = results["env"]["kind"]
    out: dict[str, Optional[float]] = {}
    for p in prompts:
        metric = targets.get(p.name)
        if metric is None:
            continue
        key = p.name if p.kind == "text" else f"{p.name}{VISUAL_SUFFIX}"
        mean = results["aggregate"][p.key][metric]["mean"]
        out[key] = None if mean is None else round(float(mean), 4)
    return {env: out}


def plot_rows(results: Mapping[str, Any], prompts: Sequence[Prompt], metric: str) -> list[dict[str, Any]]:
    """One row per prompt: ``prompt`` (name, ``(visual)`` marked), ``mean``, ``ci_low``, ``ci_high``, ``n``."""
    rows = []
    for p in prompts:
        a = results["aggregate"][p.key][metric]
        rows.append({"prompt": p.name if p.kind == "text" else f"{p.name} (visual)", "kind": p.kind,
                     **{k: a[k] for k in ("mean", "ci_low", "ci_high", "n")}})
    return rows


def write_summaries(results: Mapping[str, Any], prompts: Sequence[Prompt], cfg: RolloutParams, out: RolloutLayout) -> None:
    """``metrics.json`` (headline means) and ``plots/<metric>.json`` (every metric, every prompt)."""
    if not results:
        return
    unknown = sorted(set(cfg.targets.values()) - set(METRICS))
    if unknown:
        raise RolloutError(f"rollout.targets names unknown metric(s) {unknown}; expected some of {list(METRICS)}")
    for m in METRICS:
        write_json_atomic(out.plot(m), _jsonable(plot_rows(results, prompts, m)))
    write_json_atomic(out.metrics, _jsonable(headline_metrics(results, prompts, cfg.targets)))


# ---------------------------------------------------------------- the real agent

class PolicyAgent(SeededPolicy):
    """Adapter from :func:`steve1.models.policy.act` to the :class:`Agent` protocol: resizes the env's
    frame to the policy's input size (INTER_LINEAR, as VPT), keeps the recurrent state (doubled
    batch for guidance), and maps agent indices to a MineRL action dict."""

    def __init__(self, policy: Any, device: Any = "cpu", seed: Optional[int] = None):
        super().__init__(policy, device, seed)
        self._batch = 0
        self.goal_dim: Optional[int] = policy.cfg.mineclip_embed_dim

    def reset(self, seed: Optional[int] = None) -> None:
        self.state = None        # made on the first act, with the batch that cond_scale needs
        if seed is not None:
            self.reseed(seed)

    def act(self, pov: np.ndarray, goal_embed: np.ndarray, cond_scale: float) -> dict[str, Any]:
        import torch

        from steve1.models.policy import act, to_env_actions

        img = cv2.resize(pov, self.frame_size, interpolation=cv2.INTER_LINEAR)           # [h,w,3]
        obs = {"img": torch.from_numpy(img)[None].to(self.device),                      # [1,h,w,3]
               "mineclip_embed": torch.from_numpy(np.asarray(goal_embed, np.float32))[None].to(self.device)}
        batch = 2 if cond_scale is not None else 1
        if self.state is None or self._batch != batch:
            self.state, self._batch = self.policy.initial_state(batch, device=self.device), batch
        res = act(self.policy, obs, self.state, cond_scale=cond_scale, generator=self.generator)
        self.state = res.state
        return to_env_actions(res.action)[0]


def require_weights(weights: str | Path) -> Path:
    """The policy weights file, or a :class:`RolloutError` saying how to make it."""
    weights = Path(weights)
    if not weights.is_file():
        raise RolloutError(f"{weights}: policy weights not found (run the train stage, or set rollout.policy_weights)")
    return weights


def load_rollout_policy(weights: str | Path, policy_model: Optional[str] = None, train: Any = None) -> Any:
    """The goal-conditioned policy to play, with ``weights`` loaded strictly.

    Architecture: ``policy_model`` (a VPT ``.model`` file; the goal width is read from the weights'
    goal layer, so a 768-d policy loads as well as a 512-d one), else the ``train`` section's
    (``in_model``/``preset`` and ``mineclip_embed_dim``), the one its runs were trained with.
    """
    from steve1.models.checkpoints import GOAL_KEYS, load_policy_weights, load_state_dict_file, read_policy_kwargs
    from steve1.models.vpt import build_policy

    weights = require_weights(weights)
    sd = load_state_dict_file(weights)
    if policy_model:
        goal = next((sd[k] for k in GOAL_KEYS if k in sd and sd[k].ndim == 2), None)
        if goal is None:
            raise RolloutError(f"{weights}: no goal layer ({GOAL_KEYS[0]}): VPT weights cannot follow goals; "
                               f"give STEVE-1 weights")
        policy_kwargs, pi_head_kwargs = read_policy_kwargs(policy_model)
        policy = build_policy({**policy_kwargs, "mineclip_embed_dim": int(goal.shape[1])}, pi_head_kwargs)
    else:
        from steve1.models.build import build_policy_for_params

        policy = build_policy_for_params(train, gradient_checkpointing=False)
    load_policy_weights(policy, sd, allow_vpt=False)
    return policy


# ---------------------------------------------------------------- params -> rollouts (stage and CLI)

def policy_agent(weights: str | Path, policy_model: Optional[str], train: Any, device: str, seed: int) -> PolicyAgent:
    """The rollout's :class:`PolicyAgent` on ``device`` (``auto`` resolved where this runs: a Ray actor's GPU)."""
    return PolicyAgent(load_rollout_policy(weights, policy_model, train), device=resolve_device(device, "rollout.device"),
                       seed=seed)


def rollouts_from_params(params: Params, out_dir: Optional[str | Path] = None, *, agent: Optional[Agent] = None,
                         env_factory: Optional[EnvFactory] = None, text_encoder: Optional[Callable] = None,
                         device: Optional[str] = None, executor: Optional[Executor] = None) -> dict[str, Any]:
    """Run the ``rollout`` section of validated params (the stage and ``steve1 rollout``) through
    ``executor`` (this process by default). Locally the env is made first: with ``env: minerl`` a
    missing MineRL fails here, before any model is loaded; on Ray each actor makes its env, then loads
    the policy, and this process (the driver) loads only what turns prompts into goals (MineCLIP's
    text tower, the prior). The keyword arguments replace the real parts (policy agent, env, MineCLIP
    text tower), which is how the tests drive it."""
    from steve1.eval.prompt import mineclip_text_encoder, prompt_to_goal
    from steve1.models.prior import load_prior

    rp = params.rollout
    layout = Layout.from_params(params)
    out = RolloutLayout(Path(out_dir)) if out_dir is not None else layout.rollouts
    executor = executor or LocalExecutor()
    wanted = device or rp.device
    first_env = None
    if env_factory is None:
        env_factory = make_env_factory(rp.env)
        first_env = driver_env(executor, rp.env, env_factory)   # before any model: a missing MineRL stops here
    with closed_on_error(first_env):
        here = resolve_device(wanted, "rollout.device")          # this process's: the text tower and the prior
        weights = rp.policy_weights or layout.rollout_weights
        player_agent: Agent | Callable[[], Agent]
        if agent is not None:
            player_agent = agent
        else:       # missing weights stop the stage here, before any worker starts
            player_agent = functools.partial(policy_agent, require_weights(weights), rp.policy_model, params.train,
                                             executor.worker_device("rollout", wanted, "rollout.device"), rp.seed)
            if executor.runs_here:
                player_agent = agent = player_agent()
        dim = getattr(agent, "goal_dim", None)            # unknown on a Ray driver: each actor checks the goals
        prompts: list[Prompt] = []
        texts = rp.text_prompts or PAPER_TEXT_PROMPTS
        if texts:
            if text_encoder is None:
                e = params.embed
                text_encoder, _ = mineclip_text_encoder(e.weights, e.preset, e.seed, here)
            prior = load_prior(rp.prior or layout.prior, map_location=here)

            def to_goal(text: str) -> np.ndarray:
                return prompt_to_goal([text], text_encoder, prior, seed=rp.prior_seed,
                                      deterministic=rp.prior_deterministic)[0]

            prompts += text_prompts(texts, to_goal, rp.text_cond_scale, dim)
        prompts += visual_prompts(rp.visual_prompts, rp.visual_cond_scale, dim)
        if rp.visual_prompts_from:
            prompts += visual_prompts_from(rp.visual_prompts_from, rp.visual_cond_scale, dim)
    return run_rollouts(prompts, player_agent, env_factory, rp, out, first_env=first_env, executor=executor,
                        extra={"params": rp.model_dump(), "embed": _declared_embed(params)})


def _declared_embed(params: Params) -> dict[str, Any]:
    """The embed keys the rollout stage declares (steve1.shapes): what its text goals depend on."""
    from steve1.shapes import declared_values, nested

    return nested(declared_values(params, "rollout")).get("embed", {})


def check_targets(params: Params) -> None:
    """Refuse a ``rollout.targets`` metric the tracker does not compute (before any work)."""
    unknown = sorted(set(params.rollout.targets.values()) - set(METRICS))
    if unknown:
        raise ParamsError(describe_invalid("rollout.targets", params.rollout.targets,
                                          f"unknown metric(s) {unknown}; expected some of {list(METRICS)}"))


def rollout_stage(params: Params, out_dir: Optional[str | Path] = None) -> dict[str, Any]:
    """The rollout stage's work, shared by ``python -m stages.rollout`` and ``steve1 rollout``: every
    prompt played through the executor ``engine`` names, then one summary line."""
    with open_executor(params) as executor:
        res = rollouts_from_params(params, out_dir, executor=executor)
    print(f"rollout ({res['env']['label']}): {len(res['prompts'])} prompts, {len(res['episodes'])} episodes, "
          f"{res['n_failed']} failed, {len(res['crashes'])} env crashes")
    return res
