"""experiments.runtime.retain_freed_memory: freed tensors stay mapped, so later ones fault no pages in.

Each check runs in a fresh interpreter (the setting is process-wide and cannot be undone).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from experiments import runtime

REPO_ROOT = Path(__file__).resolve().parents[1]
GLIBC = runtime._is_glibc_linux()

# Ten rounds shaped like a training step: large tensors (40 to 160 MiB, all above glibc's
# 32 MiB ceiling for its mmap threshold) alive together, with small tensors allocated between
# them; reports the minor page faults of each round.
PROBE = """
import json, os, resource
import torch
from experiments.runtime import freed_memory_retained, retain_freed_memory
applied = retain_freed_memory() if os.environ.get("DEVINET_TEST_RETAIN") else False
MIB = 2**20 // 4  # float32 values per MiB
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def step(i):
    live = []
    for size in (96, 160, 64, 128, 40):
        live.append(torch.empty(size * MIB).fill_(1.0))
        small = torch.empty(1000).fill_(1.0)
rounds = []
for i in range(10):
    start = faults()
    step(i)
    rounds.append(faults() - start)
print(json.dumps({"applied": applied, "retained": freed_memory_retained(), "faults": rounds}))
"""

PAGES_PER_ROUND = 488 * 2**20 // 4096  # 96 + 160 + 64 + 128 + 40 MiB


@pytest.mark.slow
@pytest.mark.allocator
@pytest.mark.skipif(not GLIBC, reason="retain_freed_memory applies to glibc's malloc only")
def test_retained_memory_is_reused_without_page_faults(fresh_python):
    # DEVINET_TEST_RETAIN set, empty or not: the probe applies retain_freed_memory() when it is non-empty
    default, retained = fresh_python(PROBE, DEVINET_TEST_RETAIN=""), fresh_python(PROBE, DEVINET_TEST_RETAIN="1")
    assert default["applied"] is False and default["retained"] is False
    # by default every round maps its large blocks afresh and faults in their pages (transparent
    # huge pages could fold 512 of them into one fault)
    assert all(f >= PAGES_PER_ROUND // 512 for f in default["faults"]), default
    assert retained["applied"] is True and retained["retained"] is True
    # retained: after the first round the heap grows a little more while it settles around the
    # small tensors (measured in 8 runs: 8 to 10% of the default's faults over rounds 2-10, one
    # late regrowth of a block in some runs), and most rounds fault no page at all
    later, default_later = retained["faults"][1:], default["faults"][1:]
    assert sum(later) < sum(default_later) / 5, (default, retained)
    assert sum(f == 0 for f in later) >= len(later) // 2, (default, retained)


def test_applies_on_glibc_only_and_a_second_call_reports_the_same_state():
    code = ("from experiments import runtime; a = runtime.retain_freed_memory(); b = runtime.retain_freed_memory(); "
            "print(a, b, runtime.freed_memory_retained())")
    done = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)),
                          capture_output=True, text=True, timeout=120, check=True)
    first, second, state = done.stdout.split()
    assert first == second == state == str(GLIBC)
