"""The rollout loop against the stand-in env: goals and guidance scales handed to the agent,
crash -> recreate -> retry, videos with the prompt banner, the results JSON, metrics and plots; the
stage end to end with a real tiny policy (same params, same bytes; a 768-d goal policy too); MineRL
missing stops the stage before any work with one message."""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest

from steve1.engine import LocalExecutor
from steve1.eval.programmatic import METRICS
from steve1.layout import RolloutLayout
from steve1.params import RolloutParams
from steve1.play.envs import EnvError
from steve1.play.rollout import (BANNER_H, ENV_KWARGS, PAPER_TEXT_PROMPTS, RolloutError, make_minerl_env,
                                 rollouts_from_params, run_rollouts, text_prompts, visual_prompts, visual_prompts_from)
from steve1.play.standin import StandInEnv, noop_action
from tests.fixtures.mp4 import read_rgb_frames

RESULTS_FILE = RolloutLayout(Path(".")).results.name


class RecordingAgent:
    """Walks forward and attacks; records what the loop passes it."""

    def __init__(self):
        self.calls: list[tuple[np.ndarray, float, tuple]] = []
        self.resets = 0
        self.seeds: list[int] = []

    def reset(self, seed=None):
        self.resets += 1
        self.seeds.append(seed)

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
    assert agent.seeds == [10, 11, 10, 11]                     # the agent's sampler too: nothing carries over
    assert len(factory.made) == 1 and res["crashes"] == [] and res["n_failed"] == 0


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
    assert len(factory.made) == 3 and all(e.closed for e in factory.made)
    assert ep["metrics"]["travel_dist"] == pytest.approx(6 * 0.25)   # the retried episode starts from spawn
    assert agent.resets == 2                                          # reset failed before the agent was reset
    assert agent.seeds == [10, 10]                                    # each attempt starts the episode afresh
    assert [p.name for p in (tmp_path / "videos").iterdir()] == ["text-go-ep000.mp4"]   # no temp left behind


def test_episode_failing_every_retry_is_recorded_and_left_out_of_the_aggregate(tmp_path):
    factory = Factory({"crash_at_step": 1}, {"crash_at_step": 2})
    res = run_rollouts(text_prompts({"go": "go"}, _goal_of), RecordingAgent(), factory,
                       _cfg(n_episodes=2, max_retries=1), tmp_path)
    assert [e["status"] for e in res["episodes"]] == ["failed", "ok"]
    assert res["episodes"][0]["reason"] == "the env crashed on each of 2 attempts (rollout.max_retries)"
    assert res["n_failed"] == 1 and len(res["crashes"]) == 2
    assert res["aggregate"]["text:go"]["travel_dist"]["n"] == 1


class LosesOne(LocalExecutor):
    """An executor that runs items here, in reverse order, except one whose (Ray) worker always died."""

    def __init__(self, lost_key):
        self.lost_key = lost_key

    def map(self, fn, items, *, task, setup=None, key=str):
        from steve1.engine import Lost

        for item, result in super().map(fn, list(reversed(items)), task=task, setup=setup):
            yield item, (Lost("its Ray worker died on each of 3 tries (test)") if key(item) == self.lost_key else result)


