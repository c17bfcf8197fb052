"""The largest chunk length T the episodes at hand allow (``steve1 fit-t``).

A chunk of T frames needs episodes of at least ``min_episode_frames(T, min_btwn_goals)`` =
``max(T, min_btwn_goals) + 15`` frames, so the ``finetune`` profile's T=320 rejects recordings
shorter than 335 frames. fit-t scans each set the sample stage would read (the main set and every
``sample.mix`` set, from the same layout folders) once, then takes the largest T <= ``sample.T``
that is a multiple of ``train.trunc_t`` (which must divide T) at which every set keeps as many
usable episodes as the sample stage needs: one per split the set has a budget for (train, and val
unless ``val_from`` supplies it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from steve1.data.sampling import MAIN_SET, min_episode_frames, scan_episodes
from steve1.errors import UserError
from steve1.layout import GENERATED_SET
from steve1.params import Params


class FitError(UserError):
    """No chunk length lets every set keep the episodes its splits need."""


@dataclass
class SetEpisodes:
    """One set's episodes as the sample stage sees them, before any T is chosen."""

    name: str
    episodes_dir: Path
    lengths: dict[str, int]     # frames of the episodes usable at the smallest T (readable, embedded, valid rows)
    n_found: int                # episodes found in its folders, usable or not
    needed: int                 # usable episodes its splits need: one per split with a budget

    def kept(self, T: int, min_btwn_goals: int) -> tuple[int, int]:
        """(episodes, frames) usable at chunk length T."""
        need = min_episode_frames(T, min_btwn_goals)
        kept = [n for n in self.lengths.values() if n >= need]
        return len(kept), sum(kept)


@dataclass
class Fit:
    """The chosen T and, per set, the (episodes, frames) it keeps there."""

    T: int
    kept: dict[str, tuple[int, int]]

    def min_frames(self, min_btwn_goals: int) -> int:
        """The shortest usable episode at this T."""
        return min_episode_frames(self.T, min_btwn_goals)

    def describe(self, sets: list[SetEpisodes]) -> list[str]:
        return [f"set {s.name!r}: keeps {self.kept[s.name][0]} of {s.n_found} episode(s), "
                f"{self.kept[s.name][1]} frames" for s in sets]


def scan_sets(params: Params, dirs: Mapping[str, tuple[Path, Path]]) -> list[SetEpisodes]:
    """Scan the main set (``dirs['main']``) and each ``sample.mix`` set once (at the smallest T)."""
    sample = params.sample
    budgets = {MAIN_SET: (sample.train_frames, sample.val_frames), **{m.name: (m.train_frames, m.val_frames)
                                                                     for m in sample.mix}}
    out = []
    for name, (train_frames, val_frames) in budgets.items():
        episodes_dir, embeds_dir = dirs[name]
        scan = scan_episodes(episodes_dir, embeds_dir, 1, sample.min_btwn_goals)
        needed = int(train_frames > 0) + int(val_frames > 0 and not sample.val_from)
        out.append(SetEpisodes(name, Path(episodes_dir), scan.lengths, len(scan.lengths) + len(scan.invalid),
                               needed))
    return out


def fit_T(sets: list[SetEpisodes], T_max: int, trunc_t: int, min_btwn_goals: int) -> Fit:
    """The largest multiple of ``trunc_t`` <= ``T_max`` at which every set keeps its ``needed`` episodes."""
    for T in range(T_max - T_max % trunc_t, 0, -trunc_t):
        kept = {s.name: s.kept(T, min_btwn_goals) for s in sets}
        if all(kept[s.name][0] >= s.needed for s in sets):
            return Fit(T, kept)
    raise FitError(_why_none(sets, trunc_t, min_btwn_goals))


def _why_none(sets: list[SetEpisodes], trunc_t: int, min_btwn_goals: int) -> str:
    """Which sets fall short even at the smallest T, and what to do."""
    smallest = trunc_t
    need = min_episode_frames(smallest, min_btwn_goals)
    short = []
    for s in sets:
        n, _ = s.kept(smallest, min_btwn_goals)
        if n >= s.needed:
            continue
        if not s.n_found:
            fix = {MAIN_SET: "run the decode and embed stages",
                   GENERATED_SET: "run the generate and embed-generated stages"}.get(
                       s.name, f"run dvc repro import-set@{s.name} embed-set@{s.name}")
            short.append(f"set {s.name!r} has no episodes in {s.episodes_dir} ({fix})")
            continue
        longest = f", the longest {max(s.lengths.values())} frames" if s.lengths else ""
        short.append(f"set {s.name!r} ({s.episodes_dir}) keeps {n} of {s.n_found} episode(s){longest}, "
                     f"but its splits need {s.needed}")
    return (f"no chunk length fits: even at T={smallest} (train.trunc_t, the smallest multiple), which needs "
            f"episodes of >= {need} frames = max(T, sample.min_btwn_goals={min_btwn_goals}) + 15, "
            + "; ".join(short) + "; record longer (or more) episodes, or lower train.trunc_t")
