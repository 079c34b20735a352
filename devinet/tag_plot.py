"""The picture of a tagged recording (``devinet tag --plot``): log-mel, frame probabilities, events.

matplotlib is imported when a figure is drawn (``pip install 'devinet[experiments]'`` has it).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ._io import atomic_path
from .errors import MissingDependencyError
from .recipe import FRAME_STEP_SEC
from .tagging import TagResult

#: classes drawn in the probability panel: the most probable ones
MAX_CURVES = 6


def plot_tagging(result: TagResult, path: str | os.PathLike, title: str = "", threshold: float | None = None) -> Path:
    """Draw ``result`` (which must hold its log-mel: ``tag(..., keep_logmel=True)``) to a PNG, atomically."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise MissingDependencyError("matplotlib (for --plot)", "experiments") from None
    if result.logmel is None:
        raise ValueError("the result holds no log-mel: tag with keep_logmel=True")
    figure, (mel_ax, prob_ax, event_ax) = plt.subplots(
        3, 1, figsize=(10, 6.4), sharex=True, gridspec_kw={"height_ratios": [2.2, 2.2, 1.4]})
    try:
        _logmel(mel_ax, result)
        _probabilities(prob_ax, result, threshold)
        _events(event_ax, result)
        tags = ", ".join(f"{label} {p:.2f}" for label, p in result.tags[:4])
        tags += f" (and {len(result.tags) - 4} more)" if len(result.tags) > 4 else ""
        mel_ax.set_title(f"{title}\ntags: {tags}" if title else f"tags: {tags}", fontsize=9, loc="left")
        event_ax.set_xlabel("time (s)")
        event_ax.set_xlim(0, max(result.duration, 1e-3))
        figure.tight_layout()
        path = Path(path)
        with atomic_path(path, suffix=".png") as tmp:
            figure.savefig(tmp, format="png", dpi=80)
    finally:
        plt.close(figure)
    return path


def _logmel(ax, result: TagResult) -> None:
    # input frame i at i * FRAME_STEP_SEC (the tagger computes the original recipe only)
    extent = (0, result.logmel.shape[0] * FRAME_STEP_SEC, 0, result.logmel.shape[1])
    ax.imshow(result.logmel.T, origin="lower", aspect="auto", cmap="magma", extent=extent, interpolation="nearest")
    ax.set_ylabel("mel band")


def _probabilities(ax, result: TagResult, threshold: float | None) -> None:
    shown = [int(k) for k in np.argsort(-result.clipwise, kind="stable")[:MAX_CURVES]]
    for k in shown:
        ax.plot(result.frame_times, result.framewise[:, k], linewidth=1.1, label=result.classes[k])
    if threshold is not None:
        ax.axhline(threshold, color="0.4", linestyle="--", linewidth=0.8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("probability")
    ax.legend(fontsize=7, loc="upper right", ncol=2, framealpha=0.8,
              title=f"{len(shown)} most probable of {len(result.classes)} classes", title_fontsize=7)


def _events(ax, result: TagResult) -> None:
    labels = sorted({e.label for e in result.events}, key=result.classes.index)
    for row, label in enumerate(labels):
        spans = [(e.onset, max(e.offset - e.onset, 0.02)) for e in result.events if e.label == label]
        ax.broken_barh(spans, (row - 0.35, 0.7), color=f"C{row % 10}")
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set_ylim(-0.6, max(len(labels), 1) - 0.4)
    if not labels:
        ax.text(0.5, 0.5, "no events", transform=ax.transAxes, ha="center", va="center", fontsize=8)
    ax.set_ylabel("events")


__all__ = ["plot_tagging"]
