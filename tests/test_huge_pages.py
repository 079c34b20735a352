"""Huge pages for glibc's malloc (``--huge-pages``): the environment, the checks, the re-run of
the command, and the effect on page faults (in fresh interpreters: glibc reads the tunable at
start-up only)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from experiments import runtime
from devinet.cli import build_parser, main

# Three rounds that each allocate, touch and free a 64 MiB tensor (above glibc's 32 MiB mmap
# ceiling, so each is mapped afresh); reports the minor page faults of each round and the
# memory in huge pages while the last tensor is alive.
PROBE = """
import json, resource
import torch
from experiments.runtime import anon_huge_pages_mb, huge_pages_requested
rounds, huge = [], None
for i in range(3):
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.empty(16 * 2**20).fill_(1.0)
    rounds.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start)
    huge = anon_huge_pages_mb()
    del x
print(json.dumps({"requested": huge_pages_requested(), "faults": rounds, "huge_mb": huge}))
"""
PAGES = 64 * 2**20 // 4096


def test_environment_adds_the_tunable_and_keeps_the_others():
    env = runtime.environment_with_huge_pages({"PATH": "/bin", "GLIBC_TUNABLES": "glibc.malloc.tcache_count=0"})
    assert env["PATH"] == "/bin"
    assert env["GLIBC_TUNABLES"] == "glibc.malloc.tcache_count=0:glibc.malloc.hugetlb=1"
    assert runtime.huge_pages_requested(env)
    assert runtime.environment_with_huge_pages(env) == env  # already there: unchanged
    # another hugetlb value (0: off, 2: hugetlbfs pages) is replaced, not doubled
    env = runtime.environment_with_huge_pages({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"})
    assert env["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1"
    assert runtime.environment_with_huge_pages({}) == {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}


def test_environment_without_removes_only_the_huge_page_setting():
    env = runtime.environment_without_huge_pages({"PATH": "/bin", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1:glibc.x=2"})
    assert env == {"PATH": "/bin", "GLIBC_TUNABLES": "glibc.x=2"}
    assert runtime.environment_without_huge_pages({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}) == {}
    assert not runtime.huge_pages_requested(runtime.environment_without_huge_pages(runtime.environment_with_huge_pages({})))


def test_requested_only_for_the_exact_tunable():
    assert not runtime.huge_pages_requested({})
    assert not runtime.huge_pages_requested({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"})
    assert not runtime.huge_pages_requested({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=10"})
    assert runtime.huge_pages_requested({"GLIBC_TUNABLES": "glibc.malloc.arena_max=1:glibc.malloc.hugetlb=1"})


@pytest.mark.parametrize("text, mode", [("always [madvise] never\n", "madvise"), ("[always] madvise never", "always"),
                                        ("always madvise [never]\n", "never"), ("garbled", None)])
def test_transparent_huge_page_mode_is_read_from_the_kernel_file(tmp_path, monkeypatch, text, mode):
    path = tmp_path / "enabled"
    path.write_text(text)
    monkeypatch.setattr(runtime, "_THP_MODE_FILE", path)
    assert runtime.transparent_huge_pages() == mode


def test_unavailable_says_why(tmp_path, monkeypatch):
    monkeypatch.setattr(runtime, "_is_glibc_linux", lambda: True)
    monkeypatch.setattr(runtime.platform, "libc_ver", lambda: ("glibc", "2.36"))
    path = tmp_path / "enabled"
    path.write_text("always madvise [never]\n")
    monkeypatch.setattr(runtime, "_THP_MODE_FILE", path)
    assert "disabled" in runtime.huge_pages_unavailable()
    path.write_text("always [madvise] never\n")
    assert runtime.huge_pages_unavailable() is None
    monkeypatch.setattr(runtime, "_THP_MODE_FILE", tmp_path / "missing")
    assert "no transparent huge pages" in runtime.huge_pages_unavailable()
    monkeypatch.setattr(runtime.platform, "libc_ver", lambda: ("glibc", "2.31"))
    assert "2.35" in runtime.huge_pages_unavailable()
    monkeypatch.setattr(runtime, "_is_glibc_linux", lambda: False)
    assert "glibc" in runtime.huge_pages_unavailable()


@pytest.mark.parametrize("command", ["bench", "reproduce"])
def test_the_commands_take_the_option(command):
    extra = ["--json", "b.json"] if command == "bench" else ["--out", "o"]
    args = build_parser().parse_args([command, "--huge-pages", *extra])
    assert args.huge_pages is True


@pytest.mark.slow
def test_the_command_runs_again_with_the_tunable_and_returns_its_exit_code(monkeypatch, tmp_path):
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    monkeypatch.setattr(runtime, "huge_pages_unavailable", lambda: None)
    calls = []
    real_run = subprocess.run

    def fake_run(command, env=None, check=False, **other):
        if command[:3] != [sys.executable, "-m", "devinet"]:  # other programs (version probes) run
            return real_run(command, env=env, check=check, **other)
        calls.append((command, env))
        return subprocess.CompletedProcess(command, 3)

    monkeypatch.setattr(runtime.subprocess, "run", fake_run)
    argv = ["bench", "--quick", "--huge-pages", "--json", "out.json"]
    assert main(argv) == 3
    [(command, env)] = calls
    assert command == [sys.executable, "-m", "devinet", *argv]
    assert runtime.huge_pages_requested(env)
    # in the child the tunable is in force: it runs the command itself instead of again
    monkeypatch.setenv("GLIBC_TUNABLES", runtime.HUGE_PAGE_TUNABLE)
    benched = []
    monkeypatch.setattr("experiments.bench.run_bench", benched.append)  # the command runs it instead of again
    assert main(["bench", "--huge-pages", "--json", str(tmp_path / "out.json")]) == 0
    assert len(calls) == 1 and len(benched) == 1 and benched[0].destination == tmp_path / "out.json"


def test_unavailable_huge_pages_are_one_clear_line(monkeypatch, capsys, tmp_path):
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    monkeypatch.setattr(runtime, "huge_pages_unavailable", lambda: "transparent huge pages are disabled (x: never)")
    out = tmp_path / "b.json"
    assert main(["bench", "--huge-pages", "--json", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err == "devinet bench: error: --huge-pages: transparent huge pages are disabled (x: never)"
    assert not out.exists()


@pytest.mark.slow
@pytest.mark.allocator
@pytest.mark.skipif(runtime.huge_pages_unavailable() is not None,
                    reason=f"huge pages unavailable here: {runtime.huge_pages_unavailable()}")
def test_huge_pages_fold_the_page_faults_of_large_tensors(fresh_python):
    default = fresh_python(PROBE)
    huge = fresh_python(PROBE, GLIBC_TUNABLES=runtime.environment_with_huge_pages({})["GLIBC_TUNABLES"])
    assert default["requested"] is False and huge["requested"] is True
    # 2 MiB pages: 512 times fewer faults than 4 KiB pages (measured: about 550 per round, most
    # of them the interpreter's own); the kernel may fall back to small pages for a part of a
    # block when it finds no free huge page, hence the margin
    assert sum(huge["faults"]) < 3 * PAGES / 8, (default, huge)
    assert huge["huge_mb"] > 0, huge
    if runtime.transparent_huge_pages() == "madvise":  # ("always" gives huge pages without asking)
        # 4 KiB pages: one fault per page of each fresh 64 MiB tensor (measured: 16385 per round)
        assert all(f >= PAGES // 2 for f in default["faults"]), default
        assert not default["huge_mb"], default
