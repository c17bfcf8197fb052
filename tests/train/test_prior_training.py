"""Prior training data (restricted pickle, .npz, annotations, toy default), the loop, and the stage."""

from __future__ import annotations

import hashlib
import json
import os
import pickle

import numpy as np
import pytest
import torch
import yaml

from steve1.data.episodes import write_embeds
from steve1.models.prior import PriorConfig, PriorCVAE, load_prior
from steve1.params import PriorParams, load_params
from steve1.train.prior import (PriorDataError, PriorPairs, TOY_PROMPTS, load_pairs_file, pairs_from_annotations,
                                save_prior, split_indices, toy_annotations, train_prior)


def fake_encoder(texts):
    """Deterministic 512-d 'text embedding' from a hash of the string."""
    rows = [np.random.default_rng(int(hashlib.sha256(t.encode()).hexdigest()[:8], 16)).standard_normal(512) for t in texts]
    return np.stack(rows).astype(np.float32)


def _write_embeds(d, ep, n=60, weights="random-tiny:seed=0", seed=0):
    emb = np.random.default_rng(seed).standard_normal((n, 512)).astype(np.float32)
    valid = np.arange(n) >= 15
    write_embeds(d / f"{ep}.h5", ep, emb, valid, weights=weights)
    return emb


# ---------------------------------------------------------------- data files

@pytest.mark.parametrize("protocol", [2, 5])
@pytest.mark.parametrize("as_list", [False, True])
def test_official_pickle_layout_loads_with_restricted_unpickler(tmp_path, protocol, as_list):
    rng = np.random.default_rng(0)
    text, visual = rng.standard_normal((5, 512)).astype(np.float32), rng.standard_normal((5, 512)).astype(np.float32)
    data = {"text_embeddings": [t[None] for t in text] if as_list else text,   # official: lists of [1,512]
            "visual_embeddings": [v[None] for v in visual] if as_list else visual}
    (tmp_path / "data.pkl").write_bytes(pickle.dumps(data, protocol=protocol))
    pairs = load_pairs_file(tmp_path / "data.pkl")
    np.testing.assert_array_equal(pairs.text, text)
    np.testing.assert_array_equal(pairs.visual, visual)


class _Evil:
    def __reduce__(self):
        return (os.getcwd, ())


def test_restricted_unpickler_refuses_anything_but_numpy(tmp_path):
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps({"text_embeddings": _Evil(), "visual_embeddings": 1}))
    with pytest.raises(PriorDataError, match=r"evil.pkl: refusing to unpickle posix.getcwd|refusing to unpickle"):
        load_pairs_file(tmp_path / "evil.pkl")


def test_npz_and_missing_keys(tmp_path):
    np.savez(tmp_path / "d.npz", text_embeddings=np.ones((3, 512)), visual_embeddings=np.zeros((3, 512)))
    assert len(load_pairs_file(tmp_path / "d.npz")) == 3
    np.savez(tmp_path / "e.npz", text_embeddings=np.ones((3, 512)))
    with pytest.raises(PriorDataError, match=r"e.npz: missing key\(s\) \['visual_embeddings'\]"):
        load_pairs_file(tmp_path / "e.npz")


# ---------------------------------------------------------------- annotations

def test_pairs_from_annotations_take_row_t_and_reject_invalid_rows(tmp_path):
    emb = _write_embeds(tmp_path, "ep-a")
    ann = [{"text": "chop a tree", "episode_id": "ep-a", "t": 20}, {"text": "go explore", "episode_id": "ep-a", "t": 59}]
    pairs = pairs_from_annotations(ann, tmp_path, fake_encoder)
    np.testing.assert_array_equal(pairs.visual, emb[[20, 59]])
    np.testing.assert_array_equal(pairs.text, fake_encoder(["chop a tree", "go explore"]))
    with pytest.raises(PriorDataError, match="row t=3 of episode ep-a"):
        pairs_from_annotations([{"text": "x", "episode_id": "ep-a", "t": 3}], tmp_path, fake_encoder)


def test_toy_annotations_cover_every_episode_and_cycle_prompts(tmp_path):
    _write_embeds(tmp_path, "ep-a", n=60)
    _write_embeds(tmp_path, "ep-b", n=40)
    ann = toy_annotations(tmp_path, windows_per_episode=3, samples_per_window=4)
    assert {a["episode_id"] for a in ann} == {"ep-a", "ep-b"}
    assert all(a["t"] >= 15 for a in ann)
    assert [a["text"] for a in ann if a["episode_id"] == "ep-b"][0] == TOY_PROMPTS[3 % len(TOY_PROMPTS)]
    assert ann == toy_annotations(tmp_path, 3, 4)        # depends only on the files


# ---------------------------------------------------------------- loop

def _linear_pairs(n=256, seed=0, dim=16):
    rng = np.random.default_rng(seed)
    text = rng.standard_normal((n, dim)).astype(np.float32)
    A = rng.standard_normal((dim, dim)).astype(np.float32) / np.sqrt(dim)
    return PriorPairs(text, (text @ A).astype(np.float32))


