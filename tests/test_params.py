"""params.yaml schema: the shipped file validates, and bad input is refused with the key named."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from steve1.params import ParamsError, load_params, validate_params


def test_shipped_params_validate(repo_root):
    params = load_params(repo_root / "params.yaml")
    assert params.decode.frame_codec in ("none", "lzf", "gzip", "blosc-lz4", "blosc-zstd", "jpeg")
    assert params.learning_rate > 0


def test_shipped_grad_norm_range_follows_the_loss_reduction(repo_root):
    """The embedded default once pinned the guide's per-step 0.5-5 while training with STEVE-1's summed
    loss, so every logged step was flagged out of range: the shipped files leave the range derived."""
    for path in [repo_root / "params.yaml", *sorted((repo_root / "configs" / "profiles").glob("*.yaml"))]:
        assert (yaml.safe_load(path.read_text()).get("train") or {}).get("grad_norm_range") is None, path
    tp = load_params(repo_root / "params.yaml").train
    scale = tp.trunc_t if tp.loss_reduction == "official" else 1
    assert tp.grad_norm_bounds == (0.5 * scale, 5.0 * scale)


def _shipped(repo_root):
    return yaml.safe_load((repo_root / "params.yaml").read_text())


def test_unknown_key_is_named(repo_root):
    raw = _shipped(repo_root)
    raw["decode"]["camera_truncation"] = True
    with pytest.raises(ParamsError, match=r"unknown key 'decode\.camera_truncation'"):
        validate_params(raw)


def test_wrong_type_names_key_and_value(repo_root):
    raw = _shipped(repo_root)
    raw["download"]["concurrency"] = "many"
    with pytest.raises(ParamsError, match=r"download\.concurrency.*'many'"):
        validate_params(raw)


def test_out_of_range_names_bound(repo_root):
    raw = _shipped(repo_root)
    raw["download"]["max_failed_fraction"] = 1.5
    with pytest.raises(ParamsError, match=r"download\.max_failed_fraction.*1\.5.*less than or equal to 1"):
        validate_params(raw)


def test_cross_field_check(repo_root):
    raw = _shipped(repo_root)
    raw["sample"]["max_btwn_goals"] = 10
    with pytest.raises(ParamsError, match="max_btwn_goals"):
        validate_params(raw)


def test_missing_file_is_clear(tmp_path):
    with pytest.raises(ParamsError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")


def test_stage_exits_nonzero_before_work(repo_root, tmp_path):
    raw = _shipped(repo_root)
    raw["sample"]["T"] = -3
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump(raw))
    proc = subprocess.run([sys.executable, "-m", "stages.sample", "--params", str(bad)],
                          cwd=repo_root, capture_output=True, text=True)
    assert proc.returncode == 2
    assert "sample.T" in proc.stderr and "-3" in proc.stderr
    assert "dvc checkout" in proc.stderr    # how to get back outputs DVC removed before the stage ran


@pytest.mark.parametrize("raw, message", [
    ({"learning_rate": True}, "params: key 'learning_rate' is true (a boolean); expected float"),
    ({"train": {"n_frames": False}}, "section 'train': key 'n_frames' is false (a boolean); expected int"),
])
def test_booleans_are_not_numbers(raw, message):
    with pytest.raises(ParamsError) as err:
        validate_params(raw)
    assert message in str(err.value)


def test_cross_field_errors_name_the_rule_not_the_whole_section():
    with pytest.raises(ParamsError) as err:
        validate_params({"train": {"warmup_frames": 100_000, "n_frames": 64}})
    text = str(err.value)
    assert "section 'train': warmup_frames (100000) must be below 1.1 x n_frames (64)" in text
    assert "loss_reduction" not in text and len(text) < 300   # not the section's whole mapping
