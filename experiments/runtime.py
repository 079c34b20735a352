"""Process-wide memory-allocator settings for faster CPU training (glibc only).

A CPU training step allocates and frees gigabytes of activations through the C library's
``malloc``; with glibc's defaults every freed large block goes back to the kernel and its
pages are faulted in and zeroed again at the next step. Two remedies, never changing a
result (measurements and their story: docs/benchmarks.md, "The allocator"):

- huge pages (:func:`environment_with_huge_pages`): ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``
  makes malloc ask for 2 MiB pages, 512 times fewer faults, no memory cost. glibc reads it
  at start-up only, so a command turns it on by running itself again
  (:func:`relaunch_with_huge_pages`); ``devinet train``, ``reproduce`` and ``bench`` do so by
  default where huge pages are available (:func:`huge_pages_by_default`);
- :func:`retain_freed_memory`: freed blocks stay mapped (no faults) at the cost of resident
  memory (the heap's high-water mark); opt-in, for the process as a whole.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import re
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
    found = re.match(r"(\d+)\.(\d+)", version)
    if found is None or (int(found.group(1)), int(found.group(2))) < (2, 35):
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
    from devinet.errors import DevinetError

    why = huge_pages_unavailable()
    if why is not None:
        raise DevinetError(f"--huge-pages: {why}")
    command = [sys.executable, "-m", "devinet", *argv]
    return subprocess.run(command, env=environment_with_huge_pages(), check=False).returncode


def relaunch_with_huge_pages(argv: list[str]) -> int | None:
    """For a command asked to use huge pages: None when this process already has them (go on),
    else the exit code of ``devinet ARGV`` run again with them (:func:`run_devinet_with_huge_pages`)."""
    if huge_pages_requested():
        return None
    return run_devinet_with_huge_pages(argv)


def _say(message: str) -> None:
    if os.environ.get("RANK", "0") == "0":  # one line per run, not one per training process
        print(f"[runtime] {message}", flush=True)


def huge_pages_by_default(argv: list[str], choice: bool | None) -> int | None:
    """Run a command with huge pages unless told not to; says which allocator is in use (one line).

    ``choice``: None (the default: huge pages where available, else glibc's default allocator,
    with a note), True (``--huge-pages``: required, an error where unavailable) or False
    (``--no-huge-pages``). Returns None when this process should go on with the command, else
    the exit code of the command run again with huge pages (:func:`relaunch_with_huge_pages`).
    """
    if choice is False:
        _say("allocator: glibc's default (--no-huge-pages)")
        return None
    why = huge_pages_unavailable()
    if why is not None and not choice:
        _say(f"allocator: glibc's default (huge pages unavailable: {why})")
        return None
    if huge_pages_requested() and why is None:
        _say(f"allocator: glibc's malloc with transparent huge pages (GLIBC_TUNABLES={HUGE_PAGE_TUNABLE}; "
             "--no-huge-pages to turn off)")
    return relaunch_with_huge_pages(argv)
