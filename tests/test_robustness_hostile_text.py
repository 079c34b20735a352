"""Hostile metadata, ground-truth, prediction and submission files (issue 22), built from genuine ones.

Each case copies a genuine file (the official DCASE 2017 Task 4 metadata, CVSSP's real
predictions) and adds the hostile line, then runs ``devinet evaluate`` or ``devinet features``:
exit status 1, exactly one stderr line naming the file and the problem, no traceback, no output
file. Case ids start with the issue's class: ``c1`` unbounded reads (a line of unbounded length,
also inside gzip; an event time of 1e12 s), ``c8`` input claiming the impossible (NaN or
infinite times, a clip named ``..._nan_inf``, an event after the end of its clip). Those that
would take gigabytes run in a child process under an address-space limit.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Callable

import pytest

from devinet import limits
from devinet.cli import main

GiB = 1 << 30
MEMORY_LIMIT = 2 * GiB  # `devinet evaluate` peaks at about 0.85 GB of address space on genuine files
META = Path("dcase2017_task4") / "meta"
WEAK = META / "groundtruth_weak_label_testing_set.csv"
STRONG = META / "groundtruth_strong_label_testing_set.csv"
TRAIN_LIST = META / "training_set.csv"
AT_PROBS = Path("cvssp_predictions") / "at_prob_mat.csv.gz"
CLIP = "-5QrBL6MzLg_60.000_70.000"  # a testing clip of the genuine files (10 s)
LONG = "0" * (limits.MAX_LINE_CHARS + 1000)


def cli(argv: list, capsys) -> tuple[int, str, list[str]]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err.splitlines()


def _text(path: Path) -> str:
    return (gzip.open(path, "rt") if path.suffix == ".gz" else open(path)).read()


def _genuine_plus(base: Path, line: str, where: str = "end", gzipped: bool = False) -> Callable[[Path, Path], None]:
    """A copy of the genuine file ``base`` with ``line`` added at its start or end."""
    def make(reference: Path, path: Path) -> None:
        text = _text(reference / base)
        text = text + line + "\n" if where == "end" else line + "\n" + text
        if gzipped:
            with gzip.open(path, "wt") as handle:
                handle.write(text)
        else:
            path.write_text(text)
    return make


def _submission_from_truth(line: str) -> Callable[[Path, Path], None]:
    """An SED submission: the genuine strong ground truth itself (a perfect system), plus ``line``."""
    return _genuine_plus(STRONG, line)


#: case id -> (command, which file is hostile ('pred', 'truth' or 'meta'), file name, maker, problem);
#: those that would take gigabytes are in AMPLIFYING, run under a memory limit
CASES = {
    "c1-line_of_66k_chars_in_predictions": ("at", "pred", "at_prob_mat.csv",
                                            _genuine_plus(AT_PROBS, f"{CLIP}.wav\t{LONG}", "start"),
                                            f"line 1 is longer than {limits.MAX_LINE_CHARS:,} characters"),
    "c1-line_of_66k_chars_in_gzip_predictions": ("at", "pred", "at_prob_mat.csv.gz",
                                                 _genuine_plus(AT_PROBS, f"{CLIP}.wav\t{LONG}", "start", True),
                                                 "line 1 is longer than"),
    "c1-line_of_66k_chars_in_the_ground_truth": ("at", "truth", "weak.csv", _genuine_plus(WEAK, LONG),
                                                 "is longer than"),
    "c1-line_of_66k_chars_in_a_clip_list": ("features", "meta", "training_set.csv", _genuine_plus(TRAIN_LIST, LONG),
                                            "is longer than"),
    "c8-event_after_the_clip_in_a_submission": ("sed", "pred", "submission.csv",
                                                _submission_from_truth(f"{CLIP}.wav\t9.5\t10.5\tTrain horn"),
                                                "ends at 10.5 s, after the clip's 10 s"),
    "c8-infinite_offset_in_a_submission": ("sed", "pred", "submission.csv",
                                           _submission_from_truth(f"{CLIP}.wav\t0\tinf\tTrain horn"),
                                           "must satisfy 0 <= onset <= offset"),
    "c8-clip_named_nan_inf_in_the_truth": ("sed", "truth", "strong.csv",
                                           _genuine_plus(STRONG, "Y-5QrBL6MzLg_nan_inf.wav\t0\t1\tTrain horn"),
                                           "'nan' is not a time in seconds"),
    "c8-clip_named_nan_inf_in_a_submission": ("sed", "pred", "submission.csv",
                                              _submission_from_truth("Y-5QrBL6MzLg_nan_inf.wav\t0\t1\tTrain horn"),
                                              "'nan' is not a time in seconds"),
    "c8-nan_times_in_the_weak_truth": ("at", "truth", "weak.csv",
                                       _genuine_plus(WEAK, f"{CLIP}.wav\tnan\tnan\tTrain horn"),
                                       "must satisfy 0 <= start <= end"),
    "c8-infinite_times_in_an_at_submission": ("at", "pred", "submission.csv",
                                              _genuine_plus(WEAK, f"{CLIP}.wav\t-inf\tinf\tTrain horn"),
                                              "expected name<TAB>start<TAB>end<TAB>label"),
    "c8-nan_probability": ("at", "pred", "at_prob_mat.csv",
                           _genuine_plus(AT_PROBS, "Yzzzzzzzzzzz_0.000_10.000.wav\t"
                                         + "\t".join(["nan"] + ["0.5"] * 16), "start"),
                           "probability nan of class 1 is outside [0, 1]"),
    "c8-infinite_start_in_a_clip_list": ("features", "meta", "training_set.csv",
                                         _genuine_plus(TRAIN_LIST, 'abcdefghijk,inf,10.000,"Train","/m/07jdr"'),
                                         "bad youtube_id/start/end"),
}


def _argv(command: str, files: dict[str, Path], out: Path) -> list:
    if command == "features":
        return ["features", "--wav-dir", files["wav"], "--meta", files["meta"], "--out", out / "features.h5"]
    return ["evaluate", command, "--pred", files["pred"], "--truth", files["truth"], "--json", out / "scores.json"]


def _files(reference: Path, tmp_path: Path, command: str, hostile: str, name: str, make) -> dict[str, Path]:
    """The command's input files: the hostile one built, the others genuine."""
    files = {"pred": reference / AT_PROBS, "truth": reference / (STRONG if command == "sed" else WEAK),
             "wav": tmp_path / "wav"}
    files["wav"].mkdir()
    files[hostile] = tmp_path / name
    make(reference, files[hostile])
    return files


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_text_file_is_refused_in_one_line(case, reference_dir, tmp_path, capsys):
    command, hostile, name, make, problem = CASES[case]
    files = _files(reference_dir, tmp_path, command, hostile, name, make)
    out = tmp_path / "out"
    out.mkdir()
    code, stdout, err = cli(_argv(command, files, out), capsys)
    assert code == 1, err
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert err[0].startswith(f"devinet {_argv(command, files, out)[0]}: error: {files[hostile]}: "), err
    assert problem in err[0], err
    assert stdout == "" and sorted(p.name for p in out.iterdir()) == []


