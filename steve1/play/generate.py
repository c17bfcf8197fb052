"""STEVE-1's second data source: episodes of two VPT agents taking turns (the ``generate`` stage).

What STEVE-1's ``gen_mixed_agents.py`` does, and so what this does (facts read from it; the code is ours):

- Two agents, each a VPT architecture (``.model``) with weights, play one episode; which one starts
  is drawn. Before each step the inactive agent takes over with probability ``switch_agent_prob``;
  when exactly one of the pair is an ``rl-from-*`` model, with ``switch_to_rl_prob`` towards it and
  ``switch_from_rl_prob`` away from it. The agent that takes over has its memory reset.
- Then, unless already spinning, with probability ``spin_prob`` the agent stops and spins: a total
  drawn from ``spin_degrees`` at a per-step turn drawn from ``spin_step_degrees``, left or right
  with even odds, for ``total // per_step`` steps of pure camera yaw (no agent call). After the
  last spin step the active agent's memory is reset.
- Episodes run up to ``max_steps`` and are kept only when they reach ``min_steps`` (an env crash
  or the env's own end stops one early). The world seed, the agents, the switches and the spins
  are recorded.

Where we differ: every draw is seeded from ``(generate.seed, episode)`` (STEVE-1 used the global
``random`` state and an unseeded world by default); episode ``i`` plays world seed ``seed + i``; the
spin action is a full 24-key MineRL action (STEVE-1's dropped three keys the env fills with 0).
Episodes run through the engine (``engine: local | ray``): each worker (this process, or a Ray actor)
holds one env and the two agents (:mod:`steve1.play.worker`) and reseeds the agents' samplers for every
episode, so an episode's bytes do not depend on which worker played it or what it played before.

Output, in the project's episode format (``steve1.data.episodes``): the agent's 128x128 input
frame before each step, the env action taken (``env_actions/*``) and its VPT agent-space indices
(``actions/*``, :func:`steve1.actions.env_to_agent`, the conversion training reads). An agent step's
env action is ``agent_to_env`` of the agent's sample, so the recorded indices map back to exactly
the env action taken; a spin step turns 20-30 degrees, beyond the agent space's 10-degree camera
range, so its indices hold the clipped turn (as STEVE-1's training saw its spin steps). Each kept
episode has a lossless (PNG-coded) companion video at ``video_size`` (``<id>.mp4``, MineCLIP's
256x160 by default, resized from the env's frame as STEVE-1 did) that the embed step reads, and a
row in the manifest with its agents, seed, switches, spins and end; dropped episodes have a row
with the reason.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Protocol, Sequence

import cv2
import numpy as np

from steve1 import actions as A
from steve1.data import formats
from steve1.data.episodes import Episode, FrameStorage, episode_path, list_episode_ids, write_episode
from steve1.devices import resolve_device
from steve1.engine import Executor, LocalExecutor, Lost
from steve1.errors import UserError
from steve1.io import atomic_path, remove_stale_temps, sha256_file, write_json_atomic
from steve1.layout import Layout
from steve1.params import AgentSpec, DecodeParams, GenerateParams, Params
from steve1.play.envs import EnvCrash, EnvFactory, env_call, env_factory, env_label
from steve1.play.worker import (SeededPolicy, Worker, driver_env, play_all, start_episode, world_seed,
                                worker_setup)

log = logging.getLogger(__name__)

GENERATE_VERSION = 1
GENERATOR = "steve1.data.generate"      # the manifest's name for this generator (kept from its first home)
RECORDER = "generate:vpt-agents"
A_GENERATION = "generation_json"     # episode attribute: agents, world seed, switches, spins, end
FPS = 20.0                           # MineRL's steps per second
VIDEO_FOURCC = "png "                # lossless: the embed step decodes the frames written here, bit for bit
RL_PREFIX = "rl-from-"


class GenerateError(UserError, RuntimeError):
    """Generation cannot start (agent files missing) or produced nothing."""


class Agent(Protocol):
    """A VPT agent: memory reset, and one agent-space action per 128x128 RGB frame."""

    def reset(self) -> None: ...

    def reseed(self, seed: int) -> None:
        """A fresh sampler for the next episode: an episode's draws depend on its own seed only."""
        ...

    def act(self, frame: np.ndarray) -> tuple[int, int]:
        """uint8 [H,W,3] RGB at the policy's input size -> (buttons index, camera index)."""
        ...


