"""Params profiles merge into params.yaml, keep its comments and are validated first."""

from __future__ import annotations

import pytest
import yaml
from typer.testing import CliRunner

from fixtures.project import shipped_params
from steve1.cli import app
from steve1.layout import Layout
from steve1.params import ParamsError, load_params
from steve1.profiles import apply_profile, available_profiles


@pytest.fixture
def params_copy(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(shipped_params())
    return path


def test_shipped_profiles(params_copy):
    assert {"paper", "finetune"} <= set(available_profiles())
    changed = apply_profile("paper", params_copy)
    p = load_params(params_copy)
    assert "train.in_weights" in changed and "sample.T" in changed
    assert p.sample.T == 640 and p.train.batch_size == 12 and p.train.grad_accum == 4
    assert p.train.in_weights == "data/weights/rl-from-foundation-2x.weights" and p.embed.weights.endswith("attn.pth")
    assert len(p.download.index) == 5 and p.learning_rate == 4e-5
    assert "# train stage; top level" in params_copy.read_text()          # comments survive
    # STEVE-1's data mix: its generated VPT-agent episodes at their share (15M of 54M frames)
    assert p.generate.env == "minerl" and p.generate.n_episodes > 0 and len(p.generate.agents) == 2
    assert [a.weights for a in p.generate.agents] == ["foundation-model-2x.weights", "rl-from-foundation-2x.weights"]
    assert (p.generate.max_steps, p.generate.min_steps, p.generate.spin_prob) == (7200, 1000, 0.00133)
    assert all(f in p.weights.files for a in p.generate.agents for f in (a.model, a.weights))
    (mix,) = p.sample.mix
    layout = Layout.from_params(p)
    assert layout.mix_dirs([mix.name]) == {"generated": (layout.generated_episodes, layout.generated_embeds)}
    assert mix.train_frames / (mix.train_frames + p.sample.train_frames) == pytest.approx(15 / 54, abs=0.005)
    # evaluated like the paper: prior on data.pkl beside the official one, 11 text + the visual prompts
    assert p.prior.data == "data/weights/data.pkl" and p.prior.baseline == "data/weights/steve1_prior.pt"
    assert p.rollout.env == "minerl" and p.rollout.text_prompts == {} and p.rollout.steps == 3000
    assert p.rollout.visual_prompts_from == "data/weights/visual_prompt_embeds.zip"
    assert (p.rollout.text_cond_scale, p.rollout.visual_cond_scale) == (6.0, 7.0)
    assert {"data.pkl", "steve1_prior.pt", "visual_prompt_embeds.zip"} <= set(p.weights.files)

    apply_profile("finetune", params_copy)
    p = load_params(params_copy)
    assert p.learning_rate == 1e-5 and p.sample.T == 320 and p.train.n_frames == 10_000_000
    assert p.train.in_weights.endswith("steve1.weights") and p.train.val_freq == 200
    assert p.rollout.env == "minerl" and p.rollout.prior == "data/weights/steve1_prior.pt"
    assert p.sample.mix == [] and p.generate.n_episodes == 0       # no stand-in episodes in a real fine-tune


def test_embedded_default_plays_the_stand_in_and_mixes_its_generated_episodes(tmp_path):
    (tmp_path / "params.yaml").write_text(shipped_params())
    p = load_params(tmp_path / "params.yaml")
    assert p.rollout.env == "standin" and p.generate.env == "standin"
    assert p.rollout.n_episodes * p.rollout.steps * len(p.rollout.text_prompts) <= 400      # make repro stays quick
    assert p.generate.n_episodes * p.generate.max_steps <= 300
    assert [m.name for m in p.sample.mix] == ["generated"]
    assert p.generate.min_steps >= p.sample.T + 15                                      # long enough to be sampled


def test_an_empty_mapping_in_a_profile_replaces(params_copy, tmp_path):
    overlay = tmp_path / "o.yaml"
    overlay.write_text(yaml.safe_dump({"rollout": {"text_prompts": {}}}))
    assert load_params(params_copy).rollout.text_prompts
    apply_profile(str(overlay), params_copy)
    assert load_params(params_copy).rollout.text_prompts == {}


def test_invalid_profile_is_refused_before_writing(params_copy, tmp_path):
    before = params_copy.read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"sample": {"T": -1}}))
    with pytest.raises(ParamsError, match=r"sample\.T"):
        apply_profile(str(bad), params_copy)
    assert params_copy.read_text() == before
    with pytest.raises(ParamsError, match="profile 'nope' not found"):
        apply_profile("nope", params_copy)


def test_cli_dry_run_changes_nothing(params_copy):
    before = params_copy.read_text()
    result = CliRunner().invoke(app, ["profile", "paper", "--params", str(params_copy), "--dry-run"])
    assert result.exit_code == 0 and "would change" in result.output and "sample.T" in result.output
    assert params_copy.read_text() == before
