"""``steve1 fit-t``: the largest T (a multiple of train.trunc_t) at which every set keeps the episodes its
splits need, written into params.yaml with its comments; dry-run writes nothing; no fit is a clear error."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from fixtures.episodes import EpisodeFactory
from steve1.cli import app
from steve1.data.fit_t import FitError, SetEpisodes, fit_T
from steve1.params import load_params


def _set(name: str, lengths: dict[str, int], needed: int) -> SetEpisodes:
    return SetEpisodes(name, Path(f"data/{name}"), lengths, len(lengths), needed)


def test_fit_picks_the_largest_multiple_of_trunc_t_every_set_allows():
    main = _set("main", {"a": 400, "b": 200, "c": 100}, needed=2)   # train + val: two episodes of >= T + 15
    mine = _set("mine", {"x": 150, "y": 90}, needed=1)
    fit = fit_T([main, mine], T_max=320, trunc_t=32, min_btwn_goals=15)
    # main alone allows T + 15 <= 200 -> 160; mine's longest (150) allows 135 -> 128
    assert fit.T == 128 and fit.kept == {"main": (2, 600), "mine": (1, 150)}
    assert fit_T([main], T_max=320, trunc_t=32, min_btwn_goals=15).T == 160
    assert fit_T([main], T_max=96, trunc_t=32, min_btwn_goals=15).T == 96    # never above sample.T
    # min_btwn_goals above T: the episode length it needs does not shrink below max(T, gap) + 15
    assert fit_T([_set("m", {"a": 120}, 1)], T_max=320, trunc_t=8, min_btwn_goals=100).T == 104


def test_no_fit_names_the_set_that_falls_short_and_the_fix():
    sets = [_set("main", {"a": 400, "b": 300}, 2), _set("mine", {"x": 60}, 1), _set("gen", {}, 1)]
    with pytest.raises(FitError, match=r"no chunk length fits: even at T=64 \(train.trunc_t.*>= 79 frames.*"
                                       r"set 'mine' \(data/mine\) keeps 0 of 1 episode\(s\), the longest 60 frames, "
                                       r"but its splits need 1; set 'gen' has no episodes in data/gen "
                                       r"\(run dvc repro import-set@gen embed-set@gen\).*lower train.trunc_t"):
        fit_T(sets, T_max=320, trunc_t=64, min_btwn_goals=15)


PARAMS = """\
# my fine-tuning setup
paths:
  episodes: {root}/data/episodes
  embeds: {root}/data/embeds
  custom: {root}/custom
custom:
  mine: {{source: recordings/mine}}   # my recordings
sample:
  T: 320                 # the finetune profile's chunk length
  train_frames: 1000
  val_frames: 100
  mix: [{{name: mine, train_frames: 200}}]
train:
  trunc_t: 32            # T must be a multiple
"""


@pytest.fixture
def world(tmp_path):
    main, mine = EpisodeFactory(tmp_path / "data"), EpisodeFactory(tmp_path / "custom" / "mine")
    for eid, n in {"a": 400, "b": 200, "c": 100}.items():
        main(eid, n)
    for eid, n in {"x": 150, "y": 90}.items():
        mine(eid, n)
    path = tmp_path / "params.yaml"
    path.write_text(PARAMS.format(root=tmp_path))
    return path


def test_fit_t_writes_sample_T_keeping_comments(world):
    result = CliRunner().invoke(app, ["fit-t", "--params", str(world)])
    assert result.exit_code == 0, result.output
    assert "set 'main': keeps 2 of 3 episode(s), 600 frames" in result.output
    assert "set 'mine': keeps 1 of 2 episode(s), 150 frames" in result.output
    assert "set sample.T: 128 (episodes need >= 143 frames)" in result.output
    text = world.read_text()
    assert "  T: 128                 # the finetune profile's chunk length" in text
    assert text.startswith("# my fine-tuning setup") and "# my recordings" in text and "# T must be a multiple" in text
    assert load_params(world).sample.T == 128
    again = CliRunner().invoke(app, ["fit-t", "--params", str(world)])
    assert again.exit_code == 0 and "sample.T: 128 already fits; nothing to change" in again.output


def test_fit_t_dry_run_writes_nothing(world):
    before = world.read_bytes()
    result = CliRunner().invoke(app, ["fit-t", "--params", str(world), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "would set sample.T: 128" in result.output and world.read_bytes() == before


def test_fit_t_without_a_fit_exits_2_naming_the_set_and_leaves_params(world, tmp_path):
    for path in (tmp_path / "custom" / "mine" / "episodes").glob("x*"):
        path.unlink()   # mine keeps only its 90-frame episode: too short even for T=160 (needs 175)
    world.write_text(world.read_text().replace("trunc_t: 32", "trunc_t: 160"))
    before = world.read_bytes()
    result = CliRunner().invoke(app, ["fit-t", "--params", str(world)])
    assert result.exit_code == 2
    assert "no chunk length fits: even at T=160" in result.output and "set 'mine'" in result.output
    assert world.read_bytes() == before


def test_fit_t_sets_sample_T_only(world):
    """train.T is gone (its only legal value was sample.T): fit-t writes the one chunk length."""
    result = CliRunner().invoke(app, ["fit-t", "--params", str(world)])
    assert result.exit_code == 0, result.output
    assert load_params(world).train_T == load_params(world).sample.T == 128

