"""Validation per sampling set, and the set whose val loss chooses ``best.weights`` (``train.best_on``).

A mixed sampling (``sample.mix``) keys its episodes ``<set>/<id>`` (the main set's bare), so each
val chunk's set is known. When two or more sets have val chunks, validation keeps every
``val_every_nth``-th chunk *of each set* (a small set keeps its first chunk), runs the last partial
batch too (a set must not vanish into a dropped remainder; with several processes the sampler still
leaves out the last ``n % processes`` chunks, so each process runs as many) and reports each set's mean loss per
chunk and call beside the overall one: forgetting on the original data and gain on the new data
are two curves. With fewer than two such sets (one set, or the embedded default, whose generated
set has ``val_frames: 0``) validation is the single-set one, unchanged: every n-th chunk, full
batches, one loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional

import numpy as np

from steve1.data.sampling import Chunk, Sampling, split_key
from steve1.errors import UserError
from steve1.params import BEST_ON_ALL


class BestOnError(UserError):
    """``train.best_on`` names a set whose val loss is never measured."""


@dataclass(frozen=True)
class ValSets:
    """The sets of a validation subset: their names (sampling order) and each chunk's set."""

    names: tuple[str, ...]
    chunk_set: np.ndarray   # int64 [n chunks of the subset]: index into ``names``


def val_subset(sampling: Sampling, every_nth: int) -> tuple[list[Chunk], Optional[ValSets]]:
    """The val chunks validated (``(key, start, end)``) and their sets (None: a single-set validation)."""
    chunks = sampling.chunks("val")
    by_set: dict[str, list[Chunk]] = {}
    for chunk in chunks:
        by_set.setdefault(split_key(chunk[0])[0], []).append(chunk)
    if len(by_set) < 2:
        return chunks[::every_nth], None
    subset, rows = [], []
    for i, set_chunks in enumerate(by_set.values()):
        kept = set_chunks[::every_nth]
        subset += kept
        rows += [i] * len(kept)
    return subset, ValSets(tuple(by_set), np.asarray(rows, np.int64))


def val_set_names(sampling: Sampling) -> list[str]:
    """The sets that have val chunks, in sampling order."""
    return list(dict.fromkeys(split_key(c[0])[0] for c in sampling.val_chunks))


def best_criterion(best_on: str, sampling: Sampling, where: str | Path) -> str:
    """The key of the validation losses that chooses ``best.weights``: ``all`` or a set's name.

    Refuses a set without val chunks in this sampling (``where`` names it): its loss would never be
    measured and ``best.weights`` would never be written. The only set with val chunks is the overall
    loss itself, so it is ``all``.
    """
    if best_on == BEST_ON_ALL:
        return BEST_ON_ALL
    names = val_set_names(sampling)
    if best_on not in names:
        raise BestOnError(f"{where}: train.best_on is {best_on!r}, but this sampling has no val chunks of set "
                         f"{best_on!r} (sets with val chunks: {names or 'none'}); give that set val_frames and "
                         f"re-run the sample stage, or set train.best_on to one of {[BEST_ON_ALL, *names]}")
    return best_on if len(names) > 1 else BEST_ON_ALL


def improves(losses: Mapping[str, float], criterion: str, best: Optional[float]) -> Optional[float]:
    """The criterion's loss when it beats ``best`` (the lowest so far; None: none yet), else None."""
    if criterion not in losses:
        raise BestOnError(f"train.best_on is {criterion!r}, but validation measured no chunk of that set (its val "
                         f"chunks fell in the remainder the processes leave out); give the set more val chunks")
    score = losses[criterion]
    return score if best is None or score < best else None