def test_an_episode_lost_with_its_worker_is_recorded_as_failed_with_the_reason_in_prompt_order(tmp_path):
    prompts = text_prompts({"a": "x", "b": "y"}, _goal_of)
    res = run_rollouts(prompts, RecordingAgent(), Factory(), _cfg(n_episodes=2), tmp_path,
                       executor=LosesOne("text:b:0"))
    assert [(e["prompt"], e["episode"], e["status"]) for e in res["episodes"]] == [
        ("a", 0, "ok"), ("a", 1, "ok"), ("b", 0, "failed"), ("b", 1, "ok")]      # completion order does not matter
    lost = res["episodes"][2]
    assert lost["reason"] == "its Ray worker died on each of 3 tries (test)" and lost["metrics"] is None
    assert res["n_failed"] == 1 and res["aggregate"]["text:b"]["travel_dist"]["n"] == 1
    assert json.loads((tmp_path / RESULTS_FILE).read_text()) == res


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
    frames = read_rgb_frames(tmp_path / "videos" / "text-wood-ep000.mp4")
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
                        "n_failed"}        # no count of envs made: it depends on where episodes ran
    assert res["env"]["kind"] == "standin" and res["env"]["label"] == "stand-in env" and "not Minecraft" in res["env"]["note"]
    assert res["metrics"] == list(METRICS)
    assert res["prompts"] == [{"name": "a", "kind": "text", "text": "x", "cond_scale": 6.0},
                              {"name": "v", "kind": "visual", "text": str(tmp_path / "v.npy"), "cond_scale": 7.0}]
    ep = res["episodes"][0]
    assert set(ep) == {"prompt", "kind", "episode", "seed", "status", "reason", "attempts", "steps", "metrics",
                       "video", "crashes"}                  # no timings: the cached results hold only what params determine
    assert set(ep["metrics"]) == set(METRICS)
    agg = res["aggregate"]["visual:v"]["log"]
    assert set(agg) == {"n", "mean", "std", "min", "max", "ci_low", "ci_high"}
    assert agg["ci_low"] is None                               # one episode: no t-interval, null not NaN


def test_bad_visual_prompt_and_missing_minerl_are_clear_errors(tmp_path):
    np.save(tmp_path / "short.npy", np.ones(10, dtype=np.float32))
    with pytest.raises(RolloutError, match="has 10 values, expected 512"):
        visual_prompts({"s": str(tmp_path / "short.npy")}, dim=512)
    try:
        import minerl  # noqa: F401
    except ImportError:
        with pytest.raises(EnvError, match=r"MineRL cannot start \(MineRL is not installed.*install MineRL 1.0.2 "
                                           r"from its v1.0.2 tag with JDK 8.*xvfb"):
            make_minerl_env()


