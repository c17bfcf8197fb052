"""Offline evaluation: metrics against independent computations, goal sensitivity, guidance sweep,
before/after deltas, and the evaluate stage's outputs (tiny policy, synthetic episodes)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from steve1.actions import N_CAMERA_BINS
from steve1.data import formats
from steve1.data.sampling import MAIN_SET, make_sampling
from steve1.eval.offline import (deltas, evaluate_policies, kl_divergence, other_episode_goals, renormalize,
                                 scale_key, step_metrics)
from steve1.io import write_json_atomic
from steve1.models.checkpoints import GOAL_KEYS, save_policy_weights
from steve1.models.policy import guide
from fixtures.policy import build_policy_from_preset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fixtures.episodes import EpisodeFactory  # noqa: E402

B, T = 2, 12
SCALES = [0.0, 1.0, 6.0]


def sharp_policy(seed: int = 0, goal_gain: float = 1.0):
    """Tiny policy with peaked heads (the default init is near-uniform) and a strong goal layer."""
    torch.manual_seed(seed)
    policy = build_policy_from_preset("tiny")
    with torch.no_grad():
        for head in policy.pi_head.values():
            head.linear_layer.weight.mul_(300.0)
        policy.net.mineclip_embed_linear.weight.mul_(goal_gain)
    return policy.eval()


def random_batch(seed: int = 0, b: int = B, t: int = T) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"frames": torch.randint(0, 256, (b, t, 128, 128, 3), dtype=torch.uint8, generator=g),
            "goal_embeds": torch.randn(b, t, 512, generator=g),
            "buttons": torch.randint(0, 8641, (b, t), generator=g),
            "camera": torch.randint(0, 121, (b, t), generator=g),
            "other_goal": torch.randn(b, 512, generator=g)}


def one_call_pd(policy, batch, goal=None):
    """The policy's log-probs over a whole chunk in one call (the independent reference)."""
    b, t = batch["buttons"].shape
    first = torch.zeros(b, t, dtype=torch.bool)
    first[:, 0] = True
    obs = {"img": batch["frames"], "mineclip_embed": batch["goal_embeds"] if goal is None else goal}
    with torch.no_grad():
        pd, _, _ = policy(obs, first, policy.initial_state(b))
    return pd


