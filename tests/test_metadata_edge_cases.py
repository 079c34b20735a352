"""Real metadata edge cases of `devinet reproduce` (issue 22), on the 12 real clips in the official layout.

Custom metadata for real AudioSet clips: a testing clip without any label (listed by its name
alone in the weak ground truth, no event in the strong one) must be scored as a negative, not
end the run at evaluation; training clips named with integer times (``Y<id>_30_40.wav`` where
the metadata says ``30.000``) are missing, and the run must say which name it expected next to
the one it found and warn before training when more than half of a split is missing;
``results.md`` counts the missing training clips too; ``testing_set.csv`` is not needed (the
weak ground truth lists the testing clips).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from devinet.cli import main
from experiments import evaluation as E
from experiments.meta import clip_key, read_listed_clips

TRAIN_LABELS = ["Train", "Car", "Ambulance (siren)", "Car passing by", "Bus", "Train horn", "Truck", "Car alarm"]


def _layout(reference_dir: Path, root: Path) -> dict:
    """DCASE 2017 Task 4's layout for the real clips: 8 training clips (5 of them named with
    integer times), 4 testing clips, one of which has no label and no event; no testing_set.csv."""
    real = sorted((reference_dir / "real_clips" / "wav").glob("*.wav"))
    train, test = real[:8], real[8:]
    for folder in ("meta", "audio/train", "audio/test"):
        (root / folder).mkdir(parents=True)
    rows, renamed = [], []
    for index, (wav, label) in enumerate(zip(train, TRAIN_LABELS)):
        youtube_id, start, end = clip_key(wav.name).rsplit("_", 2)
        rows.append(f'{youtube_id},{start},{end},"{label}","/m/{index:05d}"')
        name = wav.name
        if index < 5:  # the integer times of another download tool
            name = f"Y{youtube_id}_{int(float(start))}_{int(float(end))}.wav"
            renamed.append((wav.name, name))
        (root / "audio" / "train" / name).symlink_to(wav)
    (root / "meta" / "training_set.csv").write_text("\n".join(rows) + "\n")
    weak, strong = [], []
    for index, wav in enumerate(test):
        (root / "audio" / "test" / wav.name).symlink_to(wav)
        key = clip_key(wav.name)
        start, end = key.rsplit("_", 2)[1:]
        if index == 0:
            weak.append(f"{key}.wav")  # the negative: listed by its name alone
            continue
        weak.append(f"{key}.wav\t{start}\t{end}\t{TRAIN_LABELS[index]}")
        strong.append(f"{key}.wav\t1.0\t4.5\t{TRAIN_LABELS[index]}")
    (root / "meta" / "groundtruth_weak_label_testing_set.csv").write_text("\n".join(weak) + "\n")
    (root / "meta" / "groundtruth_strong_label_testing_set.csv").write_text("\n".join(strong) + "\n")
    return {"renamed": renamed, "negative": clip_key(test[0].name), "test": [clip_key(w.name) for w in test]}


@pytest.fixture(scope="module")
def run(reference_dir, tmp_path_factory):
    """One tiny reproduction on that layout, with its console output."""
    import contextlib
    import io

    root = tmp_path_factory.mktemp("dcase")
    layout = _layout(reference_dir, root)
    out = root / "out"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["reproduce", "--no-huge-pages", "--size", "tiny", "--data-root", str(root), "--out", str(out), "--systems",
                     "gated_crnn_mean", "--jobs", "1", "--no-progress"])
    return code, printed.getvalue(), out, layout


@pytest.mark.slow
def test_a_testing_clip_without_labels_is_scored_as_a_negative(run):
    code, printed, out, layout = run
    assert code == 0, printed
    results = json.loads((out / "results.json").read_text())
    assert results["dataset"]["test_clips_scored"] == 4
    scores = json.loads(next((out / "evaluation").rglob("gated_crnn_mean.json")).read_text())  # seed folder or not
    assert scores["sed"]["n_files"] == 4  # the negative clip is one of the evaluated clips
    assert scores["at"]["fp"] >= 1  # CVSSP's rule always tags a clip: the negative's tag is a false positive


@pytest.mark.slow
def test_missing_clips_name_the_expected_and_the_found_file_before_training(run):
    code, printed, out, layout = run
    lines = printed.splitlines()
    expected, found = layout["renamed"][0]
    warning = next(i for i, line in enumerate(lines) if line.startswith("[features] training: warning: "))
    assert "more than half of the clips are missing: 5 of 8 clips have no audio file" in lines[warning]
    assert f"{expected} was expected but {found} was found" in lines[warning], lines[warning]
    assert warning < next(i for i, line in enumerate(lines) if line.startswith("[train]"))
    assert not any(line.startswith("[features] testing: warning") for line in lines)


@pytest.mark.slow
def test_results_md_counts_missing_training_clips_and_no_synthetic_clip_count(run):
    code, printed, out, layout = run
    md = (out / "results.md").read_text()
    assert "3 training clips, 4 testing clips scored" in md
    assert "(5 training clips without usable audio are left out)" in md
    assert "144" not in md


def test_sed_truth_listing_a_clip_without_events_scores_it(reference_dir, tmp_path, capsys):
    """`devinet evaluate sed`: a clip listed by name alone in the strong ground truth is a valid
    negative; frame probabilities for it are scored (their events are insertions), not refused."""
    genuine = reference_dir / "dcase2017_task4" / "meta" / "groundtruth_strong_label_testing_set.csv"
    keys, frames = E.read_sed_probabilities(reference_dir / "cvssp_predictions" / "sed_prob_mat_list.csv.gz")
    negative = keys[0]
    truth = tmp_path / "strong.csv"
    kept = [line for line in genuine.read_text().splitlines() if clip_key(line.split("\t")[0]) != negative]
    truth.write_text("\n".join([f"{negative}.wav", *kept]) + "\n")
    assert negative in read_listed_clips(truth)
    code = main(["evaluate", "sed", "--pred", str(reference_dir / "cvssp_predictions" / "sed_prob_mat_list.csv.gz"),
                 "--truth", str(truth), "--json", str(tmp_path / "sed.json")])
    assert code == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "sed.json").read_text())["n_files"] == len(keys)
