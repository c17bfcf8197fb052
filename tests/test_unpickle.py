"""The one restricted unpickler (steve1.unpickle): each allow-list loads its own kind of pickle and
refuses every other global, without importing or running it."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from steve1.errors import UserError
from steve1.unpickle import NUMPY, VPT_MODEL, PickledObject, UnsafePickleError, restricted_load


def _system(cmd: str, protocol: int) -> bytes:
    class Evil:
        def __reduce__(self):
            return os.system, (cmd,)
    return pickle.dumps(Evil(), protocol=protocol)


@pytest.mark.parametrize("allow", [NUMPY, VPT_MODEL], ids=["numpy", "vpt_model"])
@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_both_allow_lists_refuse_a_code_running_pickle_without_running_it(tmp_path, allow, protocol):
    marker = tmp_path / "pwned"
    with pytest.raises(UnsafePickleError, match=rf"^evil\.pkl: refusing to unpickle {os.system.__module__}\.system: "
                                                rf"only .* are allowed$") as info:
        restricted_load(_system(f"touch {marker}", protocol), allow, "evil.pkl")
    assert not marker.exists()
    assert isinstance(info.value, UserError) and isinstance(info.value, ValueError)   # one line in a stage


@pytest.mark.parametrize("allow,refused", [(NUMPY, "builtins.set"), (VPT_MODEL, "numpy")],
                         ids=["numpy", "vpt_model"])
def test_each_allow_list_refuses_what_only_the_other_allows(allow, refused):
    data = pickle.dumps({1, 2}, protocol=3) if refused == "builtins.set" else pickle.dumps(np.zeros(2))
    with pytest.raises(UnsafePickleError, match=f"refusing to unpickle {refused}"):
        restricted_load(data, allow)


def test_numpy_allow_list_loads_arrays_and_containers():
    rows = [None, np.arange(6, dtype=np.float32).reshape(1, 6), {"a": (1, 2.5, "x")}]
    for protocol in (2, 4):
        got = restricted_load(pickle.dumps(rows, protocol=protocol), NUMPY)
        assert got[0] is None and got[2] == {"a": (1, 2.5, "x")}
        np.testing.assert_array_equal(got[1], rows[1])


def test_vpt_allow_list_makes_gym3_types_inert_records():
    data = b"\x80\x04\x8c\ngym3.types\x8c\x08Discrete\x93)\x81}\x8c\x01n\x8a\x01\x05sb."   # Discrete() + BUILD {n: 5}
    rec = restricted_load(data, VPT_MODEL)
    assert isinstance(rec, PickledObject) and rec.pickle_class == "gym3.types.Discrete" and rec.state == {"n": 5}
    with pytest.raises(UnsafePickleError, match="refusing to unpickle gym3.types.Discrete"):
        restricted_load(data, NUMPY)


@pytest.mark.parametrize("allow", [NUMPY, VPT_MODEL], ids=["numpy", "vpt_model"])
def test_a_damaged_pickle_is_one_line_naming_the_source(allow):
    with pytest.raises(UnsafePickleError, match=rf"^cut\.pkl: not a readable {allow.kind} \(") as info:
        restricted_load(pickle.dumps({"a": [1, 2, 3]})[:9], allow, "cut.pkl")
    assert "\n" not in str(info.value)


def test_persistent_ids_are_refused():
    class P(pickle.Pickler):
        def persistent_id(self, obj):
            return "ext" if obj == "x" else None
    import io
    buf = io.BytesIO()
    P(buf).dump(["x"])
    for allow in (NUMPY, VPT_MODEL):
        with pytest.raises(UnsafePickleError, match="persistent id"):
            restricted_load(buf.getvalue(), allow)
