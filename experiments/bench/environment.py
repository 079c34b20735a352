"""The machine, threads and allocator a benchmark ran with (recorded beside its figures)."""

from __future__ import annotations

import os
import platform
from typing import Any

#: keeps the BLAS thread limit of :func:`set_threads` in force for the whole run
_BLAS_LIMITS: list[Any] = []


def process_status_mb(key: str) -> float:
    """A memory line of /proc/self/status (VmRSS, VmHWM) in MiB. VmHWM belongs to this process's
    own address space, unlike ``ru_maxrss``, which exec inherits from the parent's."""
    with open("/proc/self/status", encoding="utf-8") as handle:
        for line in handle:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    raise OSError(f"/proc/self/status has no {key}")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gb() -> float | None:
    try:
        with open("/proc/meminfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2 ** 20, 1)
    except OSError:
        pass
    return None


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def machine(device: str) -> dict[str, Any]:
    import torch

    from experiments.workers import usable_cores

    found = {"cpu": _cpu_model(), "logical_cpus": os.cpu_count(), "usable_cpus": usable_cores(),
             "memory_gb": _memory_gb(), "platform": platform.platform()}
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        found["gpu"] = props.name
        found["gpu_memory_gb"] = round(props.total_memory / 2 ** 30, 1)
    return found


def set_threads(threads: int) -> dict[str, Any]:
    """Fix the thread pools of torch and TensorFlow; returns what is actually in effect."""
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set, or inter-op work already started in this process
        pass
    import tensorflow as tf

    notes = []
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError as exc:  # TensorFlow already initialised in this process
        notes.append(f"TensorFlow thread pools already fixed: {exc}")
    # numpy's BLAS (the reference feature recipe's matrix products) gets the same count.
    try:
        from threadpoolctl import threadpool_info, threadpool_limits
    except ImportError:
        blas = ["unknown: threadpoolctl is not installed, numpy's BLAS keeps its own thread count"]
    else:
        _BLAS_LIMITS.append(threadpool_limits(limits=threads, user_api="blas"))
        blas = sorted({f"{pool['internal_api']} {pool['num_threads']}" for pool in threadpool_info()
                       if pool["user_api"] == "blas"})
    found = {"torch_intra_op": torch.get_num_threads(), "torch_inter_op": torch.get_num_interop_threads(),
             "tf_intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
             "tf_inter_op": tf.config.threading.get_inter_op_parallelism_threads(),
             "numpy_blas": blas}
    if notes:
        found["notes"] = notes
    return found


def _huge_pages_record() -> dict[str, Any]:
    from experiments.runtime import HUGE_PAGE_TUNABLE, huge_pages_requested, huge_pages_unavailable, transparent_huge_pages

    return {"malloc_huge_pages": huge_pages_requested() and huge_pages_unavailable() is None,
            "glibc_tunables": os.environ.get("GLIBC_TUNABLES"),
            "transparent_huge_pages": transparent_huge_pages(),
            "huge_pages_note": (f"GLIBC_TUNABLES={HUGE_PAGE_TUNABLE} (--huge-pages): glibc's malloc asks the kernel "
                                "for 2 MiB pages for large blocks, for the whole process (Keras included)")}


def allocator_record(retain_freed_memory: bool) -> dict[str, Any]:
    """Apply ``--retain-freed-memory`` when asked, and describe the allocator this run uses."""
    from devinet.errors import DevinetError

    record: dict[str, Any] = {"retain_freed_memory_requested": retain_freed_memory, "freed_memory_retained": False}
    if retain_freed_memory:
        from experiments.runtime import retain_freed_memory as retain

        if not retain():
            raise DevinetError("--retain-freed-memory: needs Linux with glibc's malloc (mallopt)")
        record["freed_memory_retained"] = True
        record["note"] = ("experiments.runtime.retain_freed_memory(): glibc mallopt M_MMAP_MAX=0, "
                          "M_TRIM_THRESHOLD=2**31-1, for the whole process (Keras included)")
    return record | _huge_pages_record()
