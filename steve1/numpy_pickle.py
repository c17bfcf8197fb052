"""A pickle reader that rebuilds numpy arrays and plain containers, and nothing else.

STEVE-1 released pickles: the prior's training pairs (``data.pkl``) and the visual prompt goals
(``visual_prompt_embeds/<name>.pkl``). A pickle may import and call anything, so these are read
by an unpickler that refuses every global except the few numpy needs to rebuild an array.
"""

from __future__ import annotations

import io
import pickle
from typing import Any

import numpy as np

_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),   # protocol <= 2 spells an array's raw bytes as _codecs.encode(str, "latin1")
}


class UnsafePickleError(ValueError):
    """The pickle asks for something other than numpy arrays and plain containers, or is not a pickle."""


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise UnsafePickleError(f"refusing to unpickle {module}.{name}: only numpy arrays are allowed")
        if module.startswith("numpy.core.") and int(np.__version__.split(".")[0]) >= 2:
            module = "numpy._core." + module[len("numpy.core."):]   # numpy 1.x pickles under numpy 2
        return super().find_class(module, name)


def load_numpy_pickle(data: bytes, where: str = "<pickle>") -> Any:
    """Unpickle ``data`` allowing only numpy arrays, numbers, strings and containers."""
    try:
        return _NumpyOnlyUnpickler(io.BytesIO(data)).load()
    except UnsafePickleError as exc:
        raise UnsafePickleError(f"{where}: {exc}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as exc:
        raise UnsafePickleError(f"{where}: not a readable pickle: {exc}") from None
