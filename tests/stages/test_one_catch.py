"""Issue 25: stages catch no builtin exceptions; ``run_stage`` is the one place a ``UserError`` is caught.

A stage calls the library; a failure the user can fix is a :class:`steve1.errors.UserError` whose
message names the file/key/value, printed by ``run_stage`` as one line. A ``ValueError`` (or any other
builtin) escaping a stage is a bug and must keep its traceback, so no stage catches one wholesale.
"""

from __future__ import annotations

import ast
import builtins
from pathlib import Path

import pytest

from stages._common import StageError, run_stage
from steve1.errors import UserError

STAGES = Path(__file__).resolve().parents[2] / "stages"
BUILTIN_EXCEPTIONS = {n for n in dir(builtins) if isinstance(getattr(builtins, n), type)
                      and issubclass(getattr(builtins, n), BaseException)}



def _caught_builtins(path: Path) -> list[tuple[int, str]]:
    """(line, name) of every builtin exception class an ``except`` clause in ``path`` names, except the
    one documented wrapper around ``check(params)`` in ``run_stage``."""
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Try):
            continue
        wraps_check = (len(node.body) == 1 and isinstance(node.body[0], ast.Expr)
                       and isinstance(node.body[0].value, ast.Call)
                       and getattr(node.body[0].value.func, "id", None) == "check")
        for handler in node.handlers:
            if handler.type is None:
                found.append((handler.lineno, "<bare except>"))
                continue
            types = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
            for t in types:
                name = t.id if isinstance(t, ast.Name) else ast.unparse(t)
                if name in BUILTIN_EXCEPTIONS and not (path.name == "_common.py" and wraps_check and name == "ValueError"):
                    found.append((handler.lineno, name))
    return found


@pytest.mark.parametrize("path", sorted(STAGES.glob("*.py")), ids=lambda p: p.name)
def test_no_stage_catches_a_builtin_exception(path):
    bad = _caught_builtins(path)
    assert not bad, (f"{path.name} catches builtin exceptions {bad}: raise a named steve1.errors.UserError "
                     f"subclass in the library instead and let run_stage report it")


class _FixableError(UserError, ValueError):
    pass


def _params(tmp_path: Path) -> str:
    path = tmp_path / "params.yaml"
    path.write_text("{}\n")
    return str(path)


def test_run_stage_prints_a_user_error_as_one_line(tmp_path, capsys):
    def body(params):
        raise _FixableError("data/x.h5: attr 'fps' is 'abc', expected a number")
    assert run_stage("t", body, ["--params", _params(tmp_path)]) == 1
    assert capsys.readouterr().err == "error: data/x.h5: attr 'fps' is 'abc', expected a number\n"
    assert issubclass(StageError, UserError)


def test_run_stage_lets_a_bug_keep_its_traceback(tmp_path):
    def body(params):
        raise ValueError("a bug, not the user's input")
    with pytest.raises(ValueError, match="a bug"):
        run_stage("t", body, ["--params", _params(tmp_path)])


# Exceptions that never reach a user (private ones, named with a leading underscore, never do): an env
# crash is retried on a new env and recorded per episode; the stand-in world's crash is a test double.
INTERNAL = {"steve1.play.envs.EnvCrash", "steve1.play.standin.StandInCrash"}


def test_every_named_library_error_is_a_user_error():
    """Every exception class defined in steve1/ (found by importing each module, so a new one is
    covered without editing this test) is a UserError, unless it is listed as internal."""
    import importlib
    import pkgutil

    import steve1

    names = [m.name for m in pkgutil.walk_packages(steve1.__path__, "steve1.")]
    found, not_user = [], []
    for name in names:
        module = importlib.import_module(name)
        for attr, obj in vars(module).items():
            if (isinstance(obj, type) and issubclass(obj, Exception) and obj.__module__ == name
                    and not attr.startswith("_")):
                found.append(f"{name}.{attr}")
                if not issubclass(obj, UserError) and f"{name}.{attr}" not in INTERNAL:
                    not_user.append(f"{name}.{attr}")
    assert len(found) > 30 and "steve1.unpickle.UnsafePickleError" in found
    assert not not_user, f"exception classes that are not steve1.errors.UserError: {not_user}"


def test_a_missing_input_of_a_stage_is_one_line_without_a_catch_in_the_stage(tmp_path, capsys):
    """The decode stage no longer catches FileNotFoundError itself: the library's MissingInputError
    (a UserError) reaches run_stage and is printed as one line naming the folder."""
    from stages.decode import main

    params = tmp_path / "params.yaml"
    params.write_text(f"paths:\n  raw: {tmp_path / 'nowhere'}\n  episodes: {tmp_path / 'episodes'}\n")
    assert main(["--params", str(params)]) == 1
    err = capsys.readouterr().err
    assert err == f"error: {tmp_path / 'nowhere'}: raw recordings folder not found (run the download stage)\n", err
