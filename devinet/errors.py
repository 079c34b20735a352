"""Exceptions raised by devinet and its tools.

Every error meant for a user derives from :class:`DevinetError`; the command-line
entry point prints its message on one line and exits non-zero, without a traceback.
"""

from __future__ import annotations

import os


class DevinetError(Exception):
    """Base class of the errors that devinet reports to its users."""


class ConfigError(DevinetError, ValueError):
    """An inconsistent or unknown model or experiment configuration."""


class InputError(DevinetError, ValueError):
    """A tensor or array handed to a model or function has the wrong rank, shape or dtype."""


class FileFormatError(DevinetError):
    """A file is missing, unreadable or not of the expected kind.

    The message always starts with the file's path so that one line says what and where.
    """

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class MissingDependencyError(DevinetError, ImportError):
    """An optional dependency (TensorFlow, librosa, ...) is needed but not installed."""

    def __init__(self, what: str, extra: str):
        super().__init__(
            f"{what} is not installed; install it from the devinet clone with: "
            f"pip install torch==2.13.0 -e '.[{extra}]'"
        )


def one_line(message: str) -> str:
    """``message`` on one line: names taken from a file (layer names, keys) may hold line breaks."""
    return " ".join(part.strip() for part in str(message).splitlines() if part.strip())


def first_line(exc: BaseException, limit: int = 200, with_type: bool = False) -> str:
    """The first non-empty line of an exception's message, at most ``limit`` characters; the
    exception's type alone when the message is empty, ``Type: line`` with ``with_type``."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    text = lines[0] if len(lines[0]) <= limit else lines[0][: limit - 3] + "..."
    return f"{type(exc).__name__}: {text}" if with_type else text
