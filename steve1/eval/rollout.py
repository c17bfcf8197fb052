"""MineRL rollouts of a goal-conditioned agent with STEVE-1's programmatic metrics.

Setup as the official ``run_agent.py``: ``HumanSurvival`` with VPT's env settings
(:data:`ENV_KWARGS`: 640x360, fov 70, gamma 2, gui scale 1, cursor 16), the 11 paper text
prompts (:data:`PAPER_TEXT_PROMPTS`) turned into goals by the prior, classifier-free guidance
scale 6 for text and 7 for visual prompts. Each prompt runs ``n_episodes`` episodes of ``steps``
steps; episode ``i`` uses world seed ``seed + i`` for every prompt, so prompts are compared on
the same worlds. The official code calls ``env.seed`` *after* ``reset`` (which MineRL applies
only to the next reset); we seed before reset as MineRL documents.

MineRL dies unpredictably, mostly on repeated env creation (the official scripts restart the
whole program in a shell loop). Here one env is reused across episodes; an exception from
``make``/``seed``/``reset``/``step`` closes it, a new one is made and the episode is retried from
scratch, at most ``max_retries`` times; every crash is recorded in the results. Exceptions
raised by the agent are bugs and propagate.

MineRL 1.0.2 installs from its repository tag, with JDK 8 (README "Rollouts in MineRL",
``docker/README.md``; the Docker image's ``WITH_ROLLOUT=1`` layer does it). It renders with OpenGL: on a headless node run under a virtual
display, ``xvfb-run -a -s "-screen 0 1024x768x24" steve1 rollout`` (apt: ``xvfb``).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Protocol, Sequence

import cv2
import numpy as np

from steve1.eval.programmatic import METRICS, ProgrammaticTracker, aggregate
from steve1.io import atomic_path, write_json_atomic
from steve1.layout import Layout
from steve1.params import Params, RolloutParams

log = logging.getLogger(__name__)

RESULTS_FORMAT_VERSION = 1
RESULTS_FILE = "results.json"
VIDEO_DIR = "videos"

# VPT's ENV_KWARGS (official steve1/VPT/agent.py); frameskip is not a HumanSurvival argument
ENV_KWARGS: dict[str, Any] = dict(
    fov_range=[70, 70],
    gamma_range=[2, 2],
    guiscale_range=[1, 1],
    resolution=[640, 360],
    cursor_size_range=[16.0, 16.0],
)

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
BANNER_H = 40   # pixels of the prompt banner stacked above each video frame


class RolloutError(RuntimeError):
    """A rollout cannot start: missing extra, unreadable prompt file, video writer failure."""


class Agent(Protocol):
    """What the loop needs from an agent: a memory reset per episode and one action per frame."""

    def reset(self) -> None: ...

    def act(self, pov: np.ndarray, goal_embed: np.ndarray, cond_scale: float) -> dict[str, Any]:
        """``pov`` uint8 [360,640,3] RGB, ``goal_embed`` float32 [512] -> a MineRL env action dict."""
        ...


EnvFactory = Callable[[], Any]


@dataclass
class Prompt:
    """One conditioning: its goal embedding and the guidance scale it runs with."""

    name: str
    kind: str                      # "text" | "visual"
    text: str                      # the instruction, or the visual goal's file for visual prompts
    goal: np.ndarray               # float32 [512]
    cond_scale: float

    @property
    def label(self) -> str:
        return f"{self.text!r} ({self.kind}, scale {self.cond_scale:g})" if self.kind == "text" else \
            f"{self.name} (visual, scale {self.cond_scale:g})"


# ---------------------------------------------------------------- env and prompts

def make_minerl_env() -> Any:
    """A fresh ``HumanSurvival`` env with VPT's settings; MineRL is imported only here."""
    return _human_survival()(**ENV_KWARGS).make()


