"""Data-parallel training (experiments.distributed): sharded batches, global-batch BatchNorm, the launcher.

The equality of a 2-process run with a 1-process run, a killed process, and resuming after it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from devinet.errors import InputError
from experiments import distributed as D
from experiments.bench.dataload import write_synthetic_packed

REPO_ROOT = Path(__file__).resolve().parents[1]
#: a model small enough for tests: the crnn_sed architecture at 1/8 width
TINY_CONFIG = textwrap.dedent("""
    preset: cvssp_crnn_sed
    model: {conv_channels: 8, final_conv_channels: 32, rnn_hidden: [16], bn_momentum: 0.1}
    training: {epochs: 3, iterations_per_epoch: 2, batch_size: 8, fused_checkpoints: 2}
    seed: 3
    torch_threads: 1
""")


def devinet(*argv, env=None, timeout=1800) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "devinet", *map(str, argv)], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO_ROOT, env=env)


def relative_differences(a: dict, b: dict) -> dict[str, float]:
    """max |a - b| / max |a| of every floating-point tensor of two state dicts."""
    return {key: ((a[key] - b[key]).abs().max() / a[key].abs().max().clamp_min(1e-12)).item()
            for key in a if a[key].is_floating_point()}


# ---------------------------------------------------------------------- sharding (no processes)
def test_one_process_trains_on_the_whole_batch():
    index = np.arange(7)
    part, weight = D.shard(index, D.Processes())
    assert part is index and weight == 1.0


def test_shards_partition_every_batch_and_weights_average_to_one():
    for length in (44, 43, 9, 3):  # the sampler returns short batches when a class's pass ends
        index = np.arange(100, 100 + length)
        parts = [D.shard(index, D.Processes(rank, 3, rank, 3)) for rank in range(3)]
        np.testing.assert_array_equal(np.concatenate([p for p, _ in parts]), index)
        assert max(len(p) for p, _ in parts) - min(len(p) for p, _ in parts) <= 1
        # DDP averages the processes' gradients: the weights make that the global batch's mean
        assert sum(w for _, w in parts) / 3 == pytest.approx(1.0)
        for part, weight in parts:
            assert weight == pytest.approx(3 * len(part) / length)
    with pytest.raises(InputError, match="cannot be split over 4 processes"):
        D.shard(np.arange(3), D.Processes(3, 4, 3, 4))


# ---------------------------------------------------------------------- global-batch BatchNorm
def _bn_worker(rank: int, world: int, port: int, rule: str, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo")
    x, weight, bias = _bn_inputs()
    bn = D.GlobalBatchNorm2d(6, eps=1e-3, momentum=0.1, moving_variance=rule)
    with torch.no_grad():
        bn.weight.copy_(weight)
        bn.bias.copy_(bias)
    part = x[np.array_split(np.arange(len(x)), world)[rank]].clone().requires_grad_()
    y = bn(part)
    (y * _bn_upstream(y.shape, rank, world)).sum().backward()
    # plain arrays: torch's shared-memory tensors would vanish with this process
    queue.put((rank, *(t.detach().numpy().copy() for t in (y, part.grad, bn.weight.grad, bn.bias.grad,
                                                            bn.running_mean, bn.running_var))))
    torch.distributed.destroy_process_group()


def _bn_inputs():
    g = torch.Generator().manual_seed(0)
    return (torch.randn(5, 6, 4, 3, generator=g) * 3 + 1, torch.rand(6, generator=g) + 0.5,
            torch.randn(6, generator=g))


def _bn_upstream(shape, rank: int, world: int) -> torch.Tensor:
    """The same upstream gradient as one process would see, sliced like the batch."""
    g = torch.Generator().manual_seed(1)
    full = torch.randn(5, *shape[1:], generator=g)
    return full[np.array_split(np.arange(5), world)[rank]]


@pytest.mark.slow
@pytest.mark.parametrize("rule", ["torch", "keras2_theano"])
def test_global_batchnorm_equals_batchnorm_over_the_whole_batch(rule):
    """Two processes with 3 and 2 of the 5 clips: the output, input gradient and moving statistics of
    one BatchNorm over the 5 clips; the parameter gradients are each process's share (DDP sums them)."""
    context = torch.multiprocessing.get_context("spawn")
    queue = context.Queue()
    port = 29500 + os.getpid() % 1000
    workers = [context.Process(target=_bn_worker, args=(rank, 2, port, rule, queue)) for rank in range(2)]
    for worker in workers:
        worker.start()
    results = sorted([queue.get(timeout=300) for _ in workers], key=lambda r: r[0])
    results = [(r[0], *map(torch.from_numpy, r[1:])) for r in results]
    for worker in workers:
        worker.join(timeout=60)
    x, weight, bias = _bn_inputs()
    x.requires_grad_()
    bn = torch.nn.BatchNorm2d(6, eps=1e-3, momentum=0.1)
    with torch.no_grad():
        bn.weight.copy_(weight)
        bn.bias.copy_(bias)
    y = bn(x)
    (y * _bn_upstream(y.shape, 0, 1)).sum().backward()
    close = dict(rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.cat([r[1] for r in results]), y.detach(), **close)
    torch.testing.assert_close(torch.cat([r[2] for r in results]), x.grad, **close)
    torch.testing.assert_close(results[0][3] + results[1][3], bn.weight.grad, **close)
    torch.testing.assert_close(results[0][4] + results[1][4], bn.bias.grad, **close)
    torch.testing.assert_close(results[0][5], bn.running_mean, **close)
    if rule == "torch":
        torch.testing.assert_close(results[0][6], bn.running_var, **close)
    else:  # Keras 2.0.8 on Theano: the biased batch variance plus eps
        var = x.detach().var(dim=(0, 2, 3), unbiased=False)
        torch.testing.assert_close(results[0][6], 0.9 * torch.ones(6) + 0.1 * (var + 1e-3), **close)
    torch.testing.assert_close(results[0][6], results[1][6], rtol=0, atol=0)  # every process holds the same


