"""Shared fixtures: where the reference data lives, and the CI rule that nothing skips there.

The reference data (../shared/reference, or $DEVINET_REFERENCE_DIR) is real material that
this project did not write. Tests that need it, TensorFlow or an optional dependency skip
with a clear message on a developer machine without them; under CI (CI=true) a skip of that
kind is a failure (:func:`require`, :func:`import_or_require`).

Tests marked ``allocator`` check page-fault counts that depend on this machine's kernel and
glibc; they run only with DEVINET_TEST_ALLOCATOR=1.
"""

from __future__ import annotations

import builtins
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
ALLOCATOR_TESTS = os.environ.get("DEVINET_TEST_ALLOCATOR") == "1"


def _reference_dir() -> Path:
    env = os.environ.get("DEVINET_REFERENCE_DIR")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "reference"


def require(condition: bool, message: str) -> None:
    """Skip (developer machine) or fail (CI) when a prerequisite is missing."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"CI must not skip: {message}", pytrace=False)
    pytest.skip(message, allow_module_level=True)


def import_or_require(module: str, extra: str):
    """``module`` imported; without it, :func:`require` skips (locally) or fails (CI) the test or
    the whole test module (when called at module level). ``extra``: the devinet extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        require(False, f"{module} is not importable ({exc}); install with pip install torch==2.13.0 -e '.[{extra}]'")


def pytest_collection_modifyitems(config, items):
    """Tests marked ``allocator`` are opt-in (DEVINET_TEST_ALLOCATOR=1): they assert page-fault counts of
    this machine's kernel and glibc."""
    if ALLOCATOR_TESTS:
        return
    opt_in = pytest.mark.skip(reason="allocator page-fault test, tuned to one kernel and glibc: "
                                     "opt-in with DEVINET_TEST_ALLOCATOR=1")
    for item in items:
        if item.get_closest_marker("allocator"):
            item.add_marker(opt_in)


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
        require(False, f"TensorFlow/Keras not importable ({exc}); install with pip install torch==2.13.0 -e '.[keras]'")
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


# ---------------------------------------------------------------------- pickles that run code
class CodeRunningPickle:
    """Unpickling this object calls ``function(*args)``: what a hostile file would do."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


def code_running_payloads(marker: Path) -> dict[str, CodeRunningPickle]:
    """Payloads of three kinds, each creating ``marker`` when unpickled."""
    return {
        "os.system": CodeRunningPickle(os.system, f"touch '{marker}'"),
        "exec": CodeRunningPickle(builtins.exec, f"open({str(marker)!r}, 'w').close()"),
        "open": CodeRunningPickle(builtins.open, str(marker), "w"),
    }


# ---------------------------------------------------------------------- hostile inputs under resource limits
_LIMITED_CHILD = r"""
import json, resource, signal, sys
kind, limit, report = sys.argv[1], int(sys.argv[2]), sys.argv[3]
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the size limit fails with EFBIG instead
resource.setrlimit({"memory": resource.RLIMIT_AS, "file_size": resource.RLIMIT_FSIZE}[kind], (limit, limit))
from devinet.cli import main
code = main(sys.argv[4:])
with open("/proc/self/status") as status:
    fields = dict(line.split(":", 1) for line in status)
with open(report, "w") as out:
    json.dump({"peak_rss_bytes": 1024 * int(fields["VmHWM"].split()[0])}, out)
sys.exit(code)
"""

#: lines that TensorFlow's C++ logging writes to stderr on import, whatever the command
_TENSORFLOW_LOG = ("WARNING: All log messages before absl::InitializeLog()", "I0000 ", "W0000 ",
                   "To enable the following instructions")


@pytest.fixture()
def limited_devinet(tmp_path_factory):
    """Runs ``devinet ARGV`` in a child process under a resource limit: ``memory`` (RLIMIT_AS, the
    address space) or ``file_size`` (RLIMIT_FSIZE, SIGXFSZ ignored, as a full disk). Returns
    (exit status, stdout, stderr lines without TensorFlow's start-up log, peak RSS in bytes or
    None when the child died before reporting it)."""
    def run(kind: str, limit: int, argv: list, timeout: float = 300):
        report = tmp_path_factory.mktemp("limited") / "report.json"
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), TF_CPP_MIN_LOG_LEVEL="3")
        done = subprocess.run([sys.executable, "-c", _LIMITED_CHILD, kind, str(limit), str(report),
                               *map(str, argv)], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                              timeout=timeout)
        err = [line for line in done.stderr.splitlines() if not line.startswith(_TENSORFLOW_LOG)]
        peak = json.loads(report.read_text())["peak_rss_bytes"] if report.is_file() else None
        return done.returncode, done.stdout, err, peak

    return run


@pytest.fixture(scope="session")
def tiny_reproduction(tmp_path_factory) -> Path:
    """OUT of one ``devinet reproduce --size tiny --seeds 2`` run (synthetic data, features, four
    trained systems, fusion, report), shared by the tests that read it (test_reproduce,
    test_tagging). The git revision it records differs between the run's start and any later call."""
    from devinet.cli import main
    from experiments import provenance

    out = tmp_path_factory.mktemp("tiny") / "results"
    revisions = iter(["0123abc-at-start"])

    def revision(*args):  # the first call (the run's start) differs from any later one
        return next(revisions, "fedcba9-later+dirty")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(provenance, "git_revision", revision)
        assert main(["reproduce", "--no-huge-pages", "--size", "tiny", "--seeds", "2", "--out", str(out), "--no-progress"]) == 0
    return out
