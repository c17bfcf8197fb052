"""The generate stage against the stand-in env: STEVE-1's switching and spinning rules, memory resets
at switches and after spins, recorded actions that map to and from the agent action space exactly,
the manifest, a lossless companion video the embed step reads, and same params -> same bytes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from steve1 import actions as A
from steve1.data import formats
from steve1.data.episodes import EpisodeReader, episode_path
from steve1.layout import Layout
from steve1.params import AgentSpec, DecodeParams, GenerateParams, load_params
from steve1.play.generate import A_GENERATION, episode_id, generate_all, is_rl, play_episode, switch_probs
from steve1.play.standin import StandInEnv


class ScriptedAgent:
    """Samples seeded agent-space actions; logs the env step at each reset and act (the env's own clock)."""

    def __init__(self, env_clock, seed):
        self.clock, self.rng = env_clock, np.random.default_rng(seed)
        self.resets: list[int] = []
        self.acts: list[int] = []

    def reset(self):
        self.resets.append(self.clock())

    def reseed(self, seed):
        self.rng = np.random.default_rng(seed)

    def act(self, frame):
        assert frame.shape == (128, 128, 3) and frame.dtype == np.uint8
        self.acts.append(self.clock())
        return int(self.rng.integers(A.N_BUTTONS)), int(self.rng.integers(A.N_CAMERA))


def _cfg(**kw):
    base = dict(n_episodes=1, agents=[{"name": "a"}, {"name": "b"}], max_steps=400, min_steps=10,
                switch_agent_prob=0.03, spin_prob=0.03)
    return GenerateParams(**{**base, **kw})


def _play(cfg, seed=0, env=None):
    env = env or StandInEnv()
    clock = lambda: getattr(env, "t", 0)                      # noqa: E731  steps taken since reset
    agents = [ScriptedAgent(clock, 1), ScriptedAgent(clock, 2)]
    frames = []
    played = play_episode(env, agents, cfg, switch_probs(cfg.agents, cfg), np.random.default_rng(seed), 7,
                          frames.append)
    return played, agents, env, frames


def test_switch_probabilities_follow_steve1s_rl_rule():
    cfg = _cfg()
    plain, rl = AgentSpec(name="bc", weights="foundation-model-2x.weights"), AgentSpec(
        name="x", weights="rl-from-foundation-2x.weights")
    assert is_rl(rl) and not is_rl(plain) and is_rl(AgentSpec(name="rl_from_house_2x"))
    assert switch_probs([plain, plain], cfg) == (0.03, 0.03)
    assert switch_probs([rl, plain], cfg) == (pytest.approx(1 / 3000), pytest.approx(1 / 1000))  # towards rl: 1/3000
    assert switch_probs([plain, rl], cfg) == (pytest.approx(1 / 1000), pytest.approx(1 / 3000))
    assert switch_probs([rl, rl], cfg) == (0.03, 0.03)


def test_memory_resets_at_every_switch_and_after_every_spin_and_nowhere_else():
    played, agents, env, _ = _play(_cfg())
    assert len(played.switches) > 3 and len(played.spins) > 3            # the rules fired
    first = played.switches[0]
    assert first == (0, played.first_agent)
    expected = {0: [0], 1: [0]}                                          # both start afresh (new agents per episode)
    for step, agent in played.switches[1:]:
        expected[agent].append(step)                                      # the agent that takes over, before it acts
    spin_steps = set()
    for spin in played.spins:
        last = spin.step + spin.n_steps - 1
        spin_steps.update(range(spin.step, last + 1))
        expected[_active_at(played, last)].append(last)                   # after its last spin action
    assert {k: sorted(v) for k, v in expected.items()} == {0: sorted(agents[0].resets), 1: sorted(agents[1].resets)}
    # agents never act during a spin, and exactly one acts on every other step
    acted = sorted(agents[0].acts + agents[1].acts)
    assert acted == [t for t in range(played.n_steps) if t not in spin_steps]
    assert all(played.agent_of_step[t] == -1 for t in spin_steps)


def _active_at(played, t):
    active = played.first_agent
    for step, agent in played.switches:
        if step <= t:
            active = agent
    return active


def test_spins_turn_90_to_360_degrees_at_20_to_30_per_step_left_or_right():
    played, _, env, _ = _play(_cfg(spin_prob=0.05, max_steps=600))
    directions = set()
    for spin in played.spins:
        per = abs(spin.degrees_per_step)
        assert 20 <= per <= 30 and 90 - per < spin.n_steps * per <= 360
        directions.add(np.sign(spin.degrees_per_step))
        for t in range(spin.step, spin.step + spin.n_steps):
            a = played.env_actions[t]
            assert list(a[A.CAMERA_KEY]) == [0.0, spin.degrees_per_step]
            assert not any(a[k] for k in A.ENV_BUTTON_KEYS)               # it stops: nothing else pressed
    assert directions == {-1, 1}


def test_seeded_episode_repeats_exactly():
    p1, _, _, f1 = _play(_cfg(), seed=3)
    p2, _, _, f2 = _play(_cfg(), seed=3)
    assert p1.switches == p2.switches and [s.as_row() for s in p1.spins] == [s.as_row() for s in p2.spins]
    assert all(np.array_equal(a, b) for a, b in zip(f1, f2)) and len(f1) == p1.n_steps


def test_an_episode_the_env_ends_early_is_dropped_with_the_reason(tmp_path):
    cfg = _cfg(n_episodes=2, min_steps=50, max_steps=80)
    report = generate_all(cfg, tmp_path / "ep", tmp_path / "raw", tmp_path / "ep" / "manifest.json", tmp_path,
                          DecodeParams(), lambda: StandInEnv(max_steps=30), agents=_agents())
    rows = json.loads((tmp_path / "ep" / "manifest.json").read_text())["episodes"]
    assert report.n_ok == 0 and [r["status"] for r in rows.values()] == ["dropped", "dropped"]
    assert rows[episode_id(0, 0)]["reason"] == ("30 steps, fewer than generate.min_steps (50): "
                                                "the env ended the episode at step 30")
    assert not list((tmp_path / "ep").glob("*.h5")) and not list((tmp_path / "raw").iterdir())


def test_a_crash_ends_the_episode_and_the_env_is_made_anew(tmp_path):
    envs = []

    def factory():
        envs.append(StandInEnv(crash_at_step=20 if not envs else None))
        return envs[-1]

    cfg = _cfg(n_episodes=2, min_steps=30, max_steps=40)
    report = generate_all(cfg, tmp_path / "ep", tmp_path / "raw", tmp_path / "m.json", tmp_path, DecodeParams(),
                          factory, agents=_agents())
    rows = report.rows
    assert rows[episode_id(0, 0)]["status"] == "dropped" and "env crashed at step 20" in rows[episode_id(0, 0)]["reason"]
    assert rows[episode_id(0, 1)]["status"] == "ok" and rows[episode_id(0, 1)]["n_steps"] == 40
    assert len(envs) == 2 and envs[0].closed


def _agents():
    clock = lambda: 0        # noqa: E731
    return [ScriptedAgent(clock, 1), ScriptedAgent(clock, 2)]


# ---------------------------------------------------------------- the stage, end to end

def _params(tmp_path: Path, **generate) -> Path:
    g = {"n_episodes": 2, "agents": [{"name": "random-tiny-a", "seed": 1}, {"name": "random-tiny-b", "seed": 2}],
         "max_steps": 60, "min_steps": 40, "switch_agent_prob": 0.05, "spin_prob": 0.03, "device": "cpu", **generate}
    params = {"paths": {"generated": str(tmp_path / "generated")}, "weights": {"dir": str(tmp_path / "weights")},
              "decode": {"frame_codec": "blosc-lz4"}, "generate": g}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    from stages.generate import main

    root = tmp_path_factory.mktemp("gen")
    params = _params(root)
    assert main(["--params", str(params)]) == 0
    return root, Layout.from_params(load_params(params))


def test_stage_writes_episodes_videos_and_a_manifest_that_records_everything(generated):
    root, layout = generated
    manifest = json.loads(layout.generated_manifest.read_text())
    assert manifest["env"] == {"kind": "standin", "label": "stand-in env"}
    rows = manifest["episodes"]
    assert list(rows) == [episode_id(0, 0), episode_id(0, 1)]
    for i, (eid, row) in enumerate(rows.items()):
        assert row["status"] == "ok" and row["world_seed"] == i and row["n_steps"] == 60 and row["end"] == "max_steps"
        assert row["agents"] == ["random-tiny-a", "random-tiny-b"] and row["is_rl"] == [False, False]
        assert row["agent_files"] == [["preset:tiny", "random:seed=1"], ["preset:tiny", "random:seed=2"]]
        assert row["switches"][0] == [0, row["first_agent"]] and {"switches", "spins"} <= set(row)
        with EpisodeReader(episode_path(layout.generated_episodes, eid)) as ep:
            assert ep.n_frames == 60 and ep.frames().shape == (60, 128, 128, 3)
            assert json.loads(ep.attrs[A_GENERATION]) == row                # the file carries its own record
            assert list(ep.array(formats.SOURCE_STEP)) == list(range(60)) and not ep.array(formats.GUI_OPEN).any()
        assert (layout.generated_videos / f"{eid}.mp4").is_file()


def test_recorded_actions_map_to_and_from_the_agent_action_space_exactly(generated):
    _, layout = generated
    rows = json.loads(layout.generated_manifest.read_text())["episodes"]
    assert any(r["spins"] for r in rows.values())                          # both kinds of step are checked
    for eid, row in rows.items():
        spin_steps = {t for s in row["spins"] for t in range(s["step"], s["step"] + s["n_steps"])}
        with EpisodeReader(episode_path(layout.generated_episodes, eid)) as ep:
            env = {k: ep.array(f"{formats.ENV_ACTIONS}/{k}") for k in ep.env_action_keys()}
            buttons, camera = ep.array(formats.BUTTONS), ep.array(formats.CAMERA)
        assert set(env) == {*A.ENV_BUTTON_KEYS, A.CAMERA_KEY}
        b, c = A.env_to_agent(env)                                          # env -> agent: what training reads
        assert np.array_equal(b, buttons) and np.array_equal(c, camera)
        for t in range(len(buttons)):
            back = A.agent_to_env(int(buttons[t]), int(camera[t]))          # agent -> env
            if t in spin_steps:       # 20-30 degrees of yaw: beyond the agent space's +-10, clipped as STEVE-1 trained
                assert abs(env[A.CAMERA_KEY][t][1]) >= 20 and abs(back[A.CAMERA_KEY][1]) == A.CAMERA_MAXVAL
            else:                     # an agent's action: exactly the env action taken
                assert all(back[k] == env[k][t] for k in A.ENV_BUTTON_KEYS), t
                assert np.array_equal(np.float32(back[A.CAMERA_KEY]), env[A.CAMERA_KEY][t]), t


def test_companion_video_is_lossless_and_the_embed_step_reads_it(generated):
    from stages.embed_generated import main as embed_main

    root, layout = generated
    eid = episode_id(0, 0)
    cap = cv2.VideoCapture(str(layout.generated_videos / f"{eid}.mp4"))
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f)
    cap.release()
    assert len(frames) == 60 and frames[0].shape == (160, 256, 3)           # MineCLIP's input size
    env = StandInEnv()                                                        # frame 0 is the world's first view
    env.seed(0)
    pov = env.reset()["pov"]
    expected = cv2.cvtColor(cv2.resize(pov, (256, 160), interpolation=cv2.INTER_LINEAR), cv2.COLOR_RGB2BGR)
    assert np.array_equal(frames[0], expected)                               # PNG-coded: bit for bit
    assert embed_main(["--params", str(root / "params.yaml")]) == 0
    manifest = json.loads((layout.generated_embeds / "manifest.json").read_text())
    assert manifest["weights"] == "random-tiny:seed=0"
    assert {k: v["n_frames"] for k, v in manifest["episodes"].items()} == {episode_id(0, 0): 60, episode_id(0, 1): 60}