# ---------------------------------------------------------------- agents

def is_rl(spec: AgentSpec) -> bool:
    """An ``rl-from-*`` model (by its weights file name, else its name), as STEVE-1 tells them apart."""
    name = Path(spec.weights).name if spec.weights else spec.name
    return name.startswith(RL_PREFIX) or name.replace("_", "-").startswith(RL_PREFIX)


def switch_probs(specs: Sequence[AgentSpec], cfg: GenerateParams) -> tuple[float, float]:
    """``(p_to_0, p_to_1)``: per-step probability that agent 0 (resp. 1) takes over when the other is active."""
    rl = [is_rl(s) for s in specs]
    if sum(rl) == 1:
        return tuple(cfg.switch_to_rl_prob if r else cfg.switch_from_rl_prob for r in rl)  # type: ignore[return-value]
    return cfg.switch_agent_prob, cfg.switch_agent_prob


class VPTAgent(SeededPolicy):
    """A plain VPT policy (no goal input) with its memory and a seeded sampler."""

    def __init__(self, policy: Any, device: Any = "cpu", seed: Optional[int] = None):
        if policy.is_goal_conditioned:
            raise GenerateError("generate plays VPT agents; this policy has a goal layer (a STEVE-1 policy)")
        super().__init__(policy, device, seed)

    def reset(self) -> None:
        self.state = None

    def act(self, frame: np.ndarray) -> tuple[int, int]:
        import torch

        from steve1.models.policy import act

        if self.state is None:
            self.state = self.policy.initial_state(1, device=self.device)
        obs = {"img": torch.from_numpy(np.ascontiguousarray(frame))[None].to(self.device)}   # [1,H,W,3]
        res = act(self.policy, obs, self.state, generator=self.generator)
        self.state = res.state
        return int(res.action["buttons"][0]), int(res.action["camera"][0])


def resolve_agent_file(name: Optional[str], weights_dir: str | Path) -> Optional[Path]:
    """A bare file name lives in ``weights.dir`` (the weights stage's); anything with a folder is a path."""
    if name is None:
        return None
    return Path(name) if "/" in name else Path(weights_dir) / name


