"""One trainer per run folder, and no trainer outliving its launcher.

``dvc repro`` runs the train stage as ``dvc -> sh -c "python -m stages.train"``. Killing ``dvc``
left the trainer running; DVC then cleared its own lock, and the next ``dvc repro`` started a
second trainer resuming from the same checkpoint while the first still wrote there. Two guards:

* :class:`RunFolderLock`: an exclusive ``flock`` on ``<run>/.lock``, held for the process's life and
  released by the kernel when it dies (kill -9 included); a second trainer fails at once, naming the
  holder's PID.
* :func:`exit_with_launcher`: the trainer is sent SIGTERM when its launcher dies: the kernel's
  parent-death signal for a direct parent, and a watcher thread for the nearest ancestor that is
  not a shell (the shell between DVC and the trainer survives DVC's death). A checkpoint is swapped
  in atomically, so a trainer stopped at any moment leaves the last complete one.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import os
import signal
import threading
from pathlib import Path
from typing import Optional

from steve1.errors import UserError

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"
SHELLS = {"sh", "bash", "dash", "zsh", "ksh", "busybox", "env", "timeout"}
PR_SET_PDEATHSIG = 1


class RunFolderBusyError(UserError, RuntimeError):
    """Another live trainer holds the run folder."""


class RunFolderLock:
    """An exclusive lock on a run folder for as long as this object (and the process) lives."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd: Optional[int] = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(self._fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(self._fd)
            self._fd = None
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise RunFolderBusyError(
                    f"{self.path.parent} is in use by another trainer (PID {holder}); wait for it to finish or stop "
                    f"it (kill {holder}) before starting this one") from None
            raise
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RunFolderLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _parent_and_name(pid: int) -> tuple[int, str]:
    """(parent pid, command name) of ``pid`` from /proc (Linux)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    name = stat[stat.index("(") + 1:stat.rindex(")")]
    return int(stat[stat.rindex(")") + 2:].split()[1]), name


def launcher_pid(start: Optional[int] = None) -> Optional[int]:
    """The nearest ancestor that is not a shell (DVC, accelerate's launcher, a terminal's shell at worst)."""
    pid = os.getppid() if start is None else start
    try:
        while pid > 1:
            parent, name = _parent_and_name(pid)
            if name not in SHELLS or parent <= 1:
                return pid
            pid = parent
    except (OSError, ValueError, IndexError):
        return None
    return None


def exit_with_launcher(poll_s: float = 1.0) -> Optional[int]:
    """Get SIGTERM when the launcher dies; returns the watched launcher's PID (None: nothing to watch)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux/glibc: the watcher below still works where /proc exists
        pass
    launcher = launcher_pid()
    if launcher is None:
        return None
    birth = _start_time(launcher)

    def watch() -> None:
        stop = threading.Event()
        while not stop.wait(poll_s):
            if _start_time(launcher) != birth:  # gone (or the PID reused by another process)
                log.error("the launcher (PID %d) is gone: stopping this trainer (the last checkpoint stays)", launcher)
                os.kill(os.getpid(), signal.SIGTERM)
                return

    threading.Thread(target=watch, name="launcher-watch", daemon=True).start()
    return launcher


def _start_time(pid: int) -> Optional[str]:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return None if fields[0] == "Z" else fields[19]   # state; starttime (field 22 of stat)
