"""Data-parallel training: the process group, sharded batches, global-batch BatchNorm, the local launcher.

A training run spread over ``W`` processes (``torch.nn.parallel.DistributedDataParallel``)
computes what one process computes, up to float32 rounding:

- every process draws the same global batch from the balanced sampler (same labels, same
  seed) and trains on its slice of it (:func:`shard`: ``numpy.array_split``, so the slices
  differ by at most one clip, also for the short batches the sampler returns when a class's
  pass ends);
- each process's loss is scaled by ``W * n_local / n_global`` (:func:`shard`), so that the
  gradients DDP averages over the processes equal those of the single-process loss, the mean
  over the global batch;
- BatchNorm normalises with the statistics of the global batch (:class:`GlobalBatchNorm2d`,
  the default; ``sync_batchnorm=False`` keeps per-process statistics, as plain DDP does).
  ``torch.nn.SyncBatchNorm`` would do the same on GPUs only, and only with torch's moving-variance
  rule; this one runs on any device with the rule of the model's BatchNorm.

Processes are started by torch's elastic launcher: ``torchrun`` (any number of machines) or
:func:`launch` (``--nproc N`` on this machine, ``torch.distributed.launcher.api.elastic_launch``).
When a process dies, the launcher stops the others and :func:`launch` raises one
:class:`TrainingProcessFailed` line; collectives time out after :data:`COLLECTIVE_TIMEOUT_S`
should a process hang instead. Backends: gloo on CPU, NCCL for CUDA tensors.
"""

from __future__ import annotations

import datetime
import json
import os
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from devinet.errors import ConfigError, DevinetError, InputError, one_line

#: seconds a collective waits for the other processes before failing (rank 0 alone predicts the
#: monitored set and writes checkpoints meanwhile, so it must cover those)
COLLECTIVE_TIMEOUT_S = 1800
#: set in the processes :func:`launch` starts: they leave the error message to it
_LAUNCHED_BY_DEVINET = "DEVINET_LAUNCHED"


@dataclass(frozen=True)
class Processes:
    """This process's place among the training processes (one process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0: it writes checkpoints, logs and the progress bar."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def say(message: str) -> None:
    """Print a progress line once: in the rank-0 process, or outside a launcher."""
    if os.environ.get("RANK", "0") == "0":
        print(message, flush=True)


def launched() -> bool:
    """Whether a torch launcher (``torchrun`` or :func:`launch`) started this process as a training process."""
    return "TORCHELASTIC_RUN_ID" in os.environ or int(os.environ.get("WORLD_SIZE", "1")) > 1


def processes() -> Processes:
    """This process's place, from the launcher's environment (RANK, WORLD_SIZE, LOCAL_RANK, ...)."""
    env = os.environ
    world = int(env.get("WORLD_SIZE", "1"))
    return Processes(int(env.get("RANK", "0")), world, int(env.get("LOCAL_RANK", "0")),
                     int(env.get("LOCAL_WORLD_SIZE", str(world))))


def join(device: str | torch.device = "cpu") -> Processes:
    """Join the process group of the launcher (once per process; nothing to do for one process).

    Returns this process's place. The backend is gloo for CPU tensors and, when training on
    CUDA, NCCL for CUDA tensors (whose device is ``cuda:LOCAL_RANK``).
    """
    place = processes()
    cuda = training_device(device, place).type == "cuda"  # checks the device first
    if place.distributed and not dist.is_initialized():
        if cuda:
            torch.cuda.set_device(place.local_rank)
        dist.init_process_group("cpu:gloo,cuda:nccl" if cuda else "gloo",
                                timeout=datetime.timedelta(seconds=COLLECTIVE_TIMEOUT_S))
    return place


def leave() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def training_device(device: str | torch.device, place: Processes) -> torch.device:
    """The device of this process: ``cuda:LOCAL_RANK`` for a distributed CUDA run, else ``device``
    (checked: a CUDA device must exist)."""
    try:
        device = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"--device {device}: not a torch device (cpu, cuda, cuda:1, ...)") from None
    if device.type != "cuda":
        return device
    if not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: CUDA is not available here (torch {torch.__version__}, built with "
                          f"CUDA {torch.version.cuda}); use --device cpu")
    index = place.local_rank if place.distributed else (device.index or 0)
    if index >= torch.cuda.device_count():
        raise ConfigError(f"training process {place.local_rank} of this machine needs cuda:{index}, but it has "
                          f"{torch.cuda.device_count()} GPU(s): start at most that many processes per machine")
    return torch.device("cuda", index)


def shard(index: np.ndarray, place: Processes) -> tuple[np.ndarray, float]:
    """This process's slice of a global batch and the weight of its loss, ``W * n_local / n_global``.

    With that weight, the average over processes of the gradients of ``weight * mean_loss(slice)``
    is the gradient of the mean loss over the global batch.
    """
    if not place.distributed:
        return index, 1.0
    part = np.array_split(index, place.world_size)[place.rank]
    if len(part) == 0:
        raise InputError(f"a batch of {len(index)} clips cannot be split over {place.world_size} processes; "
                         "use fewer processes or a larger batch_size")
    return part, place.world_size * len(part) / len(index)


def sum_over_processes(values: torch.Tensor) -> torch.Tensor:
    """The element-wise sum of ``values`` over every process (``values`` itself for one process)."""
    if dist.is_available() and dist.is_initialized():
        values = values.clone()
        dist.all_reduce(values)
    return values


def broadcast_int(value: int, device: str | torch.device = "cpu") -> int:
    """Rank 0's ``value`` in every process."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    tensor = torch.tensor([value], dtype=torch.int64, device=device)
    dist.broadcast(tensor, src=0)
    return int(tensor.item())