def build_vpt_agent(spec: AgentSpec, weights_dir: str | Path, device: str = "cpu", seed: Optional[int] = None) -> VPTAgent:
    """The agent of ``spec``: its ``.model`` (or preset) without a goal layer, its weights loaded strictly
    (or a random init seeded by ``spec.seed``)."""
    import copy

    import torch

    from steve1.models.checkpoints import load_policy_weights, read_policy_kwargs
    from steve1.models.vpt import PRESETS, build_policy

    model, weights = resolve_agent_file(spec.model, weights_dir), resolve_agent_file(spec.weights, weights_dir)
    for what, path in (("model", model), ("weights", weights)):
        if path is not None and not path.is_file():
            raise GenerateError(f"agent {spec.name}: {what} file {path} not found (list it in weights.files and "
                                f"run the weights stage, or give a path)")
    if model is not None:
        policy_kwargs, pi_head_kwargs = read_policy_kwargs(model)
    else:
        preset = copy.deepcopy(PRESETS[spec.preset])
        policy_kwargs, pi_head_kwargs = preset["policy_kwargs"], preset["pi_head_kwargs"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        policy = build_policy({**policy_kwargs, "mineclip_embed_dim": None}, pi_head_kwargs)
    if weights is not None:
        load_policy_weights(policy, weights, allow_vpt=False)
    return VPTAgent(policy, device=device, seed=seed)


# ---------------------------------------------------------------- one episode

@dataclass
class Spin:
    step: int                 # first spin step
    n_steps: int
    degrees_per_step: int     # signed: + turns right (yaw grows), - left

    def as_row(self) -> dict[str, int]:
        return {"step": self.step, "n_steps": self.n_steps, "degrees_per_step": self.degrees_per_step}


@dataclass
class Played:
    """One played episode: per-step frames and actions, and what happened."""

    frames: list[np.ndarray] = field(default_factory=list)            # uint8 [128,128,3] each
    env_actions: list[dict[str, Any]] = field(default_factory=list)
    agent_of_step: list[int] = field(default_factory=list)            # -1 on spin steps
    first_agent: int = 0
    switches: list[tuple[int, int]] = field(default_factory=list)      # (step, agent that takes over)
    spins: list[Spin] = field(default_factory=list)
    end: str = "max_steps"

    @property
    def n_steps(self) -> int:
        return len(self.frames)


def spin_action(degrees: float) -> dict[str, Any]:
    """All 24 MineRL keys at rest, the camera turning ``degrees`` of yaw."""
    action: dict[str, Any] = {key: 0 for key in A.ENV_BUTTON_KEYS}
    action[A.CAMERA_KEY] = np.array([0.0, float(degrees)])
    return action


def play_episode(env: Any, agents: Sequence[Agent], cfg: GenerateParams, p_to: tuple[float, float],
                 rng: np.random.Generator, seed: int, on_frame: Callable[[np.ndarray], None]) -> Played:
    """Play one episode in world ``seed`` (STEVE-1's loop, seeded); ``on_frame`` gets each env frame (for the video)."""
    out = Played()
    obs = start_episode(env, seed)
    for agent in agents:                    # STEVE-1 made fresh agents for every episode
        agent.reset()
    active = int(rng.integers(2))
    out.first_agent = active
    out.switches.append((0, active))
    spin_left, spin_deg = 0, 0
    for t in range(cfg.max_steps):
        other = 1 - active
        if rng.random() < p_to[other]:
            active = other
            agents[active].reset()
            out.switches.append((t, active))
        if spin_left == 0 and rng.random() < cfg.spin_prob:
            total = int(rng.integers(cfg.spin_degrees[0], cfg.spin_degrees[1] + 1))
            per = int(rng.integers(cfg.spin_step_degrees[0], cfg.spin_step_degrees[1] + 1))
            spin_deg = per if rng.random() < 0.5 else -per
            spin_left = total // per
            if spin_left:
                out.spins.append(Spin(t, spin_left, spin_deg))
        pov = obs["pov"]
        on_frame(pov)
        frame = cv2.resize(pov, (formats.FRAME_SHAPE[1], formats.FRAME_SHAPE[0]), interpolation=cv2.INTER_LINEAR)   # [128,128,3]
        if spin_left:
            action = spin_action(spin_deg)
            spin_left -= 1
            if spin_left == 0:
                agents[active].reset()      # the spin is over: the agent starts afresh
            out.agent_of_step.append(-1)
        else:
            agent = agents[active]
            size = getattr(agent, "frame_size", (formats.FRAME_SHAPE[1], formats.FRAME_SHAPE[0]))
            x = frame if size == (formats.FRAME_SHAPE[1], formats.FRAME_SHAPE[0]) else \
                cv2.resize(pov, size, interpolation=cv2.INTER_LINEAR)
            action = A.agent_to_env(*agent.act(x))
            out.agent_of_step.append(active)
        out.frames.append(frame)
        out.env_actions.append(action)
        try:
            obs, _, done, _ = env_call("step", t + 1, env.step, action)
        except EnvCrash as crash:
            out.end = f"env crashed at step {t + 1}: {crash.exc!r}"
            break
        if done:
            out.end = f"the env ended the episode at step {t + 1}"
            break
    return out


def episode_columns(played: Played) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """``(env action columns, buttons [N], camera [N])``: the env actions taken and their agent-space indices."""
    n = played.n_steps
    env = {key: np.array([int(a[key]) for a in played.env_actions], dtype=np.uint8).reshape(n)
           for key in A.ENV_BUTTON_KEYS}
    env[A.CAMERA_KEY] = np.array([np.asarray(a[A.CAMERA_KEY], dtype=np.float64) for a in played.env_actions],
                                 dtype=np.float32).reshape(n, 2)
    buttons, camera = A.env_to_agent(env)
    return env, buttons, camera


# ---------------------------------------------------------------- the stage's work

def episode_id(seed: int, index: int) -> str:
    return f"vpt-agents-{seed}-{index:05d}"


class _Dropped(Exception):
    pass


def _settings(cfg: GenerateParams, specs: Sequence[AgentSpec], decode: DecodeParams) -> dict[str, Any]:
    """What shapes every episode (its conversion attribute; a change regenerates)."""
    return {"generate_version": GENERATE_VERSION, **cfg.model_dump(mode="json", exclude={"n_episodes", "device"}),
            "frame_size": [formats.FRAME_SHAPE[1], formats.FRAME_SHAPE[0]], **FrameStorage.from_params(decode).settings()}


def _vpt_agents(specs: Sequence[AgentSpec], weights_dir: str | Path, device: str,
                agents: Optional[Sequence[Agent]] = None) -> list[Agent]:
    """A worker's two agents: the VPT agents of ``specs`` on ``device`` (``auto`` resolved where the worker
    runs), or ``agents`` (tests)."""
    if agents is not None:
        return list(agents)
    on = resolve_device(device, "generate.device")
    return [build_vpt_agent(s, weights_dir, on) for s in specs]


def _base_row(cfg: GenerateParams, specs: Sequence[AgentSpec], index: int) -> dict[str, Any]:
    return {"status": "dropped", "reason": None, "world_seed": world_seed(cfg.seed, index),
            "agents": [s.name for s in specs], "is_rl": [is_rl(s) for s in specs],
            "agent_files": [[s.model or f"preset:{s.preset}", s.weights or f"random:seed={s.seed}"] for s in specs]}


def generate_one(worker: Worker, index: int, *, specs: Sequence[AgentSpec], cfg: GenerateParams,
                 episodes_dir: Path, videos_dir: Path, decode: DecodeParams, settings: str) -> dict[str, Any]:
    """Play episode ``index`` on a worker's env and agents; write its file and video when kept. Returns its
    manifest row. Every draw (world, switches, spins, each agent's sampler) is seeded from
    ``(cfg.seed, index)``, so the bytes do not depend on which worker plays it or what it played before."""
    eid, seed = episode_id(cfg.seed, index), world_seed(cfg.seed, index)
    rng = np.random.default_rng([cfg.seed, index])
    slot, agents = worker.slot, worker.agents
    for k, agent in enumerate(agents):
        agent.reseed(_agent_seed(cfg.seed, index, k))
    row = _base_row(cfg, specs, index)
    video = videos_dir / f"{eid}{formats.RAW_VIDEO_SUFFIX}"
    dest = episode_path(episodes_dir, eid)
    w, h = cfg.video_size
    try:
        with atomic_path(video, suffix=formats.RAW_VIDEO_SUFFIX) as tmp:
            writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*VIDEO_FOURCC), FPS, (w, h))
            if not writer.isOpened():
                raise GenerateError(f"{video}: OpenCV cannot write a {VIDEO_FOURCC!r} video here")
            try:
                env = slot.get()

                def on_frame(pov: np.ndarray) -> None:     # MineCLIP's frame, resized straight from the env's
                    rgb = pov if pov.shape[:2] == (h, w) else cv2.resize(pov, (w, h), interpolation=cv2.INTER_LINEAR)
                    writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))

                played = play_episode(env, agents, cfg, switch_probs(specs, cfg), rng, seed, on_frame)
            finally:
                writer.release()
            record = {"first_agent": played.first_agent, "switches": [list(s) for s in played.switches],
                      "spins": [s.as_row() for s in played.spins], "n_steps": played.n_steps, "end": played.end}
            row.update(record)
            if played.end.startswith("env crashed"):
                slot.discard()
            if played.n_steps < cfg.min_steps:
                row["reason"] = (f"{played.n_steps} steps, fewer than generate.min_steps ({cfg.min_steps}): "
                                 f"{played.end}")
                raise _Dropped
        env_cols, buttons, camera = episode_columns(played)
        n = played.n_steps
        ep = Episode(
            episode_id=eid, frames=np.stack(played.frames), buttons=buttons, camera=camera, env_actions=env_cols,
            source_step=np.arange(n), gui_open=np.zeros(n, bool), cursor_xy=np.zeros((n, 2), np.float32),
            attrs={formats.A_SOURCE_URL: f"generate:{cfg.env}:world_seed={seed}", formats.A_RECORDER_VERSION: RECORDER,
                   formats.A_FPS: FPS, formats.A_CONVERSION: settings, formats.A_VIDEO_SHA256: sha256_file(video),
                   A_GENERATION: json.dumps({**row, "status": "ok"}, sort_keys=True)})
        write_episode(dest, ep, FrameStorage.from_params(decode))
        row["status"] = "ok"
    except _Dropped:
        dest.unlink(missing_ok=True)
    except EnvCrash as crash:            # the env could not be made or reset: nothing was played
        slot.discard()
        row["reason"] = f"{crash}"
        dest.unlink(missing_ok=True)
        video.unlink(missing_ok=True)
    log.info("%s (world seed %d): %s%s", eid, seed, row["status"], f" ({row['reason']})" if row["reason"] else "")
    return row


