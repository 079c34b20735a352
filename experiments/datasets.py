"""Stage 1 of ``devinet reproduce``: the data. The built-in synthetic stand-in (generated,
resumably) or the real DCASE 2017 Task 4 data the user brought (located and checked)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from devinet.errors import FileFormatError
from experiments.distributed import say

if TYPE_CHECKING:
    from experiments.pipeline import Options

#: the official metadata files an experiment reads from the meta folder. The testing clips and
#: their labels come from the weak ground truth, which lists every one of them (a clip without
#: labels by its name alone); ``testing_set.csv`` says the same and is not needed.
META_FILES = {
    "train_list": "training_set.csv",
    "weak_truth": "groundtruth_weak_label_testing_set.csv",
    "strong_truth": "groundtruth_strong_label_testing_set.csv",
}
#: the official ground truth of the evaluation split, read when its audio is there
EVALUATION_META_FILES = {
    "eval_weak_truth": "groundtruth_weak_label_evaluation_set.csv",
    "eval_strong_truth": "groundtruth_strong_label_evaluation_set.csv",
}
#: audio sub-folders tried under --data-root (ours, CVSSP's, the official download's)
AUDIO_CANDIDATES = {
    "train": ("audio/train", "audio/training", "training", "train",
              "unbalanced_train_segments_training_set_audio_formatted_and_segmented_downloads"),
    "test": ("audio/test", "audio/testing", "testing", "test",
             "unbalanced_train_segments_testing_set_audio_formatted_and_segmented_downloads"),
    "evaluation": ("audio/evaluation", "audio/eval", "evaluation", "eval", "evaluation_set_formatted_audio_segments"),
}


@dataclass
class Dataset:
    """Where a dataset's audio and official metadata are.

    Attributes:
        kind: "synthetic" (the built-in stand-in) or "dcase2017_task4" (real data).
        tag: folder name of its features and runs in the work folder.
        train_audio, test_audio: folders of wav clips.
        meta: key of :data:`META_FILES` (and of :data:`EVALUATION_META_FILES` with an evaluation split) -> path.
        eval_audio: folder of the evaluation split's wav clips, or None (no evaluation split).
        info: what results.json says about it.
    """

    kind: str
    tag: str
    train_audio: Path
    test_audio: Path
    meta: dict[str, Path]
    eval_audio: Path | None = None
    info: dict[str, Any] = field(default_factory=dict)


def _meta_files(meta_dir: Path, names: dict[str, str] = META_FILES, why: str = "") -> dict[str, Path]:
    if not meta_dir.is_dir():
        raise FileFormatError(meta_dir, "no such metadata folder (give --meta-dir)")
    files = {key: meta_dir / name for key, name in names.items()}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise FileFormatError(missing[0], f"missing official metadata file{why} ({len(missing)} missing: "
                                          f"{', '.join(Path(m).name for m in missing)})")
    return files


def _audio_dir(root: Path, split: str, given: Path | None, required: bool = True) -> Path | None:
    """The split's wav folder: ``given``, else the first of :data:`AUDIO_CANDIDATES` under ``root``;
    when none is there, an error (``required``) or None."""
    if given is not None:
        if not given.is_dir():
            raise FileFormatError(given, f"no such folder of {split} wav clips")
        return given
    for candidate in AUDIO_CANDIDATES[split]:
        if (root / candidate).is_dir():
            return root / candidate
    if not required:
        return None
    raise FileFormatError(root, f"no {split} audio folder found (tried {', '.join(AUDIO_CANDIDATES[split])}); "
                                f"give --{split}-audio")


def prepare_data(options: Options) -> Dataset:
    """The synthetic stand-in (generated, resumably) or the real data the user brought (located and checked)."""
    if options.data_root is not None:
        root = options.data_root
        if not root.is_dir():
            raise FileFormatError(root, "no such data folder")
        meta_dir = options.meta_dir or root / "meta"
        meta = _meta_files(meta_dir)
        train_audio = _audio_dir(root, "train", options.train_audio)
        test_audio = _audio_dir(root, "test", options.test_audio)
        # the tag names the training data: an evaluation split found later reuses features and runs
        where = json.dumps([str(p.resolve()) for p in (train_audio, test_audio, *meta.values())])
        tag = "dcase2017-" + hashlib.sha256(where.encode()).hexdigest()[:8]
        eval_audio = _audio_dir(root, "evaluation", options.eval_audio, required=False)
        if eval_audio is not None:
            meta |= _meta_files(meta_dir, EVALUATION_META_FILES, f" for the evaluation audio in {eval_audio}")
        info = {"kind": "dcase2017_task4", "description": "DCASE 2017 Task 4 audio brought by the user (testing "
                "set, and evaluation set when present, scored with the official ground truth)",
                "root": str(root.resolve()), "train_audio": str(train_audio.resolve()),
                "test_audio": str(test_audio.resolve()),
                "eval_audio": str(eval_audio.resolve()) if eval_audio is not None else None,
                "meta": {key: str(p.resolve()) for key, p in meta.items()}}
        found = f", evaluation split {eval_audio}" if eval_audio is not None else ", no evaluation split"
        say(f"[data] real DCASE 2017 Task 4 data: {train_audio} and {test_audio}{found}")
        return Dataset("dcase2017_task4", tag, train_audio, test_audio, meta, eval_audio, info)

    from experiments.synth import generate_dataset

    size = options.size.data_size
    folder = options.work_dir / "data" / f"synthetic-{size}-seed{options.seed}"
    say(f"[data] synthetic stand-in ({size}, seed {options.seed}) in {folder}")
    info = generate_dataset(folder, size=size, seed=options.seed, jobs=options.jobs, progress=options.progress)
    meta = _meta_files(folder / "meta")
    summary = {"kind": "synthetic", "description": info["generator"], "generator_version": info["generator_version"],
               "size": info["size"], "seed": info["seed"],
               "clips": {split: info["splits"][split]["clips"] for split in ("train", "test")},
               "events": {split: info["splits"][split]["events"] for split in ("train", "test")}}
    return Dataset("synthetic", f"synthetic-{size}-seed{options.seed}", folder / "audio" / "train",
                   folder / "audio" / "test", meta, info=summary)


__all__ = ["META_FILES", "EVALUATION_META_FILES", "AUDIO_CANDIDATES", "Dataset", "prepare_data"]