# ---------------------------------------------------------------------- global-batch BatchNorm
class _GlobalBatchNorm(torch.autograd.Function):
    """Batch normalisation of (N, C, H, W) with the mean and biased variance of the batch of
    every process (in the input's dtype). Returns ``(y, mean, var, count)``; only ``y`` is differentiable."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps, group):
        var, mean = torch.var_mean(x, dim=(0, 2, 3), correction=0)
        count = x.numel() // x.shape[1]
        local = torch.cat([mean.new_tensor([count]), mean, var * count])
        gathered = [torch.empty_like(local) for _ in range(dist.get_world_size(group))]
        dist.all_gather(gathered, local, group=group)
        stats = torch.stack(gathered)  # (W, 1 + 2C): count, mean, M2 of each process (Chan et al.'s merge)
        counts, means, m2 = stats[:, :1], stats[:, 1:1 + x.shape[1]], stats[:, 1 + x.shape[1]:]
        total = counts.sum()
        mean = (counts * means).sum(0) / total
        var = (m2.sum(0) + (counts * (means - mean) ** 2).sum(0)) / total
        y = F.batch_norm(x, mean, var, weight, bias, False, 0.0, eps)
        ctx.save_for_backward(x, weight, mean, torch.rsqrt(var + eps))
        ctx.total, ctx.group = total, group
        ctx.mark_non_differentiable(mean, var)
        return y, mean, var, total

    @staticmethod
    def backward(ctx, dy, *_):
        x, weight, mean, invstd = ctx.saved_tensors
        shape = (1, -1, 1, 1)
        xhat = (x - mean.view(shape)) * invstd.view(shape)
        local = torch.stack([dy.sum((0, 2, 3)), (dy * xhat).sum((0, 2, 3))])  # d bias, d weight of this process
        summed = local.clone()
        dist.all_reduce(summed, group=ctx.group)
        sum_dy, sum_dy_xhat = summed / ctx.total
        scale = invstd if weight is None else invstd * weight
        dx = (dy - sum_dy.view(shape) - xhat * sum_dy_xhat.view(shape)) * scale.view(shape)
        return dx, None if weight is None else local[1], None if weight is None else local[0], None, None


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d that, in training mode in a process group, normalises with the global batch's statistics.

    Its moving statistics follow ``moving_variance``: "torch" (``nn.BatchNorm2d``: unbiased
    variance) or "keras2_theano" (biased variance plus eps, Keras 2.0.8 on Theano). Eval mode,
    parameters, buffers and ``state_dict`` keys are those of ``nn.BatchNorm2d``. Statistics and
    normalisation run in float32 at least (also under autocast); the output has the input's dtype.
    """

    def __init__(self, *args, moving_variance: str = "torch", group=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.moving_variance = moving_variance
        self.group = group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return super().forward(x)
        self._check_input_dim(x)
        with torch.autocast(x.device.type, enabled=False):
            wide = x.to(torch.promote_types(x.dtype, torch.float32))  # float16/bfloat16 -> float32; float64 stays
            y, mean, var, total = _GlobalBatchNorm.apply(wide, self.weight, self.bias, self.eps, self.group)
        if self.track_running_stats and self.running_mean is not None:
            self._update_moving_statistics(mean, var, total)
        return y.to(x.dtype)

    @torch.no_grad()
    def _update_moving_statistics(self, mean: torch.Tensor, var: torch.Tensor, total: torch.Tensor) -> None:
        if self.momentum is None:
            raise ConfigError("GlobalBatchNorm2d needs a momentum (no cumulative moving average)")
        m = self.momentum
        self.num_batches_tracked.add_(1)
        self.running_mean.mul_(1 - m).add_(mean, alpha=m)
        target = var + self.eps if self.moving_variance == "keras2_theano" else var * (total / (total - 1).clamp_min(1))
        self.running_var.mul_(1 - m).add_(target, alpha=m)


def _moving_variance_rule(bn: nn.Module) -> str:
    if type(bn) is nn.BatchNorm2d:
        return "torch"
    if type(bn).__name__ == "Keras2BatchNorm2d":  # devinet.layers: Keras 2.0.8's moving-variance update
        return "keras2_theano"
    raise ConfigError(f"no global-batch version of {type(bn).__name__}; train with per-process BatchNorm")


def use_global_batchnorm(model: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d of ``model`` by a :class:`GlobalBatchNorm2d` holding the same
    parameters and buffers (same ``state_dict``); returns ``model``."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, nn.modules.batchnorm._BatchNorm) or isinstance(child, GlobalBatchNorm2d):
                continue
            if not isinstance(child, nn.BatchNorm2d):
                raise ConfigError(f"no global-batch version of {type(child).__name__}")
            new = GlobalBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                    child.track_running_stats, moving_variance=_moving_variance_rule(child))
            new.weight, new.bias = child.weight, child.bias
            for key in ("running_mean", "running_var", "num_batches_tracked"):
                setattr(new, key, getattr(child, key))
            new.train(child.training)
            setattr(parent, name, new)
    return model


def data_parallel(model: nn.Module, device: torch.device, sync_batchnorm: bool) -> nn.Module:
    """``model`` wrapped in DistributedDataParallel (BatchNorm over the global batch unless not
    ``sync_batchnorm``); ``model`` itself outside a process group."""
    if not (dist.is_available() and dist.is_initialized()):
        return model
    if sync_batchnorm:
        use_global_batchnorm(model)
    # Per-process BatchNorm: rank 0's moving statistics are broadcast at every step (and saved).
    return nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None, forward_sync_buffers=not sync_batchnorm)


