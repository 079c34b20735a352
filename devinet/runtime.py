"""Process-wide setting for faster CPU training: let the C heap keep the memory it frees.

PyTorch's CPU tensors come from the C library's ``malloc``. glibc serves every block larger
than its mmap threshold (128 KiB, rising to at most 32 MiB) with a fresh ``mmap`` and gives
it back with ``munmap`` when the tensor dies. A training step of the CVSSP models at batch 44
allocates and frees several GB of activations and gradients this way, and the kernel faults
in and zeroes every page again at the next step. Measured on the 2-vCPU benchmark machine
(crnn_at, batch 44 x 240 x 64, one thread; docs/benchmarks.md): 1.8 million page faults and
3.3 to 4.5 s of system time in a 9.7 to 12 s step. TensorFlow pools its own buffers and is
not affected.

:func:`retain_freed_memory` turns off glibc's ``mmap`` serving and its heap trimming, so that
freed blocks stay mapped and later steps reuse them without page faults: the same step then
took 6.4 to 7.8 s with no page faults after the fifth step. The price is memory. The resident
size stays at the heap's high-water mark, and the heap fragments (small allocations land in
the holes of freed large blocks): 4.6 GB resident instead of a 2.9 GB peak in that run. It
is therefore opt-in, for the process as a whole and for good: call it once at the start of
a CPU training script when memory is plentiful (``devinet bench --retain-freed-memory``
measures its effect). It never changes a result, only where memory comes from.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

# mallopt parameters (glibc malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
# the largest trim threshold mallopt accepts (an int): the heap top is never given back
_NEVER_TRIM = 2**31 - 1

_applied = False


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
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
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