def test_same_params_same_bytes(generated, tmp_path):
    from stages.generate import main

    root, layout = generated
    again = _params(tmp_path)
    assert main(["--params", str(again)]) == 0
    other = Layout.from_params(load_params(again))
    for a, b in ((layout.generated_episodes, other.generated_episodes), (layout.generated_videos, other.generated_videos)):
        assert _digests(a) == _digests(b)


def test_decode_frame_quality_reaches_generated_episodes(tmp_path):
    """generate once never passed decode.frame_quality to write_episode: every episode was quality 85."""
    from stages.generate import main

    sizes = {}
    for q in (30, 95):
        (tmp_path / f"q{q}").mkdir()
        path = _params(tmp_path / f"q{q}", n_episodes=1, max_steps=40, min_steps=40)
        raw = yaml.safe_load(path.read_text())
        raw["decode"] = {"frame_codec": "jpeg", "frame_quality": q}
        path.write_text(yaml.safe_dump(raw))
        assert main(["--params", str(path)]) == 0
        layout = Layout.from_params(load_params(path))
        eid = episode_id(0, 0)
        with EpisodeReader(episode_path(layout.generated_episodes, eid)) as ep:
            assert int(ep.attrs[formats.A_FRAME_QUALITY]) == q
            assert json.loads(ep.attrs[formats.A_CONVERSION])["frame_quality"] == q
        sizes[q] = episode_path(layout.generated_episodes, eid).stat().st_size
    assert sizes[30] < sizes[95]