# ---------------------------------------------------------------------- the local launcher
class TrainingProcessFailed(DevinetError):
    """A training process started by :func:`launch` failed or died; the others were stopped."""


def _error_file_message(message: str) -> None:
    """Leave ``message`` where the elastic launcher reads a failed process's reason."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if path:
        with open(path, "w", encoding="utf-8") as handle:
            json.dump({"message": message, "timestamp": int(time.time())}, handle)


def _collective_failure(exc: BaseException) -> bool:
    return isinstance(exc, dist.DistError) or (
        isinstance(exc, RuntimeError) and any(word in str(exc) for word in ("gloo", "Gloo", "NCCL", "Connection")))


def run_training_process(command: str, fn: Callable, *args: Any) -> Any:
    """Run ``fn(*args)`` as one training process: a failure ends the process with exit code 1 and
    one line (on stderr, or for :func:`launch` to print), never a hang or a traceback per process."""
    place = processes()
    try:
        return fn(*args)
    except DevinetError as exc:
        message = one_line(str(exc))
    except Exception as exc:  # noqa: BLE001 - only collective failures are turned into one line
        if not _collective_failure(exc):
            raise
        message = f"lost contact with the other training processes ({one_line(str(exc).splitlines()[0])})"
    finally:
        leave()
    if place.distributed:
        message = f"training process {place.rank} of {place.world_size}: {message}"
    _error_file_message(message)
    if _LAUNCHED_BY_DEVINET not in os.environ:
        print(f"devinet {command}: error: {message}", file=sys.stderr, flush=True)
    sys.exit(1)


def _launched_process(command: str, threads: int | None, fn: Callable, args: tuple) -> Any:
    if threads is not None:
        torch.set_num_threads(threads)
    return run_training_process(command, fn, *args)


def _failure_line(exc, nproc: int) -> str:
    """One line from the launcher's ChildFailedError: the first process that failed by itself."""
    failures = sorted(exc.failures.items(), key=lambda item: (item[1].timestamp, item[0]))
    own = [(rank, f) for rank, f in failures if "lost contact" not in f.message] or failures
    rank, failure = own[0]
    if failure.exitcode < 0:
        what = f"training process {rank} of {nproc} died ({failure.signal_name()})"
    else:
        what = one_line(failure.message) if failure.message.startswith("training process") else \
            f"training process {rank} of {nproc} failed (exit code {failure.exitcode})"
    return f"{what}; the other processes were stopped (run the same command again to resume)"


