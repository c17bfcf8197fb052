"""params.yaml schema: the shipped file validates, and bad input is refused with the key named."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import yaml

from steve1.params import ParamsError, load_params, validate_params


def test_shipped_params_validate(shipped_params_file):
    params = load_params(shipped_params_file)
    assert params.decode.frame_codec in ("none", "lzf", "gzip", "blosc-lz4", "blosc-zstd", "jpeg")
    assert params.learning_rate > 0


def test_shipped_grad_norm_range_follows_the_loss_reduction(repo_root, shipped_params_file):
    """The embedded default once pinned the guide's per-step 0.5-5 while training with STEVE-1's summed
    loss, so every logged step was flagged out of range: the shipped files leave the range derived."""
    for path in [shipped_params_file, *sorted((repo_root / "configs" / "profiles").glob("*.yaml"))]:
        assert (yaml.safe_load(path.read_text()).get("train") or {}).get("grad_norm_range") is None, path
    tp = load_params(shipped_params_file).train
    scale = tp.trunc_t if tp.loss_reduction == "official" else 1
    assert tp.grad_norm_bounds == (0.5 * scale, 5.0 * scale)


def _shipped(repo_root):
    """The shipped params.yaml (not the user's workspace copy: fixtures.project.shipped_params)."""
    from fixtures.project import shipped_params

    return yaml.safe_load(shipped_params())


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


# ----------------------------------------------------------------------------- names, paths, numbers

@pytest.mark.parametrize("key,value", [
    ("train.run", ".."), ("train.run", "."), ("train.run", "a/b"), ("train.run", ".hidden"),
    ("rollout.name", ".."), ("rollout.name", "x\\y"), ("sample.name", "."), ("sample.name", "../up"),
])
def test_names_that_become_paths_refuse_dots_and_separators(repo_root, key, value):
    """rollout.name: '..' once wrote the rollout's metrics over eval/metrics.json (evaluate's output)."""
    raw = _shipped(repo_root)
    section, name = key.split(".")
    raw[section][name] = value
    with pytest.raises(ParamsError, match=rf"key '{key}': value {re.escape(repr(value))} .*not starting with '\.'"):
        validate_params(raw)


def test_custom_set_and_mix_names_refuse_dots(repo_root):
    raw = _shipped(repo_root)
    raw["custom"] = {"..": {"source": "recordings/mine"}}
    with pytest.raises(ParamsError, match=r"custom set names.*custom\.\.\."):
        validate_params(raw)
    raw = _shipped(repo_root)
    raw["sample"]["mix"] = [{"name": ".", "train_frames": 10}]
    with pytest.raises(ParamsError, match=r"key 'sample\.mix\.0\.name': value '\.'"):
        validate_params(raw)


def test_dotted_names_inside_stay_legal(repo_root):
    raw = _shipped(repo_root)
    raw["train"]["run"], raw["rollout"]["name"], raw["sample"]["name"] = "v1.2_a-b", "r.1", "s-2.x"
    assert validate_params(raw).train.run == "v1.2_a-b"


@pytest.mark.parametrize("change,named", [
    ({"paths": {"raw": "data/source/raw"}}, r"paths\.source \('data/source'\) and paths\.raw \('data/source/raw'\)"),
    ({"paths": {"episodes": "./data/raw/"}}, r"paths\.raw \('data/raw'\) and paths\.episodes \('\./data/raw/'\)"),
    ({"paths": {"eval": "."}}, r"paths\.eval \('\.'\)"),
    ({"weights": {"dir": "models/w"}}, r"paths\.models \('models'\) and weights\.dir \('models/w'\)"),
])
def test_overlapping_paths_are_refused(repo_root, change, named):
    raw = _shipped(repo_root)
    for section, values in change.items():
        raw[section].update(values)
    with pytest.raises(ParamsError, match=rf"paths must be distinct folders.*{named}"):
        validate_params(raw)


def test_sibling_paths_with_a_common_prefix_are_fine(repo_root):
    raw = _shipped(repo_root)
    raw["paths"]["raw"], raw["paths"]["episodes"] = "data/r", "data/raw2"
    validate_params(raw)


@pytest.mark.parametrize("section,key,value", [
    ("generate", "spin_degrees", [True, 360]), ("generate", "video_size", [256, False]),
    ("evaluate", "cond_scales", [0.0, True]), ("train", "grad_norm_range", [False, 3.0]),
])
def test_booleans_inside_number_lists_are_refused(repo_root, section, key, value):
    raw = _shipped(repo_root)
    raw[section][key] = value
    with pytest.raises(ParamsError, match=rf"section '{section}': key '{key}' is .*holds a boolean"):
        validate_params(raw)


@pytest.mark.parametrize("section,key,value", [
    ("evaluate", "cond_scales", [float("nan")]), ("train", "max_grad_norm", float("inf")),
    ("train", "grad_norm_range", [float("-inf"), 3.0]), ("generate", "spin_prob", float("nan")),
    ("rollout", "text_cond_scale", float("inf")), ("download", "backoff_s", float("nan")),
])
def test_nan_and_inf_are_refused(repo_root, section, key, value):
    raw = _shipped(repo_root)
    raw[section][key] = value
    with pytest.raises(ParamsError, match=rf"key '{section}\.{key}(\.0)?': value -?(nan|inf) is invalid: .*finite"):
        validate_params(raw)


def test_nan_from_yaml_is_refused(tmp_path, shipped_params_file):
    text = shipped_params_file.read_text().replace("max_grad_norm: 5.0", "max_grad_norm: .inf")
    (tmp_path / "params.yaml").write_text(text)
    with pytest.raises(ParamsError, match=r"train\.max_grad_norm.*inf.*finite"):
        load_params(tmp_path / "params.yaml")



# The shipped params.yaml is the embedded default: the schema's defaults (the paper's values where
# there is one) at toy size. These keys, and only these, may differ; docs/params.md shows both.
EMBEDDED_DEFAULT_DEPARTURES = {
    "source.n_synthetic", "source.synthetic_steps",                                # a small offline source
    "sample.val_frames", "sample.T", "sample.mix",                                 # toy chunks, the generated set mixed in
    "generate.n_episodes", "generate.agents", "generate.max_steps", "generate.min_steps",
    "generate.switch_agent_prob", "generate.spin_prob",                            # short episodes that still switch/spin
    "rollout.text_prompts", "rollout.n_episodes", "rollout.steps",                 # 4 prompts with a metric, short
    "train.n_frames", "train.warmup_frames", "train.val_freq",                     # a run of seconds
    "tune.space",                                                                  # the guide's sweep (no default space)
}


def _flat(model, prefix=""):
    from steve1.params import Section

    out = {}
    for name in type(model).model_fields:
        value = getattr(model, name)
        out.update(_flat(value, f"{prefix}{name}.") if isinstance(value, Section) else {prefix + name: value})
    return out


def test_shipped_params_are_the_schema_defaults_but_the_declared_departures(repo_root, shipped_params_file):
    from steve1.params import Params

    shipped, schema = _flat(load_params(shipped_params_file)), _flat(Params())
    assert {k for k in schema if shipped[k] != schema[k]} == EMBEDDED_DEFAULT_DEPARTURES
    # every key is written out: dvc.yaml lists each key a stage reads, and DVC needs it in params.yaml
    raw = _shipped(repo_root)
    for key in schema:
        node = raw
        for part in key.split("."):
            assert isinstance(node, dict) and part in node, f"params.yaml lacks {key}"
            node = node[part]