def test_stage_refuses_agent_files_the_weights_stage_does_not_manage(tmp_path, capsys):
    from stages.generate import main

    params = _params(tmp_path, agents=[{"name": "vpt", "model": "2x.model", "weights": "rl-from-foundation-2x.weights"},
                                       {"name": "b"}])
    assert main(["--params", str(params)]) == 2
    err = capsys.readouterr().err
    assert "generate.agents.0.model" in err and "weights.files" in err
    assert not (tmp_path / "generated").exists()


def test_a_malicious_agent_model_is_refused_with_one_line_naming_it(tmp_path, capsys):
    """A .model that would run code when unpickled: the stage exits 1 with one line naming the file
    (before, the restricted unpickler's refusal came out as a raw traceback), and nothing ran."""
    from stages.generate import main

    marker, evil = tmp_path / "pwned", tmp_path / "evil.model"
    evil.write_bytes(b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR.")
    params = _params(tmp_path, agents=[{"name": "a", "model": str(evil)}, {"name": "b"}])
    assert main(["--params", str(params)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {evil}: refusing to unpickle os.system") and err.count("\n") == 1, err
    assert "Traceback" not in err and not marker.exists()


def test_minerl_missing_stops_generate_before_any_work(tmp_path, capsys, monkeypatch):
    import steve1.play.envs as envs
    from stages.generate import main

    monkeypatch.setattr(envs, "check_minerl", lambda: ["the minerl package is not installed"])
    assert main(["--params", str(_params(tmp_path, env="minerl"))]) == 1
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "MineRL cannot start" in err and "JDK 8" in err
    assert not (tmp_path / "generated").exists()


def test_generate_params_validate_the_pair_and_ranges():
    from steve1.params import ParamsError, validate_params

    with pytest.raises(ParamsError, match="list exactly two agents"):
        validate_params({"generate": {"n_episodes": 1, "agents": [{"name": "a"}]}})
    with pytest.raises(ParamsError, match=r"min_steps \(10\) must not exceed max_steps \(5\)"):
        validate_params({"generate": {"min_steps": 10, "max_steps": 5}})
    with pytest.raises(ParamsError, match="spin_step_degrees"):
        validate_params({"generate": {"spin_step_degrees": [30, 20]}})
    d = GenerateParams()                          # STEVE-1's values are the schema's defaults
    assert (d.max_steps, d.min_steps, d.switch_agent_prob, d.spin_prob) == (7200, 1000, 0.001, 0.00133)
    assert (d.switch_to_rl_prob, d.switch_from_rl_prob) == (1 / 3000, 1 / 1000)
    assert (d.spin_degrees, d.spin_step_degrees) == ((90, 360), (20, 30))


# ---------------------------------------------------------------- engine: ray

def _on_ray(tmp_path: Path, max_retries: int = 2, **generate_resources) -> Path:
    params = _params(tmp_path)
    p = yaml.safe_load(params.read_text())
    p["engine"] = "ray"
    p["ray"] = {"max_retries": max_retries, "generate": {"num_cpus": 1, "num_gpus": 0, **generate_resources}}
    params.write_text(yaml.safe_dump(p, sort_keys=False))
    return params


def _same_files(a: Layout, b: Layout) -> None:
    for x, y in ((a.generated_episodes, b.generated_episodes), (a.generated_videos, b.generated_videos)):
        assert _digests(x) == _digests(y)                  # episodes, manifest, videos; no temp left behind


def test_ray_engine_generates_the_bytes_the_local_engine_generates(ray_local, generated, tmp_path):
    from stages.generate import main

    _, local = generated
    params = _on_ray(tmp_path, workers=2)              # two actors, each one env + the two agents
    assert main(["--params", str(params)]) == 0
    _same_files(local, Layout.from_params(load_params(params)))


def test_a_generate_actor_killed_mid_episode_is_restarted_and_the_episode_replayed(ray_local, generated, tmp_path):
    from fixtures.ray_kill import Killer
    from stages.generate import main

    _, local = generated
    params = _on_ray(tmp_path, workers=1)
    killer = Killer(f"generate:{episode_id(0, 1)}")
    killer.start()
    assert main(["--params", str(params)]) == 0
    killer.stop.set()
    assert len(killer.killed) == 1, "the episode was never seen running in its actor"
    _same_files(local, Layout.from_params(load_params(params)))


@pytest.mark.slow      # two actor restarts, each loading the agents again
def test_an_episode_whose_actor_always_dies_is_dropped_with_the_reason(ray_local, generated, tmp_path):
    from fixtures.ray_kill import Killer
    from stages.generate import main

    _, local = generated
    params = _on_ray(tmp_path, max_retries=1, workers=1)
    killer = Killer(f"generate:{episode_id(0, 1)}", times=2)      # the first try and its one retry
    killer.start()
    assert main(["--params", str(params)]) == 0
    killer.stop.set()
    assert len(killer.killed) == 2
    layout = Layout.from_params(load_params(params))
    rows = json.loads(layout.generated_manifest.read_text())["episodes"]
    assert rows[episode_id(0, 1)]["status"] == "dropped"
    assert rows[episode_id(0, 1)]["reason"].startswith("its Ray worker died on each of 2 tries")
    assert rows[episode_id(0, 0)] == json.loads(local.generated_manifest.read_text())["episodes"][episode_id(0, 0)]
    assert sorted(p.name for p in layout.generated_videos.iterdir()) == [f"{episode_id(0, 0)}.mp4"]
    assert sorted(p.name for p in layout.generated_episodes.iterdir()) == sorted([f"{episode_id(0, 0)}.h5",
                                                                                  "manifest.json"])


@pytest.mark.slow
def test_on_two_nodes_generate_writes_the_local_bytes(ray_two_nodes, generated, tmp_path):
    from stages.generate import main

    _, local = generated
    params = _on_ray(tmp_path, workers=2)              # one actor per node
    assert main(["--params", str(params)]) == 0
    _same_files(local, Layout.from_params(load_params(params)))


@pytest.mark.slow
def test_a_node_lost_mid_episode_has_its_generate_actor_replaced_on_the_other(ray_two_nodes, generated, tmp_path,
                                                                              caplog):
    """The node whose actor (an env and two agents) plays an episode is lost (all its processes killed at
    once); a new actor on the head plays it again: the local bytes, the retry in the log."""
    from fixtures.ray_kill import NodeLoss
    from stages.generate import main

    caplog.set_level("INFO", logger="steve1.engine")
    _, local = generated
    params = _on_ray(tmp_path, workers=1)
    with NodeLoss(ray_two_nodes, "generate:", tmp_path) as loss:
        assert main(["--params", str(params)]) == 0
    assert len(loss.killed) == 1, "no episode was played on the worker node"
    _same_files(local, Layout.from_params(load_params(params)))
    assert "generate: 1 actor(s) lost, 1 replaced, 1 retry of an episode" in caplog.text


def test_generation_record_covers_every_declared_decode_key():
    from steve1.play.generate import _settings
    from steve1.params import DecodeParams, GenerateParams
    from steve1.shapes import param_keys

    settings = _settings(GenerateParams(), [], DecodeParams())
    declared = {k.split(".", 1)[1] for k in param_keys("generate") if k.startswith("decode.")}
    assert declared <= set(settings), declared - set(settings)
