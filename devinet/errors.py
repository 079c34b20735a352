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
            f"{what} is not installed; install it with: pip install 'devinet[{extra}]'"
        )