def test_training_reduces_val_loss_and_is_deterministic():
    cfg = PriorParams(hidden_dim=64, latent_dim=16, lr=3e-3, batch_size=64, epochs=8, patience=0, beta=1e-4)
    a, b = train_prior(_linear_pairs(), cfg), train_prior(_linear_pairs(), cfg)
    h = a.history
    assert h[a.best_epoch]["val_recon"] < 0.5 * h[0]["val_recon"]
    assert a.best_val_loss == min(r["val_loss"] for r in h)
    for k, v in a.model.state_dict().items():
        assert torch.equal(v, b.model.state_dict()[k]), k
    assert (a.n_train, a.n_val) == (230, 26)


def test_early_stopping_keeps_best_epoch():
    # lr 0 (below the schema's bound, so set past validation): val never improves
    cfg = PriorParams(hidden_dim=16, latent_dim=4, epochs=50, patience=3).model_copy(update={"lr": 0.0})
    r = train_prior(_linear_pairs(n=32), cfg)
    assert r.stopped_early and len(r.history) == 4 and r.best_epoch == 0


def test_split_is_seeded_and_disjoint():
    tr, va = split_indices(20, 0.1, seed=1)
    assert len(va) == 2 and not set(tr) & set(va) and sorted([*tr, *va]) == list(range(20))
    assert np.array_equal(va, split_indices(20, 0.1, seed=1)[1])
    with pytest.raises(PriorDataError, match="at least 2 pairs"):
        split_indices(1, 0.1, 0)


# ---------------------------------------------------------------- stage

def _params(tmp_path, prior):
    p = {"paths": {"embeds": str(tmp_path / "embeds"), "models": str(tmp_path / "models")},
         "prior": {"hidden_dim": 32, "latent_dim": 8, "epochs": 3, "batch_size": 32, **prior}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
    return str(tmp_path / "params.yaml")


def test_stage_toy_default_uses_the_tiny_mineclip_and_labels_toy(tmp_path):
    from stages.prior import main

    _write_embeds(tmp_path / "embeds", "ep-a", n=50)
    assert main(["--params", _params(tmp_path, {"toy_samples_per_window": 4})]) == 0
    m = json.loads((tmp_path / "models" / "prior_report.json").read_text())
    assert json.loads((tmp_path / "models" / "prior_metrics.json").read_text()) == {
        "val_loss": pytest.approx(m["best_val_loss"], rel=1e-3)}                  # the headline only
    assert [r["epoch"] for r in json.loads((tmp_path / "models" / "prior_history.json").read_text())] == [0, 1, 2]
    assert m["toy"] is True and "TOY" in m["note"] and m["n_pairs"] == 16 and len(m["history"]) == 3
    assert set(m["prompts"]) == set(TOY_PROMPTS)
    prior = load_prior(tmp_path / "models" / "prior.pt")
    assert prior.cfg.hidden_dim == 32 and prior.cfg.latent_dim == 8


def test_stage_refuses_embeds_from_another_mineclip(tmp_path, capsys):
    from stages.prior import main

    _write_embeds(tmp_path / "embeds", "ep-a", weights="attn.pth:md5=abc")
    assert main(["--params", _params(tmp_path, {})]) == 1
    assert "embedded with MineCLIP 'attn.pth:md5=abc'" in capsys.readouterr().err
    assert not (tmp_path / "models" / "prior.pt").exists()


def test_stage_from_npz_is_not_toy(tmp_path):
    from stages.prior import main

    pairs = _linear_pairs(n=40, dim=512)
    np.savez(tmp_path / "d.npz", text_embeddings=pairs.text, visual_embeddings=pairs.visual)
    assert main(["--params", _params(tmp_path, {"data": str(tmp_path / "d.npz")})]) == 0
    m = json.loads((tmp_path / "models" / "prior_report.json").read_text())
    assert m["toy"] is False and m["n_pairs"] == 40 and m["n_val"] == 4


def test_stage_scores_a_baseline_prior_on_the_same_val_pairs(tmp_path):
    from stages.prior import main
    from steve1.train.prior import score_prior

    pairs = _linear_pairs(n=40, dim=512)
    np.savez(tmp_path / "d.npz", text_embeddings=pairs.text, visual_embeddings=pairs.visual)
    torch.manual_seed(3)
    official = PriorCVAE(PriorConfig(embed_dim=512, hidden_dim=24, latent_dim=6))   # any official-layout prior
    save_prior(official, tmp_path / "steve1_prior.pt")
    params = _params(tmp_path, {"data": str(tmp_path / "d.npz"), "baseline": str(tmp_path / "steve1_prior.pt")})
    assert main(["--params", params]) == 0
    m = json.loads((tmp_path / "models" / "prior_report.json").read_text())
    expected = score_prior(load_prior(tmp_path / "steve1_prior.pt"), pairs, load_params(params).prior)
    assert m["official"]["val_loss"] == pytest.approx(expected["val_loss"], rel=1e-6)
    headline = json.loads((tmp_path / "models" / "prior_metrics.json").read_text())
    assert set(headline) == {"val_loss", "baseline_val_loss"}
    assert headline["baseline_val_loss"] == pytest.approx(expected["val_loss"], rel=1e-3)
