"""Shared stage plumbing: argument parsing, params loading and error reporting."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence

from steve1.errors import UserError
from steve1.numerics import require_reproducible_blas
from steve1.params import Params, ParamsError, describe_invalid, load_params


def run_stage(name: str, body: Callable[[Params], None], argv: Optional[Sequence[str]] = None,
              check: Optional[Callable[[Params], None]] = None, where: str = "") -> int:
    """Parse ``--params``, validate params.yaml before any work, run ``body``; return an exit code.

    ``check`` validates what the schema cannot without importing the library (official file
    names, freeze groups); it raises ``ValueError`` with a line made by ``describe_invalid``, reported
    like a schema error, before any work.

    This is the one place a stage's errors are caught: a :class:`~steve1.errors.UserError` (its message
    names the file, key or value) is printed as one line, prefixed by ``where``, and exits 1; anything
    else is a bug and keeps its traceback. Stages do not catch exceptions themselves.
    """
    parser = argparse.ArgumentParser(prog=f"python -m stages.{name}", description=f"steve1 {name} stage")
    parser.add_argument("--params", default="params.yaml", help="path to params.yaml (default: %(default)s)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=f"[{name}] %(message)s")
    try:
        params = load_params(args.params)
        if check is not None:
            try:
                check(params)
            except ValueError as exc:    # the check contract: one describe_invalid line (a ParamsError is one too)
                raise ParamsError(f"{args.params} is invalid:\n  {exc}") from None
        check_dvc_yaml_lists_named_files(params, args.params)
    except ParamsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        print(RECOVERY_HINT, file=sys.stderr)
        return 2
    try:
        if "torch" in sys.modules:           # a stage that computes: same bits whatever the thread count
            require_reproducible_blas()
        body(params)
    except UserError as exc:   # a sentence naming the file/key/value: no traceback
        print(f"error: {where}{exc}", file=sys.stderr)
        return 1
    return 0


def check_dvc_yaml_lists_named_files(params: Params, origin: str) -> None:
    """Under ``dvc repro``, refuse a run whose params name a file that dvc.yaml does not list among
    the stage's deps: DVC would reuse this result when that file changes. DVC names the stage it runs
    in ``DVC_STAGE`` (``train``, ``embed-set@mine``; ``sub/dvc.yaml:x`` for another dvc.yaml, not
    ours) and the repository in ``DVC_ROOT``; run by hand, a stage has no DVC cache to keep right."""
    stage, root = os.environ.get("DVC_STAGE", ""), os.environ.get("DVC_ROOT", "")
    if not stage or not root or ":" in stage:
        return
    from steve1.pipeline import unlisted_file_deps

    name = stage.split("@", 1)[0]
    missing = unlisted_file_deps(params, Path(root)).get(name, [])
    if missing:
        raise ParamsError(
            f"{origin} names {', '.join(missing)} for stage '{name}', but dvc.yaml does not list "
            f"{'it' if len(missing) == 1 else 'them'} among the stage's deps, so DVC would not rerun "
            f"'{name}' when {'it changes' if len(missing) == 1 else 'they change'}: run `make dvc-yaml` "
            "(python -m steve1.pipeline), then dvc repro again")


def run_set_stage(name: str, body: Callable[[Params, str], None], argv: Optional[Sequence[str]] = None) -> int:
    """:func:`run_stage` for a stage of one custom set: ``python -m stages.<name> SET [--params P]``."""
    parser = argparse.ArgumentParser(prog=f"python -m stages.{name}", add_help=False)
    parser.add_argument("set")
    known, rest = parser.parse_known_args(argv)

    def check(params: Params) -> None:
        if known.set not in params.custom:
            raise ValueError(describe_invalid("custom", sorted(params.custom), f"has no set {known.set!r}"))

    return run_stage(f"{name} {known.set}", lambda params: body(params, known.set), rest, check,
                     where=f"custom.{known.set}: ")


# DVC removes a stage's (non-persistent) outputs before it runs the command, so a bad value given
# with `dvc exp run -S` or `dvc repro` is caught only after that; the outputs are still in the cache.
RECOVERY_HINT = ("nothing was computed. If DVC ran this stage, it removed the stage's previous outputs first: "
                 "fix the value, then `dvc checkout` restores them from the cache (or `dvc repro` recomputes them)")


class StageError(UserError, RuntimeError):
    """A failure a stage itself finds in the library's results (too many failed downloads, nothing decoded)."""