def test_global_batchnorm_replaces_batchnorm_with_the_same_state():
    from devinet.model import DeviNet
    from experiments.systems import model_config

    model = DeviNet(model_config("gated_crnn_attention", 0.125))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    D.use_global_batchnorm(model)
    assert all(isinstance(block.bn, D.GlobalBatchNorm2d) for block in model.gcnn)
    assert model.state_dict().keys() == before.keys()
    x = torch.randn(2, 48, 64)
    model.eval()  # outside a process group and in eval mode it is plain BatchNorm
    reference = DeviNet(model_config("gated_crnn_attention", 0.125)).eval()
    reference.load_state_dict(before)
    torch.testing.assert_close(model(x)["clipwise"], reference(x)["clipwise"], rtol=0, atol=0)


# ---------------------------------------------------------------------- whole runs
@pytest.mark.slow
def test_reproduce_tiny_on_two_processes_equals_one_process(tmp_path):
    """`devinet reproduce --size tiny --nproc 2` (gloo, 2 CPU processes) ends with the weights of --nproc 1.

    Compared in float64 (``--precision fp64``): float32's rounding differs between one process
    and two (the global-batch BatchNorm merges per-process statistics; gradients are summed in
    another order), and Adam amplifies such differences chaotically, to about 1e-4 of a tensor
    after a few steps (and 6e-3 when only the thread count of one run changes: docs/scaling.md),
    which would hide a real mistake. In float64 the largest difference measured is 1.0e-12 of
    its tensor's scale (``head.attention.bias``, a gradient that nearly cancels).
    """
    out, work = tmp_path / "out", tmp_path / "work"
    common = ("reproduce", "--size", "tiny", "--out", out, "--work-dir", work, "--no-progress", "--precision", "fp64")
    one = devinet(*common, "--nproc", "1")
    assert one.returncode == 0, one.stderr[-3000:]
    single = {p.relative_to(work / "runs"): torch.load(p, weights_only=True)["state_dict"]
              for p in (work / "runs").rglob("epoch_0002.pt")}
    two = devinet(*common, "--nproc", "2", "--force")
    assert two.returncode == 0, two.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    trained = ("crnn_baseline", "crnn_ungated_matched", "gated_crnn_mean", "gated_crnn_attention")
    for system in trained:
        assert [run["training"]["world_size"] for run in results["systems"][system]["runs"]] == [2]
    assert results["precision"] == "fp64" and len(single) == len(trained)
    worst = {}
    for path, weights in single.items():
        assert weights["gcnn.0.conv.weight"].dtype == torch.float64
        two_weights = torch.load(work / "runs" / path, weights_only=True)["state_dict"]
        worst |= {f"{path.parts[-3]}.{key}": value for key, value in relative_differences(weights, two_weights).items()}
    ranked = sorted(worst.items(), key=lambda item: -item[1])
    print("largest relative differences:", ranked[:4])
    assert ranked[0][1] <= 1e-9, ranked[:4]


