"""Process-wide numeric settings that our output bytes depend on.

MKL, torch's BLAS on x86, splits the reduction dimension of a matrix product across threads for
some shapes (few rows, long reductions: MineCLIP's temporal pooling of a short episode, 2048 -> 512
over ~200 rows). The sum is then taken in another order and the last bits depend on the thread
count: 2 threads in a local process, 1 in a Ray worker. MKL's strict conditional numerical
reproducibility (CNR) mode fixes the order whatever the thread count. MKL reads the mode at its
first computation, so :func:`request_reproducible_blas` runs when ``steve1`` is imported, before
torch; :func:`require_reproducible_blas` confirms it took effect before a stage computes anything.

The default branch ``AUTO`` lets MKL pick the fastest code path of this processor, so results are
bit-identical for any thread count on one instruction set; a user who needs the same bits across
processors sets ``MKL_CBWR`` to a common branch (``AVX2``, ``COMPATIBLE``) and we add ``STRICT``.
"""

from __future__ import annotations

import ctypes
import functools
import os
from typing import Optional

from steve1.errors import UserError

ENV = "MKL_CBWR"
DEFAULT_BRANCH = "AUTO"
STRICT = "STRICT"
_STRICT_BIT = 0x10000           # MKL_CBWR_STRICT in mkl_service.h
_ALL = ~0                       # MKL_CBWR_ALL: ask for the whole mode


def strict_mode(value: Optional[str]) -> str:
    """``value`` of ``MKL_CBWR`` with ``STRICT`` added (the branch kept, ``AUTO`` when none is set)."""
    parts = [p.strip() for p in (value or "").split(",") if p.strip()]
    if not parts or parts[0].upper() == STRICT:
        parts.insert(0, DEFAULT_BRANCH)
    if STRICT not in (p.upper() for p in parts):
        parts.append(STRICT)
    return ",".join(parts)


def request_reproducible_blas() -> None:
    """Ask MKL for strict CNR through the environment (read at its first computation; inherited by
    the processes we start)."""
    os.environ[ENV] = strict_mode(os.environ.get(ENV))


@functools.lru_cache(maxsize=1)
def _mkl_mode_functions() -> Optional[tuple]:
    """MKL's ``cbwr`` get/set functions as torch links them, or None when torch has no MKL."""
    import torch

    if not torch.backends.mkl.is_available():
        return None
    lib = ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so"))
    try:
        get, set_ = lib.mkl_serv_cbwr_get, lib.mkl_serv_cbwr_set
    except AttributeError:
        return None
    get.argtypes, get.restype = [ctypes.c_int], ctypes.c_int
    set_.argtypes, set_.restype = [ctypes.c_int], ctypes.c_int
    return get, set_


def blas_is_reproducible() -> Optional[bool]:
    """Whether MKL runs in strict CNR mode now (None: torch uses no MKL we can ask)."""
    fns = _mkl_mode_functions()
    if fns is None:
        return None
    return bool(fns[0](_ALL) & _STRICT_BIT)


class BlasModeError(UserError, RuntimeError):
    """MKL computed before its reproducible mode was set: this process's results may depend on threads."""


def require_reproducible_blas() -> None:
    """Turn strict CNR on if MKL has not computed yet; raise when it is too late for this process."""
    fns = _mkl_mode_functions()
    if fns is None or blas_is_reproducible():
        return
    get, set_ = fns
    if set_(get(_ALL) | _STRICT_BIT) != 0:
        raise BlasModeError(
            "MKL's reproducible mode could not be turned on: a matrix product ran in this process before "
            "steve1 was imported, so results would depend on the thread count. Import steve1 before "
            f"computing with torch, or start the process with {ENV}={strict_mode(os.environ.get(ENV))}")