@dataclass
class GenerateReport:
    rows: dict[str, dict[str, Any]]
    manifest: Path

    @property
    def n_ok(self) -> int:
        return sum(r["status"] == "ok" for r in self.rows.values())

    def summary(self) -> str:
        frames = sum(r.get("n_steps", 0) for r in self.rows.values() if r["status"] == "ok")
        return f"{self.n_ok} of {len(self.rows)} episodes kept ({frames} frames)"


def generate_all(cfg: GenerateParams, episodes_dir: str | Path, videos_dir: str | Path, manifest: str | Path,
                 weights_dir: str | Path, decode: DecodeParams, env_factory: EnvFactory, first_env: Any = None,
                 agents: Optional[Sequence[Agent]] = None, device: str = "cpu",
                 executor: Optional[Executor] = None) -> GenerateReport:
    """Play ``cfg.n_episodes`` episodes into ``episodes_dir`` (+ videos) and write the manifest. Files of
    earlier params are removed, so the folders hold exactly this manifest's kept episodes.

    Episodes run through ``executor`` (this process by default): each worker holds one env and the two
    agents (:mod:`steve1.play.worker`); on Ray those are the actors' (``ray.generate``) and this process,
    the driver, makes neither (``first_env`` must then be None; ``env_factory`` and ``agents`` travel to
    the actors). An episode whose Ray worker died on every try gets a ``dropped`` row with the reason.
    ``agents`` replaces the VPT agents (tests)."""
    episodes_dir, videos_dir = Path(episodes_dir), Path(videos_dir)
    for d in (episodes_dir, videos_dir):
        d.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(d)
    executor = executor or LocalExecutor()
    specs = list(cfg.agents)
    settings = json.dumps(_settings(cfg, specs, decode), sort_keys=True)
    build = functools.partial(_vpt_agents, specs, weights_dir, executor.worker_device("generate", device,
                                                                                      "generate.device"), agents)
    setup = worker_setup(executor, env_factory, build, cfg.env, first_env)
    work = functools.partial(generate_one, specs=specs, cfg=cfg, episodes_dir=episodes_dir, videos_dir=videos_dir,
                             decode=decode, settings=settings)
    by_index: dict[int, dict[str, Any]] = {}
    for i, row in play_all(executor, work, list(range(cfg.n_episodes)), task="generate", setup=setup,
                           key=functools.partial(episode_id, cfg.seed),
                           lost=functools.partial(_lost_row, cfg, specs)):
        by_index[i] = row
    rows = {episode_id(cfg.seed, i): by_index[i] for i in sorted(by_index)}
    for d in (episodes_dir, videos_dir):
        remove_stale_temps(d)           # temps of workers that died mid-episode
    kept = {eid for eid, r in rows.items() if r["status"] == "ok"}
    for eid in list_episode_ids(episodes_dir):
        if eid not in kept:
            episode_path(episodes_dir, eid).unlink()
    for p in videos_dir.glob(f"*{formats.RAW_VIDEO_SUFFIX}"):
        if p.stem not in kept:
            p.unlink()
    write_json_atomic(Path(manifest), {"format_version": GENERATE_VERSION, "generator": GENERATOR,
                                       "env": {"kind": cfg.env, "label": env_label(cfg.env)},
                                       "settings": json.loads(settings), "episodes": rows})
    return GenerateReport(rows, Path(manifest))


def generate_from_params(params: Params, executor: Optional[Executor] = None) -> GenerateReport:
    """The ``generate`` section of validated params (the stage) through ``executor`` (this process by
    default). When the workers run here the env is made first, before any agent loads: with ``env: minerl``
    a missing MineRL stops the stage before any work; Ray actors each make theirs first."""
    g, layout = params.generate, Layout.from_params(params)
    executor = executor or LocalExecutor()
    factory = env_factory(g.env)
    first = driver_env(executor, g.env, factory) if g.n_episodes else None
    return generate_all(g, layout.generated_episodes, layout.generated_videos, layout.generated_manifest,
                        params.weights.dir, params.decode, factory, first_env=first, device=g.device, executor=executor)


def _lost_row(cfg: GenerateParams, specs: Sequence[AgentSpec], index: int, lost: Lost) -> dict[str, Any]:
    """A ``dropped`` row for an episode whose Ray worker died on every try."""
    return {**_base_row(cfg, specs, index), "reason": lost.reason}


def _agent_seed(seed: int, episode: int, agent: int) -> int:
    digest = hashlib.sha256(f"{seed}/{episode}/{agent}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)

