"""Shared fixtures: where the reference data lives, and the CI rule that nothing skips there.

The reference data (../shared/reference, or $DEVINET_REFERENCE_DIR) is real material that
this project did not write. Tests that need it or TensorFlow skip with a clear message on a
developer machine without them; under CI (CI=true) a skip of that kind is a failure.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def _reference_dir() -> Path:
    env = os.environ.get("DEVINET_REFERENCE_DIR")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "reference"


def require(condition: bool, message: str) -> None:
    """Skip (developer machine) or fail (CI) when a prerequisite is missing."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"CI must not skip: {message}")
    pytest.skip(message)


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    path = _reference_dir()
    require(path.is_dir(), f"reference data not found at {path} (set DEVINET_REFERENCE_DIR)")
    return path


@pytest.fixture(scope="session")
def keras():
    """The Keras 3 module; tests needing it skip locally without TensorFlow and fail in CI."""
    try:
        os.environ.setdefault("KERAS_BACKEND", "tensorflow")
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import keras as _keras  # noqa: F401
        import tensorflow  # noqa: F401
    except Exception as exc:  # ImportError, or a broken install
        require(False, f"TensorFlow/Keras not importable ({exc}); install with pip install 'devinet[keras]'")
    return _keras


@pytest.fixture()
def rng():
    import numpy as np

    return np.random.default_rng(20171)


@pytest.fixture()
def read_only_folder(tmp_path):
    """A folder nobody may write to (also for root: the immutable attribute when chmod is not enough)."""
    folder = tmp_path / "read_only"
    folder.mkdir()
    folder.chmod(0o555)
    immutable = False
    if os.access(folder, os.W_OK):  # root ignores modes
        immutable = subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("cannot make a folder read-only here (root without chattr)")
        yield folder
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        folder.chmod(0o755)


@pytest.fixture(scope="session")
def fresh_python():
    """Runs a script in a fresh interpreter and returns the JSON object of its last output line.

    The child imports this checkout and inherits no allocator settings (no ``MALLOC_*``
    variables, no ``GLIBC_TUNABLES``; glibc reads them at start-up only), then gets ``env``'s
    variables on top: ``fresh_python(code, GLIBC_TUNABLES=...)``.
    """
    def run(code: str, **env: str) -> dict:
        clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
        clean.update(env, PYTHONPATH=str(REPO_ROOT))
        done = subprocess.run([sys.executable, "-c", code], env=clean, capture_output=True, text=True, timeout=300,
                              check=True)
        return json.loads(done.stdout.strip().splitlines()[-1])

    return run


@pytest.fixture(scope="session")
def tiny_reproduction(tmp_path_factory) -> Path:
    """OUT of one ``devinet reproduce --size tiny`` run (synthetic data, three systems, fusion,
    report), shared by the tests that read it (test_reproduce, test_tagging)."""
    from devinet.cli import main

    out = tmp_path_factory.mktemp("tiny") / "results"
    assert main(["reproduce", "--size", "tiny", "--out", str(out), "--no-progress"]) == 0
    return out