def test_the_genuine_bases_are_accepted(reference_dir, tmp_path, capsys):
    """The controls: the genuine files every case starts from score, so each refusal is the added line's."""
    perfect = tmp_path / "submission.csv"
    _submission_from_truth("")(reference_dir, perfect)
    code, _, err = cli(["evaluate", "sed", "--pred", perfect, "--truth", reference_dir / STRONG], capsys)
    assert code == 0 and err == [], err
    code, _, err = cli(["evaluate", "at", "--pred", reference_dir / AT_PROBS, "--truth", reference_dir / WEAK], capsys)
    assert code == 0 and err == []


# ---------------------------------------------------------------------- under a memory limit
def _gzip_line(characters: int) -> Callable[[Path, Path], None]:
    """A gzip file holding one line of ``characters`` digits: 1-MiB gzip members, concatenated (gzip
    reads them as one stream), so a few MB on disk inflate to GB."""
    def make(reference: Path, path: Path) -> None:
        member = gzip.compress(b"0" * (1 << 20), compresslevel=9)
        path.write_bytes(gzip.compress(f"{CLIP}.wav\t".encode()) + member * (characters >> 20))
    return make


AMPLIFYING = {
    "c1-gzip_line_of_2_GiB": ("at", "pred", "at_prob_mat.csv.gz", _gzip_line(2 * GiB), "line 1 is longer than"),
    "c1-event_at_1e12_s_in_a_submission": ("sed", "pred", "submission.csv",
                                           _submission_from_truth(f"{CLIP}.wav\t0.5\t1e12\tTrain horn"),
                                           f"clip {CLIP}: event 'Train horn' ends at 1e+12 s, after the clip's 10 s"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(AMPLIFYING))
def test_amplifying_text_file_is_refused_within_a_memory_limit(case, reference_dir, tmp_path, limited_devinet):
    """A line of 2 GiB inflated from 4 MB of gzip, or an event of 1e12 s (sed_eval would allocate
    for every second of it), refused in one line under a 2 GiB address-space limit, with a peak
    resident memory under 1 GiB."""
    command, hostile, name, make, problem = AMPLIFYING[case]
    files = _files(reference_dir, tmp_path, command, hostile, name, make)
    assert files[hostile].stat().st_size < 8 << 20
    out = tmp_path / "out"
    out.mkdir()
    code, _, err, peak = limited_devinet("memory", MEMORY_LIMIT, _argv(command, files, out))
    assert code == 1 and len(err) == 1, err
    assert err[0].startswith(f"devinet evaluate: error: {files[hostile]}: ") and problem in err[0], err
    assert peak is not None and peak < GiB, peak
    assert sorted(p.name for p in out.iterdir()) == []
