"""The one restricted unpickler: pickles we read may name only the globals of an allow-list.

A pickle may import and call anything, so every pickle this project reads from outside goes through
:class:`Unpickler` with one of the allow-lists below; any other global, and any persistent id, is
refused (:class:`UnsafePickleError`) before it can be imported, let alone called.

* :data:`NUMPY`: STEVE-1's released pickles (the prior's training pairs ``data.pkl``, visual prompt
  goals, a dataset episode's ``embeds_attn.pkl``): numpy arrays, numbers, strings and containers.
* :data:`VPT_MODEL`: the official VPT ``.model`` architecture files: plain containers and numbers, plus
  the three ``gym3.types`` classes they reference, which are never imported but become inert
  :class:`PickledObject` records (their class name, constructor args and state).

Torch ``.weights``/checkpoints are not pickles we unpickle ourselves: ``torch.load(weights_only=True)``
reads them (``steve1.train.safe_load``, ``steve1.models.checkpoints``).
"""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass
from typing import Any, BinaryIO

from steve1.errors import UserError


class UnsafePickleError(UserError, pickle.UnpicklingError, ValueError):
    """A pickle names a global its allow-list does not hold, or is not a readable pickle."""


@dataclass(frozen=True)
class AllowList:
    """What one kind of pickle may name.

    ``what`` is said in the refusal ("only <what> are allowed") and ``kind`` in the damaged-file
    message ("not a readable <kind>"). ``globals`` are imported as themselves; ``inert`` are never
    imported and load as :class:`PickledObject` records.
    """

    what: str
    kind: str
    globals: frozenset[tuple[str, str]] = frozenset()
    inert: frozenset[tuple[str, str]] = frozenset()


NUMPY = AllowList(
    what="numpy arrays",
    kind="pickle",
    globals=frozenset({
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),   # protocol <= 2 spells an array's raw bytes as _codecs.encode(str, "latin1")
    }),
)

VPT_MODEL = AllowList(
    what="plain containers, numbers and gym3.types.{DictType,TensorType,Discrete}",
    kind="VPT .model pickle",
    globals=frozenset({("builtins", "set"), ("builtins", "frozenset"), ("builtins", "complex")}),
    inert=frozenset({("gym3.types", "DictType"), ("gym3.types", "TensorType"), ("gym3.types", "Discrete")}),
)


class PickledObject:
    """Inert record of an allowed non-builtin object: its class name, constructor args and BUILD state."""

    pickle_class = ""

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        obj.args, obj.kwargs, obj.state = args, kwargs, None
        return obj

    def __setstate__(self, state):
        self.state = state

    def __repr__(self) -> str:
        return f"PickledObject({self.pickle_class}, state={self.state!r})"


_records: dict[str, type] = {}


def _record_class(qualname: str) -> type:
    if qualname not in _records:
        _records[qualname] = type(qualname.rsplit(".", 1)[-1], (PickledObject,), {"pickle_class": qualname})
    return _records[qualname]


def to_plain(obj: Any) -> Any:
    """JSON-like view: tuples -> lists, records -> {"__pickle_class__", "__state__"} (as the reference JSON)."""
    if isinstance(obj, PickledObject):
        return {"__pickle_class__": obj.pickle_class, "__state__": to_plain(obj.state)}
    if isinstance(obj, dict):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    return obj


class Unpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose ``find_class`` resolves only ``allow``'s globals; nothing else is imported."""

    def __init__(self, file: BinaryIO, allow: AllowList, source: str = "<pickle>"):
        super().__init__(file)
        self.allow, self.source = allow, source

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.allow.inert:
            return _record_class(f"{module}.{name}")
        if (module, name) not in self.allow.globals:
            raise UnsafePickleError(f"{self.source}: refusing to unpickle {module}.{name}: "
                                    f"only {self.allow.what} are allowed")
        if module.startswith("numpy.core."):
            import numpy as np
            if int(np.__version__.split(".")[0]) >= 2:
                module = "numpy._core." + module[len("numpy.core."):]   # numpy 1.x pickles under numpy 2
        return super().find_class(module, name)

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self.source}: refusing to unpickle persistent id {pid!r}: "
                                f"only {self.allow.what} are allowed")


def restricted_load(data: bytes | BinaryIO, allow: AllowList, source: str = "<pickle>") -> Any:
    """Unpickle ``data`` (bytes or a binary file) with ``allow``; anything refused or unreadable is one
    :class:`UnsafePickleError` line naming ``source``."""
    file = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data
    try:
        return Unpickler(file, allow, source).load()
    except UnsafePickleError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError,
            AttributeError, MemoryError) as exc:     # what a damaged or foreign pickle raises while loading
        raise UnsafePickleError(f"{source}: not a readable {allow.kind} ({type(exc).__name__}: {exc})") from None


def load_numpy_pickle(data: bytes, where: str = "<pickle>") -> Any:
    """Unpickle ``data`` allowing only numpy arrays, numbers, strings and containers (:data:`NUMPY`)."""
    return restricted_load(data, NUMPY, where)
