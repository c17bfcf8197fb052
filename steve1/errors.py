"""The one base class for failures a user can fix.

A :class:`UserError`'s message is a sentence that names the file, key or value at fault and what
was expected; the stage runner (``stages/_common.run_stage``) prints it as one line, without a
traceback, and exits 1. Anything else that escapes a stage is a bug and keeps its traceback, so
no stage catches builtin exceptions such as ``ValueError`` wholesale.
"""

from __future__ import annotations


class UserError(Exception):
    """A failure caused by input, params or the machine, told in one line that says how to fix it."""


class MissingInputError(UserError, FileNotFoundError):
    """An input file or folder a step needs is not there; the message names it and what makes it."""


class InputFileError(UserError, ValueError):
    """An input file exists but its contents are not what was expected; the message names the file and why."""
