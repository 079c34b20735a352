"""Tag audio files and detect their sound events with devinet checkpoints (one, or several fused).

AUDIO is any number of sound files and folders (their audio files; with --recursive, those of
their sub-folders too). --model takes self-describing checkpoints (``devinet convert ...
--scaler``, or those of ``devinet reproduce``) and model lists (``OUT/models/seed<seed>/<system>.json``
of ``devinet reproduce``); several are fused. Written into --out, atomically:

- ``tags.tsv``: the DCASE 2017 Task 4 subtask A submission, ``name<TAB>start<TAB>end<TAB>label``
  per tag (start 0 and end the file's duration: a tag is about the whole file);
- ``events.tsv``: the subtask B submission, ``name<TAB>onset<TAB>offset<TAB>label`` per event,
  in seconds from the file's start;
- ``results.json``: ``{"files": {PATH: {"duration", "tags", "events", "error"}}, "model": {...}}``;
- with --plot, ``plots/<file name>.png`` per file: log-mel, frame probabilities, events.

Names in the TSV files are the paths of results.json: as given on the command line, or a
folder's path as given joined with the file's path inside it (a TAB, CR or LF in a path is
written as \\t, \\r, \\n); a file without tags or events is listed by its name alone. A file
that cannot be read is reported on stderr (one line) and in results.json with its error,
the others are tagged, and the exit status is 1.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

HELP = "tag audio files and detect their sound events"

#: file name suffixes of audio files looked for in folders (what soundfile/libsndfile reads)
AUDIO_SUFFIXES = frozenset({".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".aifc",
                            ".au", ".snd", ".caf", ".w64", ".rf64"})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("audio", nargs="+", metavar="AUDIO", help="sound files (wav, flac, ogg, mp3, ...) and folders")
    parser.add_argument("--model", action="append", required=True, metavar="CKPT",
                        help="a self-describing devinet checkpoint or a model list of devinet reproduce "
                             "(OUT/models/seed<seed>/<system>.json); repeat it to fuse several (probabilities "
                             "averaged)")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for tags.tsv, events.tsv, results.json")
    parser.add_argument("--recursive", action="store_true", help="also take the audio files of sub-folders")
    parser.add_argument("--threshold", type=float, default=None, metavar="T",
                        help="decision threshold of tags and events (default: the checkpoint's, CVSSP's 0.3)")
    parser.add_argument("--hop", type=float, default=5.0, metavar="S",
                        help="seconds between the starts of the 10-s windows of longer files (default 5)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the models run (default cpu)")
    parser.add_argument("--plot", action="store_true", help="also draw plots/<file>.png per file")
    parser.add_argument("--batch-size", type=int, default=16, metavar="N",
                        help="windows per forward pass (default 16, devinet.tagging.DEFAULT_BATCH_SIZE)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def find_audio(arguments: list[str], recursive: bool) -> list[str]:
    """The files to tag, in order: files as given, each folder's audio files sorted by path;
    a path that does not exist is kept (it is reported as an error like an unreadable file)."""
    found: dict[str, None] = {}
    for argument in arguments:
        if not os.path.isdir(argument):
            found.setdefault(argument)
            continue
        inside = []
        for folder, subfolders, names in os.walk(argument):
            subfolders.sort()
            if not recursive:
                subfolders.clear()
            inside += [os.path.join(folder, name) for name in names if Path(name).suffix.lower() in AUDIO_SUFFIXES]
        for path in sorted(inside):
            found.setdefault(path)
    return list(found)


def run(args: argparse.Namespace) -> int:
    import torch

    from devinet._io import atomic_write_json
    from devinet.errors import ConfigError, DevinetError, FileFormatError, MissingDependencyError, one_line
    from devinet.submission import escape_name, write_submission
    from devinet.tagging import Tagger

    try:
        from tqdm.auto import tqdm
    except ImportError:
        raise MissingDependencyError("tqdm (the progress bar)", "features") from None
    if args.device == "cuda" and not torch.cuda.is_available():
        raise DevinetError("--device cuda: CUDA is not available here (torch.cuda.is_available() is False)")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {args.batch_size}")
    files = find_audio(args.audio, args.recursive)
    if not files:
        raise ConfigError(f"no audio file in {', '.join(args.audio)}"
                          + ("" if args.recursive else " (use --recursive for sub-folders)"))
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise FileFormatError(out, "--out must be a folder")
    tagger = Tagger.from_checkpoint(args.model, device=args.device, hop=args.hop, threshold=args.threshold,
                                    batch_size=args.batch_size)
    out.mkdir(parents=True, exist_ok=True)
    plots = _plot_names(files) if args.plot else {}
    if plots:
        (out / "plots").mkdir(exist_ok=True)
    entries: dict[str, dict] = {}
    with tqdm(total=len(files), unit="file", desc="tag", disable=not args.progress, file=sys.stderr) as bar:
        for path, outcome in tagger.tag_files(files, keep_logmel=args.plot):
            if isinstance(outcome, DevinetError):
                problem = getattr(outcome, "problem", None) or str(outcome)
                bar.write(f"devinet tag: error: {one_line(str(outcome))}", file=sys.stderr)
                entries[path] = {"duration": None, "tags": [], "events": [], "error": one_line(problem)}
            else:
                entries[path] = outcome.to_dict()
                if args.plot:
                    from devinet.tag_plot import plot_tagging

                    plot_tagging(outcome, out / "plots" / plots[path], title=path, threshold=tagger.threshold)
            bar.update()
    tagged = [path for path, entry in entries.items() if entry["error"] is None]
    names = {path: escape_name(path) for path in tagged}
    write_submission(out / "tags.tsv", [(names[p], 0.0, entries[p]["duration"], t["label"])
                                        for p in tagged for t in entries[p]["tags"]], listed=list(names.values()))
    write_submission(out / "events.tsv", [(names[p], e["onset"], e["offset"], e["label"])
                                          for p in tagged for e in entries[p]["events"]], listed=list(names.values()))
    atomic_write_json(out / "results.json", {"files": entries, "model": tagger.describe()})
    failed = len(entries) - len(tagged)
    print(f"tagged {len(tagged)} of {len(entries)} files -> {out / 'tags.tsv'}, {out / 'events.tsv'}, "
          f"{out / 'results.json'}" + (f", {out / 'plots'}" if plots else "")
          + (f"; {failed} could not be read" if failed else ""))
    return 1 if failed else 0


def _plot_names(files: list[str]) -> dict[str, str]:
    """A PNG name per file: its file name plus .png, numbered when two files share a name."""
    names: dict[str, str] = {}
    used: set[str] = set()
    for path in files:
        base = os.path.basename(path.rstrip("/\\")) or "audio"
        name, number = f"{base}.png", 1
        while name in used:
            number += 1
            name = f"{base}.{number}.png"
        used.add(name)
        names[path] = name
    return names
