"""Errors a user causes and can fix: a config value, an input file, a resource limit.

`python -m vpd` prints a `UserError` (and the OS errors of a missing or misplaced file) as one
line naming the file or key, what is wrong and what to do, and exits with code 2; any other
exception is a programming error and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """Base of every error whose message tells the user what to change."""


class InputError(UserError, ValueError):
    """An input file or value does not fit what the stage needs; the message names it and the fix."""


# OS errors that mean a path the user gave or a stage produced is missing or in the wrong place.
USER_OS_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, FileExistsError, PermissionError)


def one_line(exc: BaseException) -> str:
    """The exception's message on one line (multi-line messages joined with '; ')."""
    parts = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not parts:
        return type(exc).__name__
    head, rest = parts[0], parts[1:]
    return head + (" " + "; ".join(rest) if rest else "") if head.endswith(":") else "; ".join(parts)
