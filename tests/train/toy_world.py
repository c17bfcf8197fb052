"""A tiny training world for the train tests: synthetic episodes + embeds, a sampling JSON, a params.yaml.

``make_world(root, train_overrides)`` returns the params path; the default trains the tiny preset
for a few calls of 8 frames (T=16, trunc_t=8, batch 2) in seconds. ``make_mixed_world`` adds a
second set, ``mine`` (``sample.mix``), with val chunks of its own. A module of its own (not a
conftest) so the subprocess runs of the tests can import it too.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

from steve1.data import formats
from steve1.data.sampling import MAIN_SET, SetSpec, make_mixed_sampling, make_sampling
from steve1.io import write_json_atomic

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fixtures.episodes import EpisodeFactory  # noqa: E402

T = 16
EPISODES = {"ep-a": 60, "ep-b": 63, "ep-c": 58, "ep-v": 50}


def make_world(root: Path, train_overrides: dict | None = None, top: dict | None = None) -> Path:
    """Write data under ``root/data``, the sampling and ``root/params.yaml``; return the params path."""
    root = Path(root)
    data = root / "data"
    if not (data / "samplings" / "toy.json").exists():
        factory = EpisodeFactory(data)
        for eid, n in EPISODES.items():
            factory(eid, n)
        sample = {"name": "toy", "train_frames": 10_000, "val_frames": 1, "seed": 0, "T": T,
                  "min_btwn_goals": 15, "max_btwn_goals": 30}
        body = make_sampling({e: n for e, n in EPISODES.items() if e != "ep-v"} | {"ep-v": EPISODES["ep-v"]},
                             train_frames=10_000, val_frames=1, seed=0, T=T, min_btwn_goals=15,
                             val_episodes=["ep-v"])
        write_json_atomic(data / "samplings" / "toy.json",
                          {"format_version": formats.SAMPLING_FORMAT_VERSION, "params": sample, "invalid": [], **body})
    train = {"run": "toy", "preset": "tiny", "deepspeed": "none", "n_frames": 96, "warmup_frames": 16,
             "batch_size": 2, "trunc_t": 8, "val_freq": 2, "val_freq_begin": 2, "val_freq_switch_steps": 0,
             "val_every_nth": 1, "log_every_steps": 1, "checkpoint_every_steps": 2, "seed": 0,
             **(train_overrides or {})}
    params = {"learning_rate": 1e-3,
              "paths": {"episodes": str(data / "episodes"), "embeds": str(data / "embeds"),
                        "samplings": str(data / "samplings"), "models": str(root / "models")},
              "sample": {"name": "toy", "T": T, "min_btwn_goals": 15, "max_btwn_goals": 30},
              "train": train, **(top or {})}
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


MINE = {"mine-a": 70, "mine-b": 52, "mine-v": 66, "mine-w": 40}   # mine-v and mine-w are its val episodes


def make_mixed_world(root: Path, train_overrides: dict | None = None) -> Path:
    """``make_world`` with a mixed sampling: main (val ep-v: 3 chunks) and ``mine`` (val mine-v, mine-w: 6 chunks)."""
    root = Path(root)
    data = root / "data"
    mine_dir = data / "custom" / "mine"
    if not (data / "samplings" / "mixed.json").exists():
        main, mine = EpisodeFactory(data), EpisodeFactory(mine_dir)
        for eid, n in EPISODES.items():
            main(eid, n)
        for i, (eid, n) in enumerate(MINE.items()):
            mine(eid, n, tag=100 + i)
        specs = [SetSpec(MAIN_SET, dict(EPISODES), 10_000, 1), SetSpec("mine", dict(MINE), 32, 1)]
        body = make_mixed_sampling(specs, seed=0, T=T, val_episodes={MAIN_SET: ["ep-v"], "mine": ["mine-v", "mine-w"]})
        folders = {MAIN_SET: data, "mine": mine_dir}
        for name, folder in folders.items():
            body["sets"][name] = {"episodes": str(folder / "episodes"), "embeds": str(folder / "embeds"),
                                  **body["sets"][name]}
        sample = {"name": "mixed", "train_frames": 10_000, "val_frames": 1, "seed": 0, "T": T, "min_btwn_goals": 15,
                  "max_btwn_goals": 30, "mix": [{"name": "mine", "train_frames": 32, "val_frames": 1}]}
        write_json_atomic(data / "samplings" / "mixed.json",
                          {"format_version": formats.SAMPLING_FORMAT_VERSION, "params": sample, "invalid": [], **body})
    path = make_world(root, train_overrides, top={"custom": {"mine": {"source": str(root / "recordings")}}})
    params = yaml.safe_load(path.read_text())
    params["sample"].update(name="mixed", mix=[{"name": "mine", "train_frames": 32, "val_frames": 1}])
    path.write_text(yaml.safe_dump(params))
    return path