def _human_survival() -> Any:
    try:
        from minerl.herobraine.env_specs.human_survival_specs import HumanSurvival
    except ImportError as exc:
        raise RolloutError(
            "MineRL is not installed: install MineRL 1.0.2 from its v1.0.2 tag with JDK 8 as the README's "
            "'Rollouts in MineRL' says (or use the Docker image built with WITH_ROLLOUT=1); on a headless "
            "node run under a virtual display: xvfb-run -a steve1 rollout"
        ) from exc
    return HumanSurvival


def text_prompts(prompts: Mapping[str, str], text_to_goal: Callable[[str], np.ndarray],
                 cond_scale: float = RolloutParams().text_cond_scale) -> list[Prompt]:
    """Text prompts with goals from ``text_to_goal`` (MineCLIP text tower + prior)."""
    return [Prompt(name, "text", text, _goal(text_to_goal(text), name), cond_scale) for name, text in prompts.items()]


def visual_prompts(files: Mapping[str, str], cond_scale: float = RolloutParams().visual_cond_scale) -> list[Prompt]:
    """Visual prompts: each a ``.npy`` file holding a MineCLIP visual embedding ([512] or [1,512])."""
    out = []
    for name, path in files.items():
        try:
            goal = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise RolloutError(f"visual prompt {name!r}: cannot read {path}: {exc}") from None
        out.append(Prompt(name, "visual", str(path), _goal(goal, f"{name} ({path})"), cond_scale))
    return out


