"""Compatibility name for :func:`steve1.unpickle.load_numpy_pickle` (the one restricted unpickler).

Kept only while ``steve1.data.steve1_format`` and ``steve1.eval.rollout`` still import from here;
new code imports ``steve1.unpickle``.
"""

from __future__ import annotations

from steve1.unpickle import UnsafePickleError, load_numpy_pickle

__all__ = ["UnsafePickleError", "load_numpy_pickle"]
