"""The rollout loop against the stand-in env: goals and guidance scales handed to the agent,
crash -> recreate -> retry, videos with the prompt banner, the results JSON."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from steve1.eval.programmatic import METRICS
from steve1.eval.rollout import (BANNER_H, ENV_KWARGS, PAPER_TEXT_PROMPTS, RESULTS_FILE, RolloutError,
                                 make_minerl_env, rollouts_from_params, run_rollouts, text_prompts, visual_prompts)
from steve1.eval.standin_env import StandInEnv, noop_action
from steve1.params import RolloutParams


class RecordingAgent:
    """Walks forward and attacks; records what the loop passes it."""

    def __init__(self):
        self.calls: list[tuple[np.ndarray, float, tuple]] = []
        self.resets = 0

    def reset(self):
        self.resets += 1

    def act(self, pov, goal_embed, cond_scale):
        self.calls.append((np.array(goal_embed), cond_scale, pov.shape))
        a = noop_action()
        a["forward"] = 1
        return a


class Factory:
    """Makes stand-in envs from a list of constructor kwargs (then plain ones); keeps them all."""

    def __init__(self, *schedules):
        self.schedules, self.made = list(schedules), []

    def __call__(self):
        env = StandInEnv(**(self.schedules.pop(0) if self.schedules else {}))
        self.made.append(env)
        return env


def _goal_of(text):
    return np.full(512, float(len(text)), dtype=np.float32)


def _cfg(**kw):
    base = dict(n_episodes=2, steps=6, seed=10, max_retries=2, video=False, n_bootstrap=200)
    return RolloutParams(**{**base, **kw})


def test_goals_and_guidance_scales_reach_the_agent(tmp_path):
    np.save(tmp_path / "cave.npy", np.arange(512, dtype=np.float32)[None])       # [1,512] accepted
    prompts = text_prompts({"wood": "chop a tree"}, _goal_of) + visual_prompts({"cave": str(tmp_path / "cave.npy")})
    agent, factory = RecordingAgent(), Factory()
    res = run_rollouts(prompts, agent, factory, _cfg(), tmp_path / "out")

    assert len(agent.calls) == 2 * 2 * 6 and agent.resets == 4
    text_calls, visual_calls = agent.calls[:12], agent.calls[12:]
    assert all(s == 6.0 for _, s, _ in text_calls) and all(s == 7.0 for _, s, _ in visual_calls)
    assert all(np.array_equal(g, _goal_of("chop a tree")) for g, _, _ in text_calls)
    assert all(np.array_equal(g, np.arange(512)) for g, _, _ in visual_calls)
    assert all(shape == (360, 640, 3) for _, _, shape in agent.calls)
    assert factory.made[0].seeds_used == [10, 11, 10, 11]     # one env reused; episode i -> seed + i
    assert res["envs_created"] == 1 and res["crashes"] == [] and res["n_failed"] == 0


def test_paper_prompts_are_the_eleven_of_the_paper():
    assert list(PAPER_TEXT_PROMPTS) == ["dig", "dirt", "sky", "leaves", "wood", "seeds", "flower", "explore",
                                        "swim", "underwater", "inventory"]
    assert PAPER_TEXT_PROMPTS["sky"] == "look at the sky"
    assert ENV_KWARGS["resolution"] == [640, 360] and ENV_KWARGS["fov_range"] == [70, 70]


def test_crash_closes_recreates_and_retries_the_episode(tmp_path):
    factory = Factory({"crash_at_step": 3}, {"crash_on_reset": True}, {})
    agent = RecordingAgent()
    res = run_rollouts(text_prompts({"go": "go"}, _goal_of), agent, factory, _cfg(n_episodes=1, video=True),
                       tmp_path)
    ep = res["episodes"][0]
    assert ep["status"] == "ok" and ep["attempts"] == 3 and ep["steps"] == 6
    assert [(c["phase"], c["step"], c["attempt"]) for c in res["crashes"]] == [("step", 3, 1), ("reset", None, 2)]
    assert "scripted crash at step 3" in res["crashes"][0]["error"]
    assert res["envs_created"] == 3 and all(e.closed for e in factory.made)
    assert ep["metrics"]["travel_dist"] == pytest.approx(6 * 0.25)   # the retried episode starts from spawn
    assert agent.resets == 2                                          # reset failed before the agent was reset
    assert [p.name for p in (tmp_path / "videos").iterdir()] == ["text-go-ep000.mp4"]   # no temp left behind


def test_episode_failing_every_retry_is_recorded_and_left_out_of_the_aggregate(tmp_path):
    factory = Factory({"crash_at_step": 1}, {"crash_at_step": 2})
    res = run_rollouts(text_prompts({"go": "go"}, _goal_of), RecordingAgent(), factory,
                       _cfg(n_episodes=2, max_retries=1), tmp_path)
    assert [e["status"] for e in res["episodes"]] == ["failed", "ok"]
    assert res["n_failed"] == 1 and len(res["crashes"]) == 2
    assert res["aggregate"]["text:go"]["travel_dist"]["n"] == 1


def test_agent_errors_are_not_retried(tmp_path):
    class Broken(RecordingAgent):
        def act(self, pov, goal_embed, cond_scale):
            raise ValueError("agent bug")

    factory = Factory()
    with pytest.raises(ValueError, match="agent bug"):
        run_rollouts(text_prompts({"go": "go"}, _goal_of), Broken(), factory, _cfg(), tmp_path)
    assert len(factory.made) == 1 and factory.made[0].closed


def test_video_is_readable_and_carries_the_prompt_banner(tmp_path):
    run_rollouts(text_prompts({"wood": "chop a tree"}, _goal_of), RecordingAgent(), Factory(),
                 _cfg(n_episodes=1, steps=5, video=True), tmp_path)
    cap = cv2.VideoCapture(str(tmp_path / "videos" / "text-wood-ep000.mp4"))
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(f, cv2.COLOR_BGR2RGB))
    cap.release()
    assert len(frames) == 5 and frames[0].shape == (360 + BANNER_H, 640, 3)
    banner, pov = frames[0][:BANNER_H].astype(int), frames[0][BANNER_H:].astype(int)
    assert (banner > 200).all(axis=2).mean() > 0.8            # white band ...
    assert (banner < 100).all(axis=2).sum() > 100             # ... with dark text on it
    assert np.abs(pov[10, 10] - [120, 165, 255]).max() < 20    # the stand-in's sky under it


def test_results_json_schema(tmp_path):
    np.save(tmp_path / "v.npy", np.ones(512, dtype=np.float32))
    prompts = text_prompts({"a": "x"}, _goal_of) + visual_prompts({"v": str(tmp_path / "v.npy")})
    run_rollouts(prompts, RecordingAgent(), Factory(), _cfg(n_episodes=1, ci="t"), tmp_path / "o")

    def no_nan(c):
        raise AssertionError(f"non-JSON constant {c}")

    res = json.loads((tmp_path / "o" / RESULTS_FILE).read_text(), parse_constant=no_nan)
    assert set(res) == {"format_version", "env", "config", "metrics", "prompts", "episodes", "aggregate", "crashes",
                        "n_failed", "envs_created"}
    assert res["metrics"] == list(METRICS)
    assert res["prompts"] == [{"name": "a", "kind": "text", "text": "x", "cond_scale": 6.0},
                              {"name": "v", "kind": "visual", "text": str(tmp_path / "v.npy"), "cond_scale": 7.0}]
    ep = res["episodes"][0]
    assert set(ep) == {"prompt", "kind", "episode", "seed", "status", "attempts", "steps", "seconds", "metrics",
                       "video", "crashes"}
    assert set(ep["metrics"]) == set(METRICS)
    agg = res["aggregate"]["visual:v"]["log"]
    assert set(agg) == {"n", "mean", "std", "min", "max", "ci_low", "ci_high"}
    assert agg["ci_low"] is None                               # one episode: no t-interval, null not NaN


def test_bad_visual_prompt_and_missing_minerl_are_clear_errors(tmp_path):
    np.save(tmp_path / "short.npy", np.ones(10, dtype=np.float32))
    with pytest.raises(RolloutError, match="has 10 values, expected 512"):
        visual_prompts({"s": str(tmp_path / "short.npy")})
    try:
        import minerl  # noqa: F401
    except ImportError:
        with pytest.raises(RolloutError, match=r"MineRL is not installed: install MineRL 1.0.2 from its v1.0.2 tag"):
            make_minerl_env()


def test_policy_agent_drives_the_standin_env():
    torch = pytest.importorskip("torch")
    from steve1.eval.rollout import PolicyAgent
    from steve1.models.vpt import build_policy_from_preset

    torch.manual_seed(0)
    agent = PolicyAgent(build_policy_from_preset("tiny"), seed=0)
    env = StandInEnv()
    obs = env.reset()
    agent.reset()
    for _ in range(3):
        action = agent.act(obs["pov"], np.zeros(512, np.float32), 6.0)
        obs, _, _, _ = env.step(action)        # the stand-in checks the 24 MineRL keys
    assert set(action) == set(noop_action())


def test_rollouts_from_params_use_prior_goals_and_paper_scales(tmp_path):
    import torch

    from steve1.eval.prompt import prompt_to_goal
    from steve1.models.prior import PriorCVAE
    from steve1.params import validate_params
    from steve1.train.prior import save_prior

    torch.manual_seed(0)
    prior = PriorCVAE().eval()
    save_prior(prior, tmp_path / "prior.pt")
    np.save(tmp_path / "v.npy", np.ones(512, dtype=np.float32))
    params = validate_params({"paths": {"eval": str(tmp_path / "eval"), "models": str(tmp_path)},
                              "rollout": {"text_prompts": {"sky": "look at the sky"},
                                          "visual_prompts": {"v": str(tmp_path / "v.npy")},
                                          "n_episodes": 1, "steps": 2, "video": False, "prior_seed": 5}})

    def encoder(texts):
        return torch.ones(len(texts), 512)

    agent = RecordingAgent()
    res = rollouts_from_params(params, agent=agent, env_factory=Factory(), text_encoder=encoder)
    expected = prompt_to_goal(["look at the sky"], encoder, prior, seed=5)[0]
    assert np.allclose(agent.calls[0][0], expected) and agent.calls[0][1] == 6.0
    assert np.array_equal(agent.calls[2][0], np.ones(512)) and agent.calls[2][1] == 7.0
    assert (tmp_path / "eval" / "rollouts" / "default" / RESULTS_FILE).is_file()
    assert res["config"]["extra"]["params"]["prior_seed"] == 5
