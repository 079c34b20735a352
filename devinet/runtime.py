"""Process-wide setting for faster CPU training: let the C heap keep the memory it frees.

PyTorch's CPU tensors come from the C library's ``malloc``. glibc serves every block larger
than its mmap threshold (128 KiB, rising to at most 32 MiB) with a fresh ``mmap`` and gives
it back with ``munmap`` when the tensor dies. A training step of the CVSSP models at batch 44
allocates and frees several GB of activations and gradients this way, and the kernel faults
in and zeroes every page again at the next step. Measured on the 2-vCPU benchmark machine
(crnn_at, batch 44 x 240 x 64, one thread; docs/benchmarks.md): 1.8 million page faults and
3.3 to 5.2 s of system time in a 9.7 to 13.2 s step. TensorFlow's CPU buffers come from the same
``malloc`` and fault alike (2.2 million faults in an 18.7 s Keras step, measured alone).

:func:`retain_freed_memory` turns off glibc's ``mmap`` serving and its heap trimming, so that
freed blocks stay mapped and later steps reuse them without page faults: the same step then
took 6.4 to 7.8 s with no page faults after the fifth step. The price is memory. The resident
size stays at the heap's high-water mark, and the heap fragments (small allocations land in
the holes of freed large blocks): 4.6 GB resident instead of a 2.9 GB peak in that run. It
is therefore opt-in, for the process as a whole and for good: call it once at the start of
a CPU training script when memory is plentiful (``devinet bench --retain-freed-memory``
measures its effect). It never changes a result, only where memory comes from.

Huge pages are the other remedy, with no memory cost: glibc's tunable
``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` (glibc 2.35 and newer, where the kernel's
transparent huge pages are in ``madvise`` or ``always`` mode) asks the kernel for 2 MiB pages
for large blocks, so a fresh block faults in 512 times less often. The C library reads it
once, when the process starts, so it cannot be switched on from Python: it belongs in the
environment of the command (:func:`environment_with_huge_pages`), which is what
``devinet bench --huge-pages`` and ``devinet reproduce --huge-pages`` do by running themselves
again in such an environment. Measured on the benchmark machine (crnn_at, batch 44, one
thread, each framework in its own process): devinet's training step 13.2 s -> 9.5 s (1.8 M ->
25 k page faults), the Keras reference's 18.7 s -> 14.5 s; TensorFlow's allocations go
through the same ``malloc``, so both benefit.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Mapping

# mallopt parameters (glibc malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
# the largest trim threshold mallopt accepts (an int): the heap top is never given back
_NEVER_TRIM = 2**31 - 1

_applied = False

#: glibc tunable asking ``malloc`` for transparent huge pages (``madvise(MADV_HUGEPAGE)``)
HUGE_PAGE_TUNABLE = "glibc.malloc.hugetlb=1"
_THP_MODE_FILE = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def _is_glibc_linux() -> bool:
    return platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def retain_freed_memory() -> bool:
    """Make this process's C heap keep freed memory for reuse instead of returning it to the OS.

    Calls glibc's ``mallopt(M_MMAP_MAX, 0)`` (large blocks come from the heap, not from
    ``mmap``) and ``mallopt(M_TRIM_THRESHOLD, 2**31 - 1)`` (the heap is not trimmed). Process
    wide and not undone; calling it again does nothing. Blocks already served by ``mmap``
    stay as they are until freed.

    Returns:
        True when the settings are in effect (Linux with glibc), False where they do not
        apply (another C library or OS), in which case nothing was changed.
    """
    global _applied
    if _applied:
        return True
    if not _is_glibc_linux():
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success
    if mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM) != 1 or mallopt(_M_MMAP_MAX, 0) != 1:
        return False
    _applied = True
    return True


def freed_memory_retained() -> bool:
    """Whether :func:`retain_freed_memory` has been applied in this process."""
    return _applied


def transparent_huge_pages() -> str | None:
    """The kernel's transparent-huge-page mode ("always", "madvise" or "never"), None where unknown."""
    try:
        text = _THP_MODE_FILE.read_text(encoding="ascii")
    except OSError:
        return None
    for word in text.split():  # e.g. "always [madvise] never": the bracketed one is in force
        if word.startswith("[") and word.endswith("]"):
            return word[1:-1]
    return None


def huge_pages_requested(environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``environ`` (default: this process's) asks glibc's malloc for huge pages."""
    tunables = (os.environ if environ is None else environ).get("GLIBC_TUNABLES", "")
    return HUGE_PAGE_TUNABLE in tunables.split(":")


def huge_pages_unavailable() -> str | None:
    """Why :data:`HUGE_PAGE_TUNABLE` cannot take effect here (one line), or None when it can."""
    if not _is_glibc_linux():
        return "needs Linux with glibc's malloc"
    version = platform.libc_ver()[1]
    major, _, minor = version.partition(".")
    if (int(major or 0), int(minor or 0)) < (2, 35):
        return f"needs glibc 2.35 or newer (this is glibc {version})"
    mode = transparent_huge_pages()
    if mode is None:
        return f"the kernel offers no transparent huge pages ({_THP_MODE_FILE} is missing)"
    if mode == "never":
        return f"transparent huge pages are disabled ({_THP_MODE_FILE}: never)"
    return None


def environment_with_huge_pages(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of ``environ`` (default: this process's) with :data:`HUGE_PAGE_TUNABLE` added to
    ``GLIBC_TUNABLES`` (other tunables kept). Start a process with it; it does nothing to this one."""
    env = dict(os.environ if environ is None else environ)
    if not huge_pages_requested(env):
        env = environment_without_huge_pages(env)
        env["GLIBC_TUNABLES"] = ":".join(filter(None, [env.get("GLIBC_TUNABLES"), HUGE_PAGE_TUNABLE]))
    return env


def environment_without_huge_pages(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of ``environ`` (default: this process's) with any ``glibc.malloc.hugetlb`` setting
    removed from ``GLIBC_TUNABLES`` (other tunables kept): a process started with it uses 4 KiB pages."""
    env = dict(os.environ if environ is None else environ)
    tunables = [t for t in env.pop("GLIBC_TUNABLES", "").split(":") if t and not t.startswith("glibc.malloc.hugetlb=")]
    if tunables:
        env["GLIBC_TUNABLES"] = ":".join(tunables)
    return env


def anon_huge_pages_mb() -> float | None:
    """Resident memory of this process in transparent huge pages (MiB), None where unknown:
    evidence that :data:`HUGE_PAGE_TUNABLE` is in effect."""
    try:
        with open("/proc/self/smaps_rollup", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("AnonHugePages:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def run_devinet_with_huge_pages(argv: list[str]) -> int:
    """Run ``devinet ARGV`` again in a child process whose environment asks for huge pages
    (:func:`environment_with_huge_pages`), with this process's streams; returns its exit code.

    Raises:
        DevinetError: when huge pages cannot take effect here (see :func:`huge_pages_unavailable`).
    """
    from .errors import DevinetError

    why = huge_pages_unavailable()
    if why is not None:
        raise DevinetError(f"--huge-pages: {why}")
    command = [sys.executable, "-m", "devinet.cli", *argv]
    return subprocess.run(command, env=environment_with_huge_pages(), check=False).returncode
