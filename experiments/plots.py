"""Figures of ``devinet reproduce``, each drawn from saved statistics (one function per figure).

Every function takes plain data (what results.json, the metrics logs and clip_example.json
hold), writes a PNG atomically with matplotlib's Agg backend and returns its path. On the
synthetic stand-in every title says so, and no figure reported on the real data is drawn.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from devinet._io import atomic_path

DPI = 110


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | os.PathLike) -> Path:
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=DPI, bbox_inches="tight", format="png")
    _pyplot().close(fig)
    return path


def _data_tag(synthetic: bool) -> str:
    return "synthetic stand-in: " if synthetic else ""


def plot_training_curves(histories: Mapping[str, Mapping[int, Sequence[Mapping[str, Any]]]],
                         path: str | os.PathLike, monitor_key: str = "test_at_f1", synthetic: bool = False) -> Path:
    """Training loss and the monitored AT micro F1 per epoch: one colour per system, one line per seed.

    histories: system -> seed -> its metrics records (``epoch``, ``iteration``, ``loss``, ``monitor_key``).
    """
    plt = _pyplot()
    fig, (ax_loss, ax_f1) = plt.subplots(1, 2, figsize=(11, 3.8))
    for k, (name, runs) in enumerate(histories.items()):
        colour = f"C{k % 10}"
        for j, records in enumerate(runs.values()):
            iterations = [r["iteration"] for r in records]
            label = name if j == 0 else None
            ax_loss.plot(iterations, [r["loss"] for r in records], color=colour, marker="o", ms=2, lw=1, label=label)
            if records and monitor_key in records[0]:
                ax_f1.plot(iterations, [r[monitor_key] for r in records], color=colour, marker="o", ms=2, lw=1,
                           label=label)
    tag = _data_tag(synthetic)
    ax_loss.set(xlabel="iteration", ylabel="binary cross-entropy (epoch mean)", title=f"{tag}training loss")
    ax_f1.set(xlabel="iteration", ylabel="AT micro F1", ylim=(0, 1),
              title=f"{tag}testing AT micro F1 per checkpoint (monitoring only)")
    for ax in (ax_loss, ax_f1):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path)


def _nan(values: Sequence[float | None]) -> list[float]:
    return [np.nan if v is None else v for v in values]


def plot_per_class_f1(systems: Mapping[str, Mapping[str, Any]], path: str | os.PathLike,
                      reference: Mapping[str, tuple[float, str]] | None = None, synthetic: bool = False) -> Path:
    """Per-class AT F1 and SED segment F1 (1 s), grouped bars per system: the mean over seeds, with
    ± one standard deviation as error bars when there are several seeds.

    systems: name -> results.json entry (``mean`` and ``std``, each with ``at``/``sed`` ``class_wise_f1``
    and micro ``f1``). reference: optional ``{"at"|"sed": (value, label)}`` drawn as a dashed
    horizontal line (the caller passes none for synthetic data).
    """
    plt = _pyplot()
    names = list(systems)
    classes = list(next(iter(systems.values()))["mean"]["at"]["class_wise_f1"]) if names else []
    fig, axes = plt.subplots(2, 1, figsize=(13, 8), sharex=True)
    width = 0.8 / max(1, len(names))
    x = np.arange(len(classes))
    tag = _data_tag(synthetic)
    for task, ax, title in (("at", axes[0], f"{tag}audio tagging: per-class F1"),
                            ("sed", axes[1], f"{tag}event detection: per-class segment F1 (1 s)")):
        for k, name in enumerate(names):
            mean, std = systems[name]["mean"][task], systems[name]["std"][task]
            values = _nan([mean["class_wise_f1"].get(label) for label in classes])
            errors = _nan([std["class_wise_f1"].get(label) for label in classes])
            ax.bar(x + (k - (len(names) - 1) / 2) * width, values, width,
                   yerr=None if np.all(np.isnan(errors)) else errors, error_kw={"lw": 0.6, "capsize": 1.5},
                   label=f"{name} (micro {mean['f1']:.2f})")
        if reference and task in reference:
            value, label = reference[task]
            ax.axhline(value, color="black", ls="--", lw=1, label=label)
        ax.set(ylabel="F1", ylim=(0, 1.05), title=title)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    axes[1].set_xticks(x)
    axes[1].set_xticklabels(classes, rotation=40, ha="right", fontsize=8)
    return _save(fig, path)


def plot_clip_example(clip: Mapping[str, Any], path: str | os.PathLike, max_rows: int = 6) -> Path:
    """One clip: its log-mel, then per class the frame-wise probabilities of each system over the strong labels.

    clip: ``clip`` (name), ``frame_step`` (s), ``logmel`` (T, F), ``framewise`` {system: (T, C)},
    ``events`` [{label, onset, offset}], ``classes`` (C names), ``threshold``; optional ``synthetic``
    (the title says which data) and ``seed`` (whose predictions). Rows show the
    labelled classes, then the most probable others, up to ``max_rows``.
    """
    plt = _pyplot()
    logmel = np.asarray(clip["logmel"], dtype=np.float32)
    step, classes = float(clip["frame_step"]), list(clip["classes"])
    frames = {name: np.asarray(p, dtype=np.float32) for name, p in clip["framewise"].items()}
    labelled = [c for c in classes if any(e["label"] == c for e in clip["events"])]
    peak = np.max([p.max(axis=0) for p in frames.values()], axis=0)
    others = [classes[k] for k in np.argsort(-peak) if classes[k] not in labelled and peak[k] > clip["threshold"]]
    rows = (labelled + others)[:max_rows]
    fig, axes = plt.subplots(1 + len(rows), 1, figsize=(11, 2.6 + 1.2 * len(rows)), sharex=True,
                             gridspec_kw={"height_ratios": [2.2] + [1] * len(rows)})
    axes = np.atleast_1d(axes)
    t_end = logmel.shape[0] * step
    axes[0].imshow(logmel.T, origin="lower", aspect="auto", extent=(0, t_end, 0, logmel.shape[1]), cmap="magma")
    source = "synthetic stand-in" if clip.get("synthetic") else "real data"
    seed = f", seed {clip['seed']}" if "seed" in clip else ""
    axes[0].set(ylabel="mel bin", title=f"{source}: {clip['clip']}: log-mel (unscaled){seed}")
    t = np.arange(logmel.shape[0]) * step
    for ax, label in zip(axes[1:], rows):
        for event in clip["events"]:
            if event["label"] == label and event["offset"] > event["onset"]:
                ax.axvspan(event["onset"], event["offset"], color="0.55", alpha=0.3, lw=0)
        k = classes.index(label)
        for name, probs in frames.items():
            ax.plot(t, probs[:, k], lw=1.2, label=name)
        ax.axhline(clip["threshold"], color="grey", ls=":", lw=1)
        ax.set_ylim(0, 1.02)
        ax.set_ylabel(label if len(label) < 18 else label[:16] + "…", fontsize=8, rotation=0, ha="right", va="center")
        ax.grid(alpha=0.2)
    if rows:
        axes[-1].legend(fontsize=8, ncol=len(frames), loc="upper center", bbox_to_anchor=(0.5, -0.5),
                        title="frame probabilities per system (grey: strong labels; dotted: threshold)",
                        title_fontsize=8)
    axes[-1].set_xlabel("time (s)")
    axes[-1].set_xlim(0, t_end)
    return _save(fig, path)


__all__ = ["plot_training_curves", "plot_per_class_f1", "plot_clip_example"]