KILLER = textwrap.dedent("""
    # sitecustomize of a training test: SIGKILL the process of rank R at its N-th backward pass
    import os
    if os.environ.get("DEVINET_TEST_KILL_AT"):
        import signal
        import torch
        _rank, _count = map(int, os.environ["DEVINET_TEST_KILL_AT"].split(":"))
        _real, _calls = torch.Tensor.backward, [0]
        def _backward(self, *args, **kwargs):
            if os.environ.get("RANK") == str(_rank):
                _calls[0] += 1
                if _calls[0] == _count:
                    os.kill(os.getpid(), signal.SIGKILL)
            return _real(self, *args, **kwargs)
        torch.Tensor.backward = _backward
""")


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    folder = tmp_path_factory.mktemp("packed")
    labels = write_synthetic_packed(folder / "train.h5", 120)
    (folder / "tiny.yaml").write_text(TINY_CONFIG)
    return folder / "train.h5", labels, folder / "tiny.yaml"


@pytest.mark.slow
def test_a_killed_process_stops_the_other_with_one_line_then_the_run_resumes(tmp_path, packed):
    features, labels, config = packed
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(KILLER)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(hooks), str(REPO_ROOT)]),
               DEVINET_TEST_KILL_AT="1:3")  # rank 1's third step: the first of epoch 2
    command = ["train", "--train", features, "--labels", labels, "--config", config, "--out", tmp_path / "run",
               "--nproc", "2", "--no-progress", "--no-huge-pages"]
    killed = devinet(*command, env=env, timeout=300)  # a hang would end in TimeoutExpired
    assert killed.returncode == 1
    errors = [line for line in killed.stderr.splitlines() if line.strip()]
    assert errors == ["devinet train: error: training process 1 of 2 died (SIGKILL); the other processes were "
                      "stopped (run the same command again to resume)"], killed.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("*.pt")) == ["epoch_0001.pt"]
    resumed = devinet(*command, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed after epoch 1" in resumed.stdout
    history = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in history] == [1, 2, 3] and {r["world_size"] for r in history} == {2}


@pytest.mark.slow
def test_a_failing_process_reports_its_own_error_in_one_line(tmp_path, packed):
    """An error inside one process (here: its run folder is another run's) ends every process, one line."""
    features, labels, config = packed
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"name": "x", "trained": {"seed": 99}}))
    done = devinet("train", "--train", features, "--labels", labels, "--config", config, "--out", run,
                   "--nproc", "2", "--no-progress", "--no-huge-pages", timeout=300)
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("devinet train: error: training process 0 of 2: "), errors
    assert "holds a run with another setup" in errors[0] and "--force" in errors[0]
    shutil.rmtree(run)
