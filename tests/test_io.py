"""Atomic writes leave either the complete new file or nothing under the final name; full disks and
unwritable output folders are named."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from steve1.io import (DiskFullError, NotWritableError, atomic_path, check_writable, remove_stale_temps,
                       write_json_atomic)


def test_atomic_success_and_failure(tmp_path):
    final = tmp_path / "out.json"
    write_json_atomic(final, {"a": 1})
    assert final.read_text().strip() == '{\n "a": 1\n}'
    with pytest.raises(RuntimeError):
        with atomic_path(final) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert '"a": 1' in final.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_remove_stale_temps(tmp_path):
    (tmp_path / ".tmp-x.h5.abc").write_text("partial")
    (tmp_path / "keep.h5").write_text("ok")
    removed = remove_stale_temps(tmp_path)
    assert [p.name for p in removed] == [".tmp-x.h5.abc"]
    assert [p.name for p in tmp_path.iterdir()] == ["keep.h5"]


def test_read_json_names_the_file(tmp_path):
    from steve1.io import read_json

    (tmp_path / "ok.json").write_text('{"a": [1]}')
    assert read_json(tmp_path / "ok.json") == {"a": [1]}
    with pytest.raises(KeyError, match=r"nope\.json: file not found \(run the sample stage\)"):
        read_json(tmp_path / "nope.json", KeyError, "run the sample stage")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match=r"bad\.json: not valid JSON"):
        read_json(tmp_path / "bad.json")


# ------------------------------------------------------------------------------ full disks, unwritable folders

def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_disk_full_on_a_manifest_names_the_path_and_leaves_no_partial(tmp_path, monkeypatch):
    final = tmp_path / "manifest.json"
    write_json_atomic(final, {"old": True})
    monkeypatch.setattr(Path, "write_text", _no_space)
    with pytest.raises(DiskFullError, match=rf"^disk full at {final}: ") as info:
        write_json_atomic(final, {"new": True})
    assert info.value.errno == errno.ENOSPC
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"] and "old" in final.read_text()


def test_a_writer_without_errno_is_reported_as_disk_full_only_when_space_is_gone(tmp_path, monkeypatch):
    """torch.save on a full disk raises RuntimeError('basic_ios::clear: iostream error'), no errno."""
    import steve1.io

    def torch_like(tmp):
        raise RuntimeError("basic_ios::clear: iostream error")

    for free, expected in ((10, DiskFullError), (10 << 30, RuntimeError)):
        monkeypatch.setattr(steve1.io, "free_bytes", lambda path, free=free: free)
        with pytest.raises(expected) as info:
            with atomic_path(tmp_path / "w.weights") as tmp:
                torch_like(tmp)
        assert type(info.value) is expected
        assert list(tmp_path.iterdir()) == []
    assert "disk full at" not in str(info.value)


def test_check_writable_refuses_a_folder_that_cannot_be_created(tmp_path):
    """A path under a regular file fails for every user. (Permission bits would not: tests run as
    root, who writes into a chmod 0o555 folder; the read-only mount test below covers that case.)"""
    (tmp_path / "a-file").write_text("")
    with pytest.raises(NotWritableError, match=r"a-file/out: output folder is not writable \(Not a directory\)"):
        check_writable(tmp_path / "ok" / "deeper", tmp_path / "a-file" / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]  # no trace: probe and created folders removed


def test_check_writable_refuses_a_full_filesystem(tmp_path, monkeypatch):
    import steve1.io

    monkeypatch.setattr(steve1.io, "free_bytes", lambda path: 4096)
    with pytest.raises(DiskFullError, match=rf"disk full at {tmp_path} \(4096 bytes free\)"):
        check_writable(tmp_path)


def test_check_writable_refuses_a_read_only_mount_even_for_root(mounted):
    """What a chmod 0o555 folder cannot show under root: a folder nobody may write to."""
    where = mounted("ro,size=1m")
    with pytest.raises(NotWritableError, match=rf"{where}/out: output folder is not writable \(Read-only file system\)"):
        check_writable(where / "out")