def leaves(d, prefix=""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from leaves(v, f"{prefix}{k}.")
        else:
            yield prefix + k, v


# ----------------------------------------------------------------------------- pure pieces

def test_kl_and_renormalize_match_hand_computation():
    p = {"camera": torch.log(torch.tensor([[[[0.5, 0.5]]]])), "buttons": torch.log(torch.tensor([[[[0.9, 0.1]]]]))}
    q = {"camera": torch.log(torch.tensor([[[[0.25, 0.75]]]])), "buttons": torch.log(torch.tensor([[[[0.9, 0.1]]]]))}
    expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert kl_divergence(p, q).item() == pytest.approx(expected, rel=1e-6)
    assert kl_divergence(p, p).item() == 0.0
    guided = guide(p, q, 3.0)
    norm, log_z = renormalize(guided)
    for k in p:
        assert norm[k].exp().sum().item() == pytest.approx(1.0, abs=1e-6)
    z = sum(torch.logsumexp(guided[k], -1).item() for k in p)
    assert log_z.item() == pytest.approx(z, abs=1e-6)


def test_camera_bin_error_counts_bins_per_axis():
    pd = {"camera": torch.full((1, 1, 1, 121), -100.0), "buttons": torch.zeros((1, 1, 1, 8641))}
    pd["camera"][0, 0, 0, 2 * N_CAMERA_BINS + 9] = 0.0  # argmax: pitch bin 2, yaw bin 9
    m = step_metrics(pd, {"buttons": torch.tensor([[0]]), "camera": torch.tensor([[5 * N_CAMERA_BINS + 4]])})
    assert m["camera_bin_error_pitch"].item() == 3 and m["camera_bin_error_yaw"].item() == 5
    assert m["camera_bin_error"].item() == 4
    assert m["acc_camera"].item() == 0 and m["acc_buttons"].item() == 1 and m["acc_joint"].item() == 0


def test_scale_key_has_no_dots():
    assert [scale_key(s) for s in (0.0, 6, 7.5)] == ["s0", "s6", "s7p5"]


# ----------------------------------------------------------------------------- the evaluation loop

def test_metrics_are_finite_and_in_range():
    m, rows = evaluate_policies({"model": sharp_policy()}, [random_batch()], cond_scales=SCALES, call_t=8)
    m = m["model"]
    assert m["n_chunks"] == B and m["n_steps"] == B * T and len(rows) == B
    for key, v in leaves(m):
        assert math.isfinite(v), key
    for block in [m, *m["guided"].values()]:
        assert block["nll"] > 0 and block["nll_buttons"] > 0 and block["nll_camera"] > 0
        assert block["nll"] == pytest.approx(block["nll_buttons"] + block["nll_camera"])
        for k in ("acc_buttons", "acc_camera", "acc_joint"):
            assert 0.0 <= block[k] <= 1.0
        assert block["acc_joint"] <= min(block["acc_buttons"], block["acc_camera"])
        assert 0.0 <= block["camera_bin_error"] <= N_CAMERA_BINS - 1
    assert m["kl_null_goal"] > 0 and m["kl_other_goal"] > 0
    assert set(m["guided"]) == {"s0", "s1", "s6"}


def test_nll_equals_independent_computation_on_one_chunk():
    """Chunked calls (5 + 5 + 2 frames, state carried) vs one call, read off the policy's log-probs."""
    policy, batch = sharp_policy(), random_batch(seed=1)
    m, rows = evaluate_policies({"model": policy}, [batch], cond_scales=[0.0], call_t=5)
    pd = one_call_pd(policy, batch)
    nll_b = -pd["buttons"][:, :, 0].gather(-1, batch["buttons"][..., None])[..., 0]  # [B,T]
    nll_c = -pd["camera"][:, :, 0].gather(-1, batch["camera"][..., None])[..., 0]
    m = m["model"]
    assert m["nll_buttons"] == pytest.approx(nll_b.double().mean().item(), rel=1e-5)
    assert m["nll_camera"] == pytest.approx(nll_c.double().mean().item(), rel=1e-5)
    assert m["nll"] == pytest.approx((nll_b + nll_c).double().mean().item(), rel=1e-5)
    for b in range(B):
        assert rows[b]["nll_model"] == pytest.approx((nll_b + nll_c)[b].double().mean().item(), rel=1e-5)
    acc = (pd["buttons"][:, :, 0].argmax(-1) == batch["buttons"]).double().mean().item()
    assert m["acc_buttons"] == pytest.approx(acc)


def test_accuracy_is_one_when_the_data_follow_the_policy_argmax():
    policy, batch = sharp_policy(), random_batch(seed=2)
    pd = one_call_pd(policy, batch)
    batch["buttons"] = pd["buttons"][:, :, 0].argmax(-1)
    batch["camera"] = pd["camera"][:, :, 0].argmax(-1)
    m, _ = evaluate_policies({"model": policy}, [batch], cond_scales=[0.0], call_t=4)
    m = m["model"]
    assert m["acc_buttons"] == m["acc_camera"] == m["acc_joint"] == 1.0
    assert m["camera_bin_error"] == 0.0
    assert m["guided"]["s0"]["acc_joint"] == 1.0


def test_goal_sensitivity():
    policy, batch = sharp_policy(goal_gain=50.0), random_batch(seed=3)
    # a constant true goal equal to the "other" goal: the same goal, KL 0
    same = dict(batch, goal_embeds=batch["other_goal"][:, None].expand(B, T, 512).clone())
    m_same, _ = evaluate_policies({"model": policy}, [same], cond_scales=[0.0], call_t=T)
    assert m_same["model"]["kl_other_goal"] == pytest.approx(0.0, abs=1e-6)
    assert m_same["model"]["nll_other_goal"] == pytest.approx(m_same["model"]["nll"], rel=1e-6)
    m_diff, _ = evaluate_policies({"model": policy}, [batch], cond_scales=[0.0], call_t=T)
    assert m_diff["model"]["kl_other_goal"] > 1e-3 and m_diff["model"]["kl_null_goal"] > 1e-3

    with torch.no_grad():
        policy.net.mineclip_embed_linear.weight.zero_()
        policy.net.mineclip_embed_linear.bias.zero_()
    m_zero, _ = evaluate_policies({"model": policy}, [batch], cond_scales=SCALES, call_t=T)
    m_zero = m_zero["model"]
    assert m_zero["kl_other_goal"] == 0.0 and m_zero["kl_null_goal"] == 0.0
    assert m_zero["nll_null_goal"] == m_zero["nll_other_goal"] == m_zero["nll"]
    for s in SCALES:  # guidance does nothing when the goal does nothing
        assert m_zero["guided"][scale_key(s)]["nll"] == pytest.approx(m_zero["nll"], rel=1e-6)


def test_cond_scale_zero_equals_unguided_and_guidance_changes_the_rest():
    m, _ = evaluate_policies({"model": sharp_policy(goal_gain=50.0)}, [random_batch(seed=4)],
                             cond_scales=SCALES, call_t=6)
    m = m["model"]
    s0 = m["guided"]["s0"]
    for key in ("nll", "nll_buttons", "nll_camera", "acc_buttons", "acc_camera", "acc_joint", "camera_bin_error"):
        assert s0[key] == pytest.approx(m[key], rel=1e-6, abs=1e-6), key
    assert s0["log_normalizer"] == pytest.approx(0.0, abs=1e-5)
    assert m["guided"]["s6"]["nll"] != pytest.approx(m["nll"], rel=1e-3)
    assert abs(m["guided"]["s6"]["log_normalizer"]) > 1e-4  # the official guided values are not normalised


def test_baseline_deltas_are_exact_differences():
    batch = random_batch(seed=5)
    model, baseline = sharp_policy(seed=0, goal_gain=20.0), sharp_policy(seed=1)
    m, rows = evaluate_policies({"model": model, "baseline": baseline}, [batch], cond_scales=SCALES, call_t=T)
    d = deltas(m["model"], m["baseline"])
    assert "n_chunks" not in d and "n_steps" not in d
    flat_m, flat_b = dict(leaves(m["model"])), dict(leaves(m["baseline"]))
    for key, v in leaves(d):
        assert v == flat_m[key] - flat_b[key], key
    assert len(dict(leaves(d))) == len(flat_m) - 2
    assert all("nll_model" in r and "nll_baseline" in r for r in rows)
    # scoring the same weights twice gives zero deltas
    twin = sharp_policy(seed=0, goal_gain=20.0)
    m2, _ = evaluate_policies({"model": model, "baseline": twin}, [batch], cond_scales=SCALES, call_t=T)
    assert all(v == 0.0 for _, v in leaves(deltas(m2["model"], m2["baseline"])))


def test_other_episode_goals_come_from_another_episode(tmp_path):
    factory = EpisodeFactory(tmp_path)
    lengths = {factory("ep-a", 40): 40, factory("ep-b", 50): 50, factory("ep-c", 45): 45}
    chunks = [("ep-a", 15, 27), ("ep-a", 27, 39), ("ep-b", 15, 27), ("ep-c", 15, 27)]
    dirs = {MAIN_SET: (factory.episodes_dir, factory.embeds_dir)}
    goals = other_episode_goals(chunks, lengths, ["ep-a", "ep-b", "ep-c"], dirs, seed=0)
    assert goals.shape == (4, 512)
    for (eid, _, _), g in zip(chunks, goals):
        other = {v: k for k, v in factory.tags.items()}[int(g[1])]  # fixture embeds: [t,1] = tag
        assert other != eid and 15 <= g[0] < lengths[other]  # [t,0] = t, a valid row
    again = other_episode_goals(chunks, lengths, ["ep-a", "ep-b", "ep-c"], dirs, seed=0)
    np.testing.assert_array_equal(goals, again)
    # one val episode: the other goal is drawn from train episodes; one episode in all: none
    assert other_episode_goals(chunks[:1], lengths, ["ep-a"], dirs, seed=0)[0, 1] != factory.tags["ep-a"]
    assert other_episode_goals(chunks[:1], {"ep-a": 40}, ["ep-a"], dirs, seed=0) is None


# ----------------------------------------------------------------------------- the stage

def make_world(root: Path, evaluate: dict | None = None) -> Path:
    """Three synthetic episodes (two val), a sampling with T=8 chunks, tiny weights, params.yaml."""
    data = root / "data"
    factory = EpisodeFactory(data)
    lengths = {factory(eid, n): n for eid, n in (("ep-a", 40), ("ep-b", 31), ("ep-c", 36))}
    body = make_sampling(lengths, train_frames=10_000, val_frames=1, seed=0, T=8, min_btwn_goals=15,
                         val_episodes=["ep-b", "ep-c"])
    sample = {"name": "toy", "T": 8, "min_btwn_goals": 15, "max_btwn_goals": 30}
    write_json_atomic(data / "samplings" / "toy.json",
                      {"format_version": formats.SAMPLING_FORMAT_VERSION, "params": sample, "invalid": [], **body})
    save_policy_weights(sharp_policy(seed=0, goal_gain=20.0), root / "models" / "toy" / "best.weights")
    params = {"paths": {"episodes": str(data / "episodes"), "embeds": str(data / "embeds"),
                        "samplings": str(data / "samplings"), "models": str(root / "models"),
                        "eval": str(root / "eval")},
              "sample": sample, "train": {"run": "toy", "preset": "tiny", "trunc_t": 8},
              "evaluate": {"cond_scales": [0.0, 6.0], "batch_size": 2, "device": "cpu", "call_t": 4,
                           **(evaluate or {})}}
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def test_stage_writes_metrics_plots_and_baseline_deltas(tmp_path):
    from stages.evaluate import main

    vpt = sharp_policy(seed=1).state_dict()
    for key in GOAL_KEYS:  # a VPT-style file: no goal layer
        del vpt[key]
    torch.save(vpt, tmp_path / "vpt.weights")
    params = make_world(tmp_path, {"baseline_weights": str(tmp_path / "vpt.weights")})
    assert main(["--params", str(params)]) == 0

    out = tmp_path / "eval"
    info = json.loads((out / "offline.json").read_text())
    m = info["metrics"]                               # the detail: every metric, guided blocks, baseline, deltas
    assert m["n_chunks"] == 5 and m["n_steps"] == 40  # ep-b (31 frames): 2 chunks of 8, ep-c (36): 3
    assert set(m["guided"]) == {"s0", "s6"}
    assert m["kl_other_goal"] > 0 and m["kl_null_goal"] > 0
    assert m["baseline"]["kl_null_goal"] == 0.0  # the VPT baseline's goal layer is zeroed: goals do nothing
    assert m["delta"]["nll"] == m["nll"] - m["baseline"]["nll"]
    assert all(math.isfinite(v) for _, v in leaves(m))

    sweep = json.loads((out / "plots" / "custom" / "cond_scale_sweep.json").read_text())
    assert [p["cond_scale"] for p in sweep] == [0.0, 6.0]
    assert sweep[1]["nll"] == m["guided"]["s6"]["nll"] and sweep[1]["nll_baseline"] == m["baseline"]["guided"]["s6"]["nll"]
    chunks = json.loads((out / "plots" / "custom" / "chunk_nll.json").read_text())
    assert [c["chunk"] for c in chunks] == [0, 1, 2, 3, 4]
    assert np.mean([c["nll"] for c in chunks]) == pytest.approx(m["nll"], rel=1e-9)
    assert info["baseline_goal_layer_zeroed"] is True and len(info["weights_sha256"]) == 64
    headline = json.loads((out / "metrics.json").read_text())      # DVC metrics: the headline figures only
    best = min(sweep, key=lambda p: p["nll"])["cond_scale"]
    assert headline == {"nll": pytest.approx(m["nll"], rel=1e-3), "acc": pytest.approx(m["acc_joint"], rel=1e-3),
                        "goal_kl": pytest.approx(m["kl_other_goal"], rel=1e-3), "best_scale": best,
                        "delta_nll": pytest.approx(m["delta"]["nll"], rel=1e-3)}
    bars = {b["set_policy"]: b["nll"] for b in json.loads((out / "plots" / "custom" / "set_nll.json").read_text())}
    assert bars["main: model"] == pytest.approx(m["nll"], rel=1e-9)
    assert bars["main: baseline"] == pytest.approx(m["baseline"]["nll"], rel=1e-9)
    assert "sets" not in m    # a single-set sampling: the top-level figures are the main set's


def test_per_set_figures_separate_forgetting_from_gain():
    from steve1.eval.offline import per_set

    rows = [{"episode": "ep-a", "nll_model": 2.0, "acc_model": 0.5, "nll_baseline": 1.0, "acc_baseline": 0.6},
            {"episode": "ep-b", "nll_model": 4.0, "acc_model": 0.3, "nll_baseline": 3.0, "acc_baseline": 0.4},
            {"episode": "mine/own-0", "nll_model": 1.0, "acc_model": 0.9, "nll_baseline": 5.0, "acc_baseline": 0.1}]
    out = per_set(rows, ["model", "baseline"])
    assert out["main"] == {"n_chunks": 2, "nll": 3.0, "acc": 0.4, "baseline_nll": 2.0, "baseline_acc": 0.5,
                           "delta_nll": 1.0, "delta_acc": pytest.approx(-0.1)}      # forgetting: worse on main
    assert out["mine"]["delta_nll"] == -4.0 and out["mine"]["delta_acc"] == pytest.approx(0.8)  # gain on mine


def test_stage_reports_missing_weights(tmp_path, capsys):
    from stages.evaluate import main

    params = make_world(tmp_path, {"checkpoint": "latest", "every_nth": 2})
    assert main(["--params", str(params)]) == 1
    assert "latest.weights: weights not found" in capsys.readouterr().err


def test_headline_carries_each_sets_figures_of_a_mixed_sampling():
    from steve1 import headline

    metrics = {"nll": 3.0, "acc_joint": 0.4, "sets": {"main": {"nll": 3.2, "delta_nll": 0.4},
                                                        "mine": {"nll": 1.0, "delta_nll": -4.0}}}
    out = headline.evaluate(metrics, [])
    assert (out["main_delta_nll"], out["mine_delta_nll"]) == (0.4, -4.0) and out["mine_nll"] == 1.0