def _goal(x: Any, where: str) -> np.ndarray:
    g = np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x, dtype=np.float32).reshape(-1)
    if g.shape != (512,):
        raise RolloutError(f"goal embedding of {where} has {g.size} values, expected 512")
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
    """mp4 writer of RGB frames with a prompt banner on top; the file appears only when closed
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

class _EnvCrash(Exception):
    def __init__(self, phase: str, step: Optional[int], exc: BaseException):
        super().__init__(f"{phase} failed at step {step}: {exc!r}")
        self.phase, self.step, self.exc = phase, step, exc


class EnvSlot:
    """Holds the live env; makes one on demand and throws it away after a crash."""

    def __init__(self, factory: EnvFactory):
        self.factory = factory
        self.env: Any = None
        self.created = 0

    def get(self) -> Any:
        if self.env is None:
            try:
                self.env = self.factory()
            except RolloutError:
                raise
            except Exception as exc:
                raise _EnvCrash("make", None, exc) from exc
            self.created += 1
        return self.env

    def discard(self) -> None:
        if self.env is not None:
            with contextlib.suppress(Exception):      # a dead MineRL often fails to close too
                self.env.close()
            self.env = None


def _env_call(phase: str, step: Optional[int], fn: Callable[..., Any], *args: Any) -> Any:
    try:
        return fn(*args)
    except Exception as exc:
        raise _EnvCrash(phase, step, exc) from exc


def run_episode(slot: EnvSlot, agent: Agent, prompt: Prompt, episode: int, seed: int, steps: int,
                video_path: Optional[Path], fps: int, max_retries: int) -> dict[str, Any]:
    """One episode, retried on env crashes; returns its record (metrics, crashes, status)."""
    crashes: list[dict[str, Any]] = []
    for attempt in range(max_retries + 1):
        t0 = time.monotonic()
        try:
            env = slot.get()
            _env_call("seed", None, env.seed, seed)
            obs = _env_call("reset", None, env.reset)
            agent.reset()
            tracker = ProgrammaticTracker(obs)
            n = 0
            with VideoSink(video_path, prompt.label, fps) if video_path else contextlib.nullcontext() as sink:
                for n in range(1, steps + 1):
                    action = agent.act(obs["pov"], prompt.goal, prompt.cond_scale)
                    obs, _, done, _ = _env_call("step", n, env.step, action)
                    tracker.update(obs)
                    if sink is not None:
                        sink.add(obs["pov"])
                    if done:
                        break
            return {
                "prompt": prompt.name, "kind": prompt.kind, "episode": episode, "seed": seed,
                "status": "ok", "attempts": attempt + 1, "steps": n, "seconds": round(time.monotonic() - t0, 3),
                "metrics": tracker.result(), "video": str(video_path) if video_path else None, "crashes": crashes,
            }
        except _EnvCrash as crash:
            record = {"prompt": prompt.name, "episode": episode, "seed": seed, "attempt": attempt + 1,
                      "phase": crash.phase, "step": crash.step, "error": repr(crash.exc),
                      "traceback": "".join(traceback.format_exception(crash.exc))[-2000:]}
            crashes.append(record)
            log.warning("env crashed (%s, step %s) in %s episode %d attempt %d: %r; recreating the env",
                        crash.phase, crash.step, prompt.name, episode, attempt + 1, crash.exc)
            slot.discard()
    return {
        "prompt": prompt.name, "kind": prompt.kind, "episode": episode, "seed": seed,
        "status": "failed", "attempts": max_retries + 1, "steps": 0, "seconds": None,
        "metrics": None, "video": None, "crashes": crashes,
    }


def _safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


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


def run_rollouts(prompts: Sequence[Prompt], agent: Agent, env_factory: EnvFactory, cfg: RolloutParams,
                 out_dir: str | Path, extra: Mapping[str, Any] = {}) -> dict[str, Any]:
    """Every prompt x ``cfg.n_episodes`` episodes; writes ``<out_dir>/results.json`` (after each
    prompt, so a killed run keeps what it finished) and ``<out_dir>/videos/*.mp4``. ``extra`` is
    recorded in the results' config as given."""
    out_dir = Path(out_dir)
    slot = EnvSlot(env_factory)
    episodes: list[dict[str, Any]] = []
    results: dict[str, Any] = {}
    try:
        for prompt in prompts:
            for i in range(cfg.n_episodes):
                video = out_dir / VIDEO_DIR / f"{prompt.kind}-{_safe_name(prompt.name)}-ep{i:03d}.mp4" if cfg.video else None
                rec = run_episode(slot, agent, prompt, i, cfg.seed + i, cfg.steps, video, cfg.video_fps, cfg.max_retries)
                if rec["video"]:
                    rec["video"] = str(Path(rec["video"]).relative_to(out_dir))
                episodes.append(rec)
                log.info("%s episode %d: %s %s", prompt.name, i, rec["status"], rec["metrics"])
            results = _results(prompts, episodes, cfg, slot.created, extra)
            write_json_atomic(out_dir / RESULTS_FILE, results)
    finally:
        slot.discard()
    return results


def _results(prompts: Sequence[Prompt], episodes: list[dict[str, Any]], cfg: RolloutParams, envs_created: int,
             extra: Mapping[str, Any]) -> dict[str, Any]:
    agg = {}
    for j, p in enumerate(prompts):
        ok = [e["metrics"] for e in episodes if e["prompt"] == p.name and e["kind"] == p.kind and e["status"] == "ok"]
        agg[f"{p.kind}:{p.name}"] = aggregate(ok, cfg.ci, cfg.ci_level, cfg.n_bootstrap, seed=cfg.seed + 1000 * j)
    crashes = [c for e in episodes for c in e["crashes"]]
    return _jsonable({
        "format_version": RESULTS_FORMAT_VERSION,
        "env": {"spec": "HumanSurvival", **ENV_KWARGS},
        "config": {**cfg.model_dump(mode="json"), "extra": dict(extra)},
        "metrics": list(METRICS),
        "prompts": [{"name": p.name, "kind": p.kind, "text": p.text, "cond_scale": p.cond_scale} for p in prompts],
        "episodes": episodes,
        "aggregate": agg,
        "crashes": crashes,
        "n_failed": sum(e["status"] == "failed" for e in episodes),
        "envs_created": envs_created,
    })


# ---------------------------------------------------------------- the real agent

class PolicyAgent:
    """Adapter from :func:`steve1.models.policy.act` to the :class:`Agent` protocol: resizes the
    640x360 frame to 128x128 (INTER_LINEAR, as VPT), keeps the recurrent state (doubled batch for
    guidance), and maps agent indices to a MineRL action dict."""

    def __init__(self, policy: Any, device: str = "cpu", seed: Optional[int] = None):
        import torch

        self.policy, self.device = policy.to(device).eval(), torch.device(device)
        self.generator = torch.Generator(device=self.device)
        if seed is not None:
            self.generator.manual_seed(seed)
        self.state: Any = None
        self._batch = 0

    def reset(self) -> None:
        self.state = None        # made on the first act, with the batch that cond_scale needs

    def act(self, pov: np.ndarray, goal_embed: np.ndarray, cond_scale: float) -> dict[str, Any]:
        import torch

        from steve1.models.policy import act, to_env_actions

        img = cv2.resize(pov, (128, 128), interpolation=cv2.INTER_LINEAR)              # [128,128,3]
        obs = {"img": torch.from_numpy(img)[None].to(self.device),                    # [1,128,128,3]
               "mineclip_embed": torch.from_numpy(np.asarray(goal_embed, np.float32))[None].to(self.device)}
        batch = 2 if cond_scale is not None else 1
        if self.state is None or self._batch != batch:
            self.state, self._batch = self.policy.initial_state(batch, device=self.device), batch
        res = act(self.policy, obs, self.state, cond_scale=cond_scale, generator=self.generator)
        self.state = res.state
        return to_env_actions(res.action)[0]


def make_policy_agent(policy_model: str, policy_weights: str, device: str = "cpu", seed: Optional[int] = None) -> PolicyAgent:
    """The one place wiring rollouts to the policy code: VPT ``.model`` kwargs + STEVE-1 weights."""
    from steve1.models.checkpoints import load_policy_weights, read_policy_kwargs
    from steve1.models.vpt import build_policy

    policy_kwargs, pi_head_kwargs = read_policy_kwargs(policy_model)
    policy = build_policy(policy_kwargs, pi_head_kwargs)
    load_policy_weights(policy, policy_weights, allow_vpt=False)
    return PolicyAgent(policy, device=device, seed=seed)


# ---------------------------------------------------------------- params -> rollouts (steve1 rollout)

def rollouts_from_params(params: Params, out_dir: Optional[str | Path] = None, *, agent: Optional[Agent] = None,
                         env_factory: Optional[EnvFactory] = None, text_encoder: Optional[Callable] = None,
                         device: str = "cpu") -> dict[str, Any]:
    """Run the ``rollout`` section of validated params. The keyword arguments replace the real
    parts (policy agent, MineRL env, MineCLIP text tower), which is how the tests drive it."""
    from steve1.eval.prompt import mineclip_text_encoder, prompt_to_goal
    from steve1.models.prior import load_prior

    rp = params.rollout
    layout = Layout.from_params(params)
    out_dir = Path(out_dir) if out_dir is not None else layout.rollouts
    if env_factory is None:
        _human_survival()                      # fail before loading any model when MineRL is missing
    if agent is None and not (rp.policy_model and rp.policy_weights):
        raise RolloutError("rollout.policy_model and rollout.policy_weights must name the VPT .model file and the "
                           "STEVE-1 weights (params.yaml, section rollout)")
    prompts: list[Prompt] = []
    texts = rp.text_prompts or PAPER_TEXT_PROMPTS
    if texts:
        if text_encoder is None:
            e = params.embed
            text_encoder, _ = mineclip_text_encoder(e.weights, e.preset, e.seed, device)
        prior = load_prior(rp.prior or layout.prior, map_location=device)

        def to_goal(text: str) -> np.ndarray:
            return prompt_to_goal([text], text_encoder, prior, seed=rp.prior_seed, deterministic=rp.prior_deterministic)[0]

        prompts += text_prompts(texts, to_goal, rp.text_cond_scale)
    prompts += visual_prompts(rp.visual_prompts, rp.visual_cond_scale)
    if agent is None:
        agent = make_policy_agent(rp.policy_model, rp.policy_weights, device=device, seed=rp.seed)
    return run_rollouts(prompts, agent, env_factory or make_minerl_env, rp, out_dir,
                        extra={"params": rp.model_dump(), "embed": params.embed.model_dump()})