def launch(nproc: int, command: str, fn: Callable, *args: Any, threads: int | None = None) -> Any:
    """Run ``fn(*args)`` in ``nproc`` training processes on this machine (torch's elastic launcher,
    as ``torchrun --standalone --nproc-per-node NPROC``); returns rank 0's result.

    ``threads``: torch threads per process. Raises :class:`TrainingProcessFailed` (one line) when a
    process fails or dies: the launcher then stops the others.
    """
    import logging

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if nproc < 1:
        raise ConfigError(f"--nproc must be at least 1, got {nproc}")
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=f"devinet-{uuid.uuid4().hex[:12]}",
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.2,
                          start_method="spawn")
    # The launcher's own log (processes started and stopped) stays quiet: a failure is reported in
    # one line. The resource tracker would warn of the semaphore a killed process could not release.
    loggers = [logging.getLogger(name) for name in list(logging.Logger.manager.loggerDict)
               if name.startswith(("torch.distributed.elastic", "torch.multiprocessing"))]
    levels = [logger.level for logger in loggers]
    saved = {key: os.environ.get(key) for key in (_LAUNCHED_BY_DEVINET, "PYTHONWARNINGS")}
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    os.environ[_LAUNCHED_BY_DEVINET] = "1"
    os.environ["PYTHONWARNINGS"] = ",".join(filter(None, [saved["PYTHONWARNINGS"],
                                                          "ignore:resource_tracker:UserWarning"]))
    try:
        results = elastic_launch(config, _launched_process)(command, threads, fn, args)
    except ChildFailedError as exc:
        raise TrainingProcessFailed(_failure_line(exc, nproc)) from None
    except SignalException:  # Ctrl-C or a kill of this process: the launcher stopped the training processes
        raise KeyboardInterrupt from None
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return results[0]


__all__ = ["COLLECTIVE_TIMEOUT_S", "Processes", "say", "launched", "processes", "join", "leave", "training_device",
           "shard", "sum_over_processes", "broadcast_int", "GlobalBatchNorm2d", "use_global_batchnorm", "data_parallel",
           "TrainingProcessFailed", "run_training_process", "launch"]
