"""Timing of repeated runs: medians after warm-up, contenders interleaved, progress shown."""

from __future__ import annotations

import gc
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

#: sleep before each timed run so that spinning idle threads of the previous contender do not
#: count against the next (docs/benchmarks.md, "Method")
SETTLE_S = 0.25


@dataclass(frozen=True)
class Timing:
    """Wall-clock seconds of repeated runs (and the process CPU seconds, for judging the load)."""

    median_s: float
    min_s: float
    max_s: float
    cpu_median_s: float
    runs: int

    def rate(self, items: float) -> dict[str, float]:
        """Items per second: median, and min/max from the slowest/fastest run."""
        return {"median": items / self.median_s, "min": items / self.max_s, "max": items / self.min_s}


class Runner:
    """Times callables (interleaved, after warm-up) and shows progress."""

    def __init__(self, device: str, total_runs: int, settle_s: float = 0.0):
        from tqdm.auto import tqdm

        self.device = device
        #: seconds of sleep before each run (not timed), see :meth:`once`
        self.settle_s = settle_s
        self.bar = tqdm(total=total_runs, desc="bench", unit="run", file=sys.stderr, dynamic_ncols=True)

    def sync(self) -> None:
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()

    def once(self, fn: Callable[[], Any]) -> tuple[float, float]:
        time.sleep(self.settle_s)  # idle threads of the previous contender go to sleep
        gc.collect()  # garbage of earlier runs is collected here, not inside the timed one
        self.sync()
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        self.sync()
        return time.perf_counter() - wall, time.process_time() - cpu

    def compare(self, label: str, contenders: dict[str, Callable[[], Any]], warmup: int,
                repeats: int) -> dict[str, Timing]:
        """Warm the contenders up in turn, then run them in turn ``repeats`` times.

        The warm-up interleaves too, so that the timed runs start from the state they keep
        (each contender's allocations made with the others' in between: a contender whose
        memory the other one disturbed pays for it in the warm-up, not in the first timed run).
        """
        for _ in range(warmup):
            for name, fn in contenders.items():
                self.bar.set_description(f"{label}: warm-up {name}")
                self.once(fn)
                self.bar.update()
        walls: dict[str, list[float]] = {name: [] for name in contenders}
        cpus: dict[str, list[float]] = {name: [] for name in contenders}
        for _ in range(repeats):
            for name, fn in contenders.items():
                self.bar.set_description(f"{label}: {name}")
                wall, cpu = self.once(fn)
                walls[name].append(wall)
                cpus[name].append(cpu)
                self.bar.update()
        return {name: Timing(statistics.median(walls[name]), min(walls[name]), max(walls[name]),
                             statistics.median(cpus[name]), repeats) for name in contenders}
