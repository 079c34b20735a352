"""What produced a result: package versions, the git revision and the machine, recorded beside every metric."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Sequence

#: packages whose versions can change a result of the experiments
PACKAGES = ("torch", "numpy", "scipy", "librosa", "soundfile", "h5py", "scikit-learn", "sed_eval", "matplotlib")

_REPO_ROOT = Path(__file__).resolve().parents[1]


def git_revision(root: str | os.PathLike = _REPO_ROOT) -> str | None:
    """``<commit>`` of the source tree (``+dirty`` when tracked files differ), None outside git."""
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}+dirty" if dirty else commit


def versions(packages: Sequence[str] = PACKAGES, extra: Sequence[str] = ()) -> dict[str, str | None]:
    """Python, devinet, ``packages`` and ``extra`` (None when not installed), the git revision,
    platform and CPU threads: what produced a result, recorded beside it."""
    import devinet

    found: dict[str, str | None] = {"python": platform.python_version(), "devinet": devinet.__version__}
    for package in (*packages, *extra):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = None
    try:
        import torch

        threads: int | None = torch.get_num_threads()
    except ImportError:
        threads = None
    found["git"] = git_revision()
    found["platform"] = platform.platform()
    found["cpu_threads"] = str(threads) if threads is not None else None
    return found


def now() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()