def test_policy_agent_drives_the_standin_env():
    torch = pytest.importorskip("torch")
    from steve1.play.rollout import PolicyAgent
    from fixtures.policy import build_policy_from_preset

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
    save_prior(prior, tmp_path / "models" / "prior.pt")
    np.save(tmp_path / "v.npy", np.ones(512, dtype=np.float32))
    params = validate_params({"paths": {"eval": str(tmp_path / "eval"), "models": str(tmp_path / "models")},
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
    assert res["config"]["extra"]["embed"] == {"weights": None, "preset": "tiny", "seed": 0}   # the declared keys only


# ---------------------------------------------------------------- metrics, plots, banner, visual prompt sets

def test_metrics_hold_targeted_prompt_means_under_the_env_name_and_plots_cover_every_metric(tmp_path):
    prompts = text_prompts({"explore": "go explore", "sky": "look at the sky"}, _goal_of)   # sky has no target
    res = run_rollouts(prompts, RecordingAgent(), Factory(), _cfg(n_episodes=2, steps=8), tmp_path)
    out = RolloutLayout(tmp_path)
    assert json.loads(out.metrics.read_text()) == {"standin": {"explore": 2.0}}   # 8 steps forward x 0.25
    assert res["aggregate"]["text:explore"]["travel_dist"]["mean"] == 2.0
    for metric in METRICS:
        rows = json.loads(out.plot(metric).read_text())
        assert [r["prompt"] for r in rows] == ["explore", "sky"]
        agg = res["aggregate"]["text:sky"][metric]
        assert rows[1] == {"prompt": "sky", "kind": "text", "mean": agg["mean"], "ci_low": agg["ci_low"],
                           "ci_high": agg["ci_high"], "n": 2}


def test_video_banner_names_the_env(tmp_path, monkeypatch):
    import steve1.play.rollout as R

    labels = []

    class Spy(R.VideoSink):
        def __init__(self, path, label, fps):
            labels.append(label)
            super().__init__(path, label, fps)

    monkeypatch.setattr(R, "VideoSink", Spy)
    run_rollouts(text_prompts({"wood": "chop a tree"}, _goal_of), RecordingAgent(), Factory(),
                 _cfg(n_episodes=1, steps=2, video=True), tmp_path)
    assert labels == ["'chop a tree' (text, scale 6) | stand-in env"]


def test_visual_prompt_sets_from_a_folder_or_steve1_zip_of_pickles(tmp_path):
    folder = tmp_path / "goals"
    folder.mkdir()
    np.save(folder / "cave.npy", np.full(512, 2.0, np.float32))
    with zipfile.ZipFile(tmp_path / "visual_prompt_embeds.zip", "w") as z:   # as STEVE-1's: <name>.pkl of [1,512]
        z.writestr("visual_prompt_embeds/wood.pkl", pickle.dumps(np.ones((1, 512), np.float32)))
        z.writestr("visual_prompt_embeds/dig.pkl", pickle.dumps(np.zeros((1, 512), np.float32)))
    assert [(p.name, p.goal[0]) for p in visual_prompts_from(folder, dim=512)] == [("cave", 2.0)]
    prompts = visual_prompts_from(tmp_path / "visual_prompt_embeds.zip", 7.0, dim=512)
    assert [(p.name, p.kind, p.cond_scale, float(p.goal.sum())) for p in prompts] == [
        ("dig", "visual", 7.0, 0.0), ("wood", "visual", 7.0, 512.0)]
    with zipfile.ZipFile(tmp_path / "evil.zip", "w") as z:
        z.writestr("x/evil.pkl", pickle.dumps(os.system))   # not print: Ray's progress bars replace builtins.print
    with pytest.raises(RolloutError, match=f"refusing to unpickle {os.system.__module__}.system"):
        visual_prompts_from(tmp_path / "evil.zip")
    with pytest.raises(RolloutError, match="expected 768"):
        visual_prompts_from(folder, dim=768)


# ---------------------------------------------------------------- the stage, end to end

def _project(tmp_path, dim=512, **rollout):
    """A tiny trained-run stand-in: random tiny weights at the run's best.weights, a tiny prior, params."""
    import torch
    import yaml

    from steve1.models.build import build_policy_for_params
    from steve1.models.checkpoints import save_policy_weights
    from steve1.models.prior import PriorConfig, PriorCVAE
    from steve1.params import TrainParams
    from steve1.train.prior import save_prior

    torch.manual_seed(0)
    save_policy_weights(build_policy_for_params(TrainParams(mineclip_embed_dim=dim)),
                        tmp_path / "models" / "default" / "best.weights")
    save_prior(PriorCVAE(PriorConfig(embed_dim=dim, hidden_dim=16, latent_dim=8)), tmp_path / "models" / "prior.pt")
    params = {"paths": {"models": str(tmp_path / "models"), "eval": str(tmp_path / "eval")},
              "weights": {"dir": str(tmp_path / "weights")}, "train": {"mineclip_embed_dim": dim},
              "rollout": {"text_prompts": {"wood": "chop a tree", "explore": "go explore"}, "n_episodes": 2,
                          "steps": 6, "device": "cpu", "n_bootstrap": 200, **rollout}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return tmp_path / "params.yaml"


def _digests(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_stage_plays_the_trained_policy_in_the_standin_env_and_repeats_byte_for_byte(tmp_path, capsys):
    from stages.rollout import main

    params = _project(tmp_path)
    assert main(["--params", str(params)]) == 0
    assert "rollout (stand-in env): 2 prompts, 4 episodes, 0 failed" in capsys.readouterr().out
    out = RolloutLayout(tmp_path / "eval" / "rollouts" / "default")
    res = json.loads(out.results.read_text())
    assert [(e["prompt"], e["episode"], e["seed"], e["steps"]) for e in res["episodes"]] == [
        ("wood", 0, 0, 6), ("wood", 1, 1, 6), ("explore", 0, 0, 6), ("explore", 1, 1, 6)]
    assert sorted(p.name for p in out.videos.iterdir()) == [
        "text-explore-ep000.mp4", "text-explore-ep001.mp4", "text-wood-ep000.mp4", "text-wood-ep001.mp4"]
    assert set(json.loads(out.metrics.read_text())["standin"]) == {"wood", "explore"}
    first = _digests(out.dir)
    assert main(["--params", str(params)]) == 0
    assert _digests(out.dir) == first             # same params, same bytes: results, videos, metrics, plots


def test_a_768_d_goal_policy_rolls_out(tmp_path):
    import torch

    from steve1.params import load_params

    params = load_params(_project(tmp_path, dim=768))
    np.save(tmp_path / "v.npy", np.ones(768, np.float32))
    params.rollout.visual_prompts = {"v": str(tmp_path / "v.npy")}
    params.rollout.n_episodes, params.rollout.video = 1, False
    res = rollouts_from_params(params, text_encoder=lambda texts: torch.ones(len(texts), 768))
    assert res["n_failed"] == 0 and len(res["episodes"]) == 3      # 2 text + 1 visual prompt
    np.save(tmp_path / "short.npy", np.ones(512, np.float32))
    params.rollout.visual_prompts = {"v": str(tmp_path / "short.npy")}
    with pytest.raises(RolloutError, match="has 512 values, expected 768"):
        rollouts_from_params(params, text_encoder=lambda texts: torch.ones(len(texts), 768))


def test_policy_model_file_gives_the_architecture_and_the_weights_the_goal_width(tmp_path):
    import copy

    import torch

    from steve1.play.rollout import load_rollout_policy
    from steve1.models.vpt import PRESETS

    _project(tmp_path, dim=768)
    kw = copy.deepcopy(PRESETS["tiny"])
    del kw["policy_kwargs"]["mineclip_embed_dim"]            # as in VPT's .model files
    model = tmp_path / "tiny.model"
    model.write_bytes(pickle.dumps({"model": {"args": {"net": {"args": kw["policy_kwargs"]},
                                                       "pi_head_opts": kw["pi_head_kwargs"]}}}))
    policy = load_rollout_policy(tmp_path / "models" / "default" / "best.weights", str(model))
    assert policy.cfg.mineclip_embed_dim == 768 and policy.cfg.img_shape == (128, 128, 3)
    vpt = {k: v for k, v in policy.state_dict().items() if "mineclip_embed_linear" not in k}
    torch.save(vpt, tmp_path / "vpt.weights")
    with pytest.raises(RolloutError, match="no goal layer"):
        load_rollout_policy(tmp_path / "vpt.weights", str(model))


def test_minerl_missing_stops_the_stage_before_any_work_with_one_message(tmp_path, capsys, monkeypatch):
    import steve1.play.envs as envs
    from stages.rollout import main

    params = tmp_path / "params.yaml"      # no weights, no prior: the MineRL check must come first
    params.write_text(f"paths: {{models: {tmp_path / 'models'}, eval: {tmp_path / 'eval'}}}\nrollout: {{env: minerl}}\n")
    monkeypatch.setattr(envs, "check_minerl", lambda: ["the minerl package is not installed", "no java on PATH"])
    assert main(["--params", str(params)]) == 1
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "MineRL cannot start (the minerl package is not installed; no java" in err
    assert "MineRL 1.0.2 from its v1.0.2 tag with JDK 8" in err and "xvfb" in err and "weights" not in err
    assert not (tmp_path / "eval").exists()

    def broken():
        raise RuntimeError("Minecraft process died")

    monkeypatch.setattr(envs, "check_minerl", lambda: [])
    monkeypatch.setattr(envs, "make_minerl_env", broken)
    assert main(["--params", str(params)]) == 1
    err = capsys.readouterr().err
    assert "MineRL cannot start (making HumanSurvival failed: RuntimeError('Minecraft process died'))" in err
    assert not (tmp_path / "eval").exists()


def test_check_minerl_names_the_package_java_and_display(monkeypatch):
    import steve1.play.envs as envs

    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.setattr(envs.shutil, "which", lambda name: None)
    problems = envs.check_minerl()
    assert "no java on PATH (MineRL 1.0.2 runs Minecraft on JDK 8)" in problems
    assert any("no X display" in p and "xvfb-run" in p for p in problems)
    monkeypatch.setattr(envs, "_java_version", lambda: "11.0.2")
    assert "java is version 11.0.2, MineRL 1.0.2 needs JDK 8 (1.8)" in envs.check_minerl()


def test_cli_rollout_is_the_stage_code(tmp_path):
    from typer.testing import CliRunner

    from steve1.cli import app

    params = _project(tmp_path)
    result = CliRunner().invoke(app, ["rollout", "--params", str(params), "--episodes", "1", "--steps", "3",
                                      "--out", str(tmp_path / "cli")])
    assert result.exit_code == 0, result.output
    assert "rollout (stand-in env): 2 prompts, 2 episodes" in result.output
    assert json.loads(RolloutLayout(tmp_path / "cli").results.read_text())["config"]["steps"] == 3


@pytest.mark.parametrize("flags, key", [(["--env", "bogus"], "env"), (["--device", "tpu"], "device")])
def test_cli_rollout_bad_overrides_are_one_line_naming_the_key(tmp_path, flags, key):
    from typer.testing import CliRunner

    from steve1.cli import app

    params = _project(tmp_path)
    result = CliRunner().invoke(app, ["rollout", "--params", str(params), *flags])
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.output.startswith("error: steve1 rollout options is invalid:") and f"key '{key}'" in result.output


def test_unknown_rollout_target_metric_is_a_params_error(tmp_path):
    from steve1.params import ParamsError, load_params
    from steve1.play.rollout import check_targets

    p = load_params(_project(tmp_path))
    p.rollout.targets = {**p.rollout.targets, "chop a tree": "no_such_metric"}
    with pytest.raises(ParamsError, match="key 'rollout.targets'.*no_such_metric"):
        check_targets(p)


def test_a_missing_prior_is_one_error_line_from_the_stage_and_the_cli(tmp_path, capsys):
    from typer.testing import CliRunner

    from stages.rollout import main
    from steve1.cli import app

    params = _project(tmp_path)
    (tmp_path / "models" / "prior.pt").unlink()
    assert main(["--params", str(params)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / 'models' / 'prior.pt'}: prior weights not found") and err.count("\n") == 1
    result = CliRunner().invoke(app, ["rollout", "--params", str(params)])
    assert result.exit_code == 1 and "error: " in result.output and "prior weights not found" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception


# ---------------------------------------------------------------- engine: ray

@pytest.fixture(scope="module")
def rollout_on_local(tmp_path_factory):
    """The stage with engine: local (2 prompts x 2 episodes, videos on): the folder and its bytes."""
    from stages.rollout import main

    root = tmp_path_factory.mktemp("rollout-engines")
    params = _project(root)
    assert main(["--params", str(params)]) == 0
    out = root / "eval" / "rollouts" / "default"
    return params, out, _digests(out)


def _on_ray(params: Path, **rollout) -> None:
    import shutil

    import yaml

    p = yaml.safe_load(params.read_text())
    p["engine"] = "ray"
    p["ray"] = {"max_retries": 2, "rollout": {"num_cpus": 1, "num_gpus": 0, **rollout}}
    params.write_text(yaml.safe_dump(p, sort_keys=False))
    shutil.rmtree(params.parent / "eval")      # the same folder as the local run: results name no folder, but be sure


def test_ray_engine_plays_the_bytes_the_local_engine_plays(ray_local, rollout_on_local, capsys):
    from stages.rollout import main

    params, out, expected = rollout_on_local
    _on_ray(params, workers=2)                 # two actors, each one env + one policy, episodes spread over both
    assert main(["--params", str(params)]) == 0
    assert "rollout (stand-in env): 2 prompts, 4 episodes, 0 failed" in capsys.readouterr().out
    got = _digests(out)
    assert sorted(got) == sorted(expected) and len(got) > 4      # results, metrics, plots and four videos
    assert [k for k in expected if got[k] != expected[k]] == []


def test_a_rollout_actor_killed_mid_episode_is_restarted_and_the_episode_replayed(ray_local, rollout_on_local):
    from fixtures.ray_kill import Killer
    from stages.rollout import main

    params, out, expected = rollout_on_local
    _on_ray(params, workers=1)
    killer = Killer("rollout:text:explore:0")
    killer.start()
    assert main(["--params", str(params)]) == 0
    killer.stop.set()
    assert len(killer.killed) == 1, "the episode was never seen running in its actor"
    got = _digests(out)
    assert [k for k in expected if got.get(k) != expected[k]] == [] and sorted(got) == sorted(expected)


@pytest.mark.slow
def test_on_two_nodes_the_rollout_writes_the_local_bytes(ray_two_nodes, rollout_on_local):
    from stages.rollout import main

    params, out, expected = rollout_on_local
    _on_ray(params, workers=2)                 # one actor per node
    assert main(["--params", str(params)]) == 0
    assert _digests(out) == expected
