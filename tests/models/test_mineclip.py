"""MineCLIP against the official goldens (tests/goldens/mineclip, from ../shared/reference; made by
the official code in float32 on CPU; see its README for the regeneration recipe) and the attn.pth layout."""

from __future__ import annotations

import json

import pytest
import torch
from torch.testing import assert_close

from steve1.models.mineclip import PRESETS, build_mineclip, resize_pos_embed_grid
from steve1.models.mineclip_files import ATTN_PTH_MD5, canonical_key, load_attn_pth, official_keys, save_attn_pth

TOL = dict(atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def ref(reference):
    return reference / "mineclip"


@pytest.fixture(scope="module")
def tiny(ref):
    """The golden tiny MineCLIP with the official tiny weights (188 keys, aliases included)."""
    model = build_mineclip(json.loads((ref / "tiny_config.json").read_text()), seed=None)
    official = torch.load(ref / "tiny_state_dict.pt", weights_only=True)
    model.load_state_dict({k: v for k, v in official.items() if canonical_key(k) == k}, strict=True)
    return model


@pytest.fixture(scope="module")
def io(ref):
    return torch.load(ref / "tiny_io.pt", weights_only=True)


@torch.no_grad()
def test_video_tower_matches_goldens(tiny, io):
    video, debug = io["video_uint8"], io["debug"]
    assert_close(tiny.preprocess(video[0, 0])[0], debug["preprocessed_clip0_frame0"], **TOL)
    features = tiny.encode_image_frames(video)                                     # [3,16,64]
    assert_close(features, io["image_features"], **TOL)
    assert_close(tiny.temporal_encoder.attn.model(features), debug["temporal_tokens_before_mean"], **TOL)
    assert_close(tiny.pool_windows(io["image_features"]), io["video_features"], **TOL)
    assert_close(tiny.encode_video(video), io["encode_video"], **TOL)
    assert_close(tiny.encode_video(video.float()), io["encode_video"], **TOL)   # float 0..255 == uint8


@torch.no_grad()
def test_text_tower_and_logits_match_goldens(tiny, io):
    debug = io["debug"]
    assert torch.equal(tiny.tokenize(io["prompts"]), io["text_tokens"])
    assert torch.equal(io["text_tokens"].argmax(-1), debug["text_eot_index"])
    text = tiny.encode_text(io["prompts"])
    assert_close(text, io["encode_text"], **TOL)
    assert_close(tiny.encode_text(io["text_tokens"]), io["encode_text"], **TOL)
    assert_close(tiny.adapt_video(io["video_features"]), debug["video_adapted"], **TOL)
    assert_close(torch.sigmoid(tiny.reward_head.video_residual_weight), debug["video_residual_sigmoid"], **TOL)
    assert_close(tiny.reward_head.clip_model.logit_scale.exp(), debug["logit_scale_exp"], **TOL)
    per_video, per_text = tiny.logits(io["encode_video"], text)
    assert_close(per_video, io["logits_per_video"], **TOL)
    assert_close(per_text, io["logits_per_text"], **TOL)


def test_preprocessing_and_pos_embed_resize_match_goldens(ref, tiny):
    g = torch.load(ref / "preprocess_goldens.pt", weights_only=True)
    chw = g["steve1_process_frame_mineclip_chw_uint8"]
    assert_close(tiny.preprocess(chw)[0], g["normalized_chw_float32"], **TOL)
    full = g["pos_embed_resize_full_grid"]
    assert_close(resize_pos_embed_grid(full["in"], full["in_grid"], full["out_grid"]), full["out"], **TOL)
    with_cls = g["pos_embed_resize_tiny_with_cls"]
    table = with_cls["in"]   # CLS row first, kept unchanged (the official VisionTransformer.resize_pos_embed)
    resized = torch.cat([table[:1], resize_pos_embed_grid(table[1:], with_cls["in_grid"], with_cls["out_grid"])])
    assert_close(resized, with_cls["out"], **TOL)


def test_full_config_has_the_official_788_keys_and_shapes(ref):
    manifest = json.loads((ref / "mineclip_attn_state_dict_manifest.json").read_text())
    model = build_mineclip("full", device="meta")
    state = model.state_dict()
    assert len(state) == manifest["counts"]["unique_tensors"] == 334
    assert sum(p.numel() for p in model.parameters()) == manifest["counts"]["parameters_unique"]
    keys = official_keys(state.keys())
    assert keys == [e["key"] for e in manifest["entries"]]                      # same names, same order
    for e in manifest["entries"]:
        assert list(state[canonical_key(e["key"])].shape) == e["shape"], e["key"]
        if e["alias_of"] is not None:
            assert canonical_key(e["key"]) == e["alias_of"]


def _wrap_official(path, tensors):
    torch.save({"state_dict": {"model." + k: v for k, v in tensors.items()}, "epoch": 3}, path)


@torch.no_grad()
def test_attn_pth_round_trip_with_tiny_weights(ref, tmp_path, io):
    config = json.loads((ref / "tiny_config.json").read_text())
    official = torch.load(ref / "tiny_state_dict.pt", weights_only=True)
    _wrap_official(tmp_path / "attn.pth", official)
    with pytest.warns(UserWarning, match="differs from the official attn.pth"):
        model, info = load_attn_pth(tmp_path / "attn.pth", config)
    assert info.md5_matches_official is False and info.weights_id == f"attn.pth:md5={info.md5}"
    assert_close(model.encode_video(io["video_uint8"]), io["encode_video"], **TOL)
    assert_close(model.encode_text(io["text_tokens"]), io["encode_text"], **TOL)

    save_attn_pth(model, tmp_path / "again.pth")
    saved = torch.load(tmp_path / "again.pth", weights_only=True)["state_dict"]
    assert list(saved) == ["model." + k for k in official]                      # official layout, all 188 keys
    for k, v in official.items():
        assert torch.equal(saved["model." + k], v), k
    with pytest.warns(UserWarning):
        again, _ = load_attn_pth(tmp_path / "again.pth", config)
    assert_close(again.encode_video(io["video_uint8"]), io["encode_video"], **TOL)


def test_attn_pth_errors_name_missing_extra_and_disagreeing_keys(ref, tmp_path):
    config = json.loads((ref / "tiny_config.json").read_text())
    official = torch.load(ref / "tiny_state_dict.pt", weights_only=True)
    broken = {k: v for k, v in official.items() if not k.startswith("clip_model.text_model.")}
    broken["image_encoder.surplus"] = torch.zeros(1)
    _wrap_official(tmp_path / "broken.pth", broken)
    with pytest.warns(UserWarning), pytest.raises(ValueError, match=r"missing 29 keys: clip_model\.text_model.*"
                                                                    r"unexpected 1 keys: image_encoder\.surplus"):
        load_attn_pth(tmp_path / "broken.pth", config)
    disagree = {k: v.clone() for k, v in official.items()}
    disagree["clip_model.logit_scale"] += 1.0
    _wrap_official(tmp_path / "disagree.pth", disagree)
    with pytest.warns(UserWarning), pytest.raises(ValueError, match=r"clip_model\.logit_scale != reward_head"):
        load_attn_pth(tmp_path / "disagree.pth", config)
    with pytest.raises(FileNotFoundError, match="not found"):
        load_attn_pth(tmp_path / "absent.pth", config)


def test_official_md5_is_the_published_one():
    assert ATTN_PTH_MD5 == "b5ece9198337cfd117a3bfbd921e56da"


@torch.no_grad()
def test_random_tiny_preset_has_steve1_shapes_and_is_seeded():
    a, b, c = build_mineclip("tiny", seed=0), build_mineclip("tiny", seed=0), build_mineclip("tiny", seed=1)
    video = torch.randint(0, 256, (2, 16, 3, 160, 256), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    out = a.encode_video(video)
    assert out.shape == (2, 512) and torch.isfinite(out).all()
    assert torch.equal(out, b.encode_video(video))
    assert not torch.equal(out, c.encode_video(video))
    assert a.encode_text(["chop a tree"]).shape == (1, 512)
    assert PRESETS["tiny"].embed_dim == PRESETS["full"].embed_dim == 512


@torch.no_grad()
def test_window_pooling_equals_encode_video_on_shared_frames(tiny):
    """Per-frame features reused across overlapping windows give encode_video's result."""
    frames = torch.randint(0, 256, (20, 3, 80, 128), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    features = tiny.encode_image_frames(frames)                                   # [20,64]
    windows = features.unfold(0, 16, 1).permute(0, 2, 1)                          # [5,16,64]
    naive = torch.cat([tiny.encode_video(frames[i:i + 16][None]) for i in range(5)])
    assert_close(tiny.pool_windows(windows), naive, **TOL)


def test_embed_text_cli_prints_and_saves(tmp_path):
    import numpy as np
    from typer.testing import CliRunner

    from steve1.cli import app

    runner = CliRunner()
    shown = runner.invoke(app, ["embed-text", "chop a tree"])
    assert shown.exit_code == 0 and "random-tiny:seed=0" in shown.output and "dim=512" in shown.output
    saved = runner.invoke(app, ["embed-text", "chop a tree", "--out", str(tmp_path / "e.npy")])
    assert saved.exit_code == 0, saved.output
    expected = build_mineclip("tiny", seed=0).encode_text(["chop a tree"])[0].detach().numpy()
    np.testing.assert_allclose(np.load(tmp_path / "e.npy"), expected, atol=1e-6)
