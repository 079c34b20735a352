"""Voice activity detection with DeviNet in pyannote.audio 4, trained on speech synthesised offline.

Prerequisite: the environment made by ``bash scripts/install_pyannote_cpu.sh`` (it installs
espeak-ng, which speaks the test material, and the FFmpeg libraries pyannote decodes with).
Then, from the repository root::

    .venv-pyannote/bin/python examples/pyannote_vad.py                 # DeviNet, a few minutes on CPU
    .venv-pyannote/bin/python examples/pyannote_vad.py --model pyannet  # pyannote's PyanNet, same recipe

What it does, deterministically (corpus seed fixed, training seed ``--seed``):

1. synthesises a small corpus of 30-s, 16-kHz files: low background noise, English sentences
   spoken by espeak-ng (several voices, speeds and pitches) at known times, and non-speech
   distractors between them (noise bursts, steady tones, chords, sweeps, click trains); the
   training, development and test files use different sentences and voices;
2. writes it as a pyannote.database protocol (database.yml with .lst, .rttm and .uem files)
   and loads it through ``pyannote.database.registry``, as for any corpus;
3. trains ``VoiceActivityDetection`` (2-s chunks, batches of 32) for ``--epochs`` epochs;
4. runs pyannote's voice-activity pipeline on the test files (thresholds 0.5, no minimum
   durations) and scores it against the reference with pyannote.metrics.

Its last line is ``detection error rate: X.XXX``. Figures obtained: docs/pyannote.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "false")  # pyannote.audio 4 telemetry: off

SAMPLE_RATE = 16000
FILE_SECONDS = 30.0
CORPUS_SEED = 2017
CHUNK_SECONDS = 2.0
BATCH_SIZE = 32
# Harvard sentences (IEEE 1969), one disjoint group per subset.
SENTENCES = {
    "train": [
        "The birch canoe slid on the smooth planks.", "Glue the sheet to the dark blue background.",
        "It's easy to tell the depth of a well.", "These days a chicken leg is a rare dish.",
        "Rice is often served in round bowls.", "The juice of lemons makes fine punch.",
        "The box was thrown beside the parked truck.", "The hogs were fed chopped corn and garbage.",
        "Four hours of steady work faced us.", "A large size in stockings is hard to sell.",
        "The boy was there when the sun rose.", "A rod is used to catch pink salmon.",
        "The source of the huge river is the clear spring.", "Kick the ball straight and follow through.",
        "Help the woman get back to her feet.", "A pot of tea helps to pass the evening.",
        "Smoky fires lack flame and heat.", "The soft cushion broke the man's fall.",
        "The salt breeze came across from the sea.", "The girl at the booth sold fifty bonds.",
        "The small pup gnawed a hole in the sock.", "The fish twisted and turned on the bent hook.",
        "Press the pants and sew a button on the vest.", "The swan dive was far short of perfect.",
    ],
    "development": [
        "The beauty of the view stunned the young boy.", "Two blue fish swam in the tank.",
        "Her purse was full of useless trash.", "The colt reared and threw the tall rider.",
    ],
    "test": [
        "It snowed, rained, and hailed the same morning.", "Read verse out loud for pleasure.",
        "Hoist the load to your left shoulder.", "Take the winding path to reach the lake.",
        "Note closely the size of the gas tank.", "Wipe the grease off his dirty face.",
        "Mend the coat before you go out.", "The wrist was badly strained and hung limp.",
    ],
}
VOICES = {  # espeak-ng voice+variant
    "train": ["en-us+m1", "en-us+f2", "en+m3", "en-gb+f1", "en-029+m2", "en-gb-scotland+f4", "en-us+m6"],
    "development": ["en-gb-x-rp+m4", "en+f5"],
    "test": ["en-gb-x-gbclan+m5", "en-us+f3", "en+m7"],
}
NUM_FILES = {"train": 16, "development": 2, "test": 4}


def fail(message: str) -> None:
    print(f"pyannote_vad.py: error: {message}", file=sys.stderr)
    sys.exit(1)


# ---------------------------------------------------------------------------------------------- corpus
def speak(text: str, voice: str, speed: int, pitch: int) -> np.ndarray:
    """espeak-ng's rendering of ``text`` at 16 kHz, silence trimmed, peak 1."""
    from scipy.io import wavfile
    from scipy.signal import resample_poly

    with tempfile.TemporaryDirectory(prefix="espeak_") as folder:
        path = Path(folder) / "utterance.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(path), text],
                       check=True, capture_output=True)
        rate, pcm = wavfile.read(path)
    speech = resample_poly(pcm.astype(np.float64), SAMPLE_RATE, rate)
    loud = np.flatnonzero(np.abs(speech) > 0.02 * np.abs(speech).max())
    speech = speech[loud[0]:loud[-1] + 1]
    return speech / np.abs(speech).max()


def distractor(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """A non-speech sound, peak 1: a noise burst, a tone, a chord, a sweep or a click train."""
    from scipy.signal import chirp, lfilter

    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    kind = rng.integers(5)
    if kind == 0:  # white, or low-passed ("brown-ish") noise
        sound = rng.standard_normal(t.size)
        if rng.random() < 0.5:
            sound = lfilter([1.0], [1.0, -0.97], sound)
    elif kind == 1:
        sound = np.sin(2 * np.pi * rng.uniform(150, 3000) * t)
    elif kind == 2:  # a major chord with a slow tremolo (music-like)
        root = rng.uniform(110, 440)
        sound = sum(np.sin(2 * np.pi * root * r * t) for r in (1.0, 1.26, 1.5)) * (1 + 0.3 * np.sin(2 * np.pi * 3 * t))
    elif kind == 3:
        sound = chirp(t, f0=rng.uniform(100, 500), t1=t[-1], f1=rng.uniform(1000, 6000))
    else:  # clicks at a voice-like rate
        sound = np.zeros(t.size)
        sound[:: int(SAMPLE_RATE / rng.uniform(80, 250))] = 1.0
    ramp = np.minimum(1.0, np.minimum(t, t[-1] - t) / 0.02)  # 20-ms fades
    sound = sound * ramp
    return sound / np.abs(sound).max()


@dataclass
class SynthesisedFile:
    uri: str
    subset: str
    speech: list[tuple[float, float, str]]  # (start, end, voice)


def synthesise_file(rng: np.random.Generator, uri: str, subset: str, audio_dir: Path) -> SynthesisedFile:
    """One 30-s file: background noise, then utterances (55 %) and distractors in random order, 0.3-1.5 s apart."""
    from scipy.io import wavfile

    signal = 10 ** rng.uniform(-3.0, -2.0) * rng.standard_normal(int(FILE_SECONDS * SAMPLE_RATE))
    speech, cursor = [], rng.uniform(0.2, 1.5)
    while True:
        if rng.random() < 0.55:
            voice = str(rng.choice(VOICES[subset]))
            text = str(rng.choice(SENTENCES[subset]))
            sound = speak(text, voice, int(rng.integers(130, 200)), int(rng.integers(25, 75)))
        else:
            voice, sound = None, distractor(rng, rng.uniform(0.5, 3.0))
        start = int(cursor * SAMPLE_RATE)
        if start + sound.size > signal.size:
            break
        signal[start:start + sound.size] += 10 ** rng.uniform(-1.2, -0.3) * sound
        if voice is not None:
            speech.append((start / SAMPLE_RATE, (start + sound.size) / SAMPLE_RATE, voice))
        cursor = (start + sound.size) / SAMPLE_RATE + rng.uniform(0.3, 1.5)
    pcm = np.clip(signal * 32767, -32768, 32767).astype(np.int16)
    wavfile.write(audio_dir / f"{uri}.wav", SAMPLE_RATE, pcm)
    return SynthesisedFile(uri, subset, speech)


def write_protocol(files: list[SynthesisedFile], root: Path) -> Path:
    """database.yml with one .lst, .rttm and .uem per subset: the SynthVAD.SpeakerDiarization.Espeak protocol."""
    entries = []
    for subset in NUM_FILES:
        chosen = [f for f in files if f.subset == subset]
        (root / f"{subset}.lst").write_text("".join(f"{f.uri}\n" for f in chosen))
        (root / f"{subset}.uem").write_text("".join(f"{f.uri} 1 0.000 {FILE_SECONDS:.3f}\n" for f in chosen))
        (root / f"{subset}.rttm").write_text("".join(
            f"SPEAKER {f.uri} 1 {start:.3f} {end - start:.3f} <NA> <NA> {voice} <NA> <NA>\n"
            for f in chosen for start, end, voice in f.speech))
        entries.append(f"        {subset}:\n          uri: {subset}.lst\n          annotation: {subset}.rttm\n"
                       f"          annotated: {subset}.uem\n")
    database_yml = root / "database.yml"
    database_yml.write_text("Databases:\n  SynthVAD: audio/{uri}.wav\nProtocols:\n  SynthVAD:\n"
                            "    SpeakerDiarization:\n      Espeak:\n        scope: file\n" + "".join(entries))
    return database_yml


def make_corpus(root: Path) -> Path:
    """Synthesise every file (same corpus for every run) and return the protocol's database.yml."""
    rng = np.random.default_rng(CORPUS_SEED)
    audio_dir = root / "audio"
    audio_dir.mkdir(parents=True, exist_ok=True)
    files = [synthesise_file(rng, f"{subset}_{i:02d}", subset, audio_dir)
             for subset, count in NUM_FILES.items() for i in range(count)]
    for subset in NUM_FILES:
        chosen = [f for f in files if f.subset == subset]
        seconds = sum(end - start for f in chosen for start, end, _ in f.speech)
        print(f"corpus: {subset}: {len(chosen)} files of {FILE_SECONDS:.0f} s, "
              f"{sum(len(f.speech) for f in chosen)} utterances, speech {seconds / (len(chosen) * FILE_SECONDS):.0%}")
    return write_protocol(files, root)


# ---------------------------------------------------------------------------------------------- training
def build_model(args: argparse.Namespace, task):
    if args.fine_tune:
        from pyannote.audio import Model

        model = Model.from_pretrained(args.fine_tune)  # unpickles: only checkpoints you trust
        model.task = task
        return model
    if args.model == "pyannet":
        from pyannote.audio.models.segmentation import PyanNet

        return PyanNet(task=task)
    from devinet.integrations.pyannote import DeviNetSegmentation

    # A few minutes of training: PyTorch's BatchNorm momentum (not Keras's 0.01, the default), so that
    # the running statistics used by validation and inference follow the weights (docs/pyannote.md).
    if args.seed_config:
        return DeviNetSegmentation(bn_momentum=args.bn_momentum, task=task)
    return DeviNetSegmentation(conv_channels=args.conv_channels, recurrent=[args.recurrent],
                               bn_momentum=args.bn_momentum, task=task)


def progress_callback():
    """A Lightning callback printing one line per epoch and timing the training steps."""
    from lightning.pytorch.callbacks import Callback

    class EpochLines(Callback):
        def __init__(self):
            self.step_seconds, self.losses, self.started = [], [], time.perf_counter()

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.step_started = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.step_seconds.append(time.perf_counter() - self.step_started)
            self.losses.append(float(outputs["loss"]))

        def on_validation_epoch_end(self, trainer, pl_module):
            if trainer.sanity_checking:
                return
            metrics = "".join(f", development {k} {float(v):.3f}" for k, v in sorted(trainer.callback_metrics.items())
                              if not k.startswith("loss"))
            print(f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}: training loss "
                  f"{np.mean(self.losses):.3f}{metrics} ({time.perf_counter() - self.started:.0f} s)", flush=True)
            self.losses.clear()

    return EpochLines()


def train(args: argparse.Namespace, protocol):
    import lightning
    from pyannote.audio.tasks import VoiceActivityDetection

    lightning.seed_everything(args.seed, workers=True, verbose=False)
    task = VoiceActivityDetection(protocol, duration=CHUNK_SECONDS, batch_size=BATCH_SIZE, num_workers=0)
    model = build_model(args, task)
    progress = progress_callback()
    trainer = lightning.Trainer(max_epochs=args.epochs, accelerator="cpu", devices=1, deterministic=True,
                                logger=False, enable_checkpointing=False, enable_progress_bar=False,
                                enable_model_summary=False, default_root_dir=args.workdir,
                                callbacks=[progress])
    trainer.fit(model)
    steps = np.array(progress.step_seconds[1:])  # the first step also builds the model
    parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"model: {type(model).__name__}, {parameters} parameters, {trainer.global_step} steps, "
          f"{np.median(steps):.2f} s per step (median, batch {BATCH_SIZE} x {CHUNK_SECONDS:.0f} s)")
    if args.save:
        from devinet._io import atomic_path

        with atomic_path(args.save) as partial:  # no half-written checkpoint if interrupted
            trainer.save_checkpoint(partial)
        print(f"checkpoint: {args.save}")
    return model


# ---------------------------------------------------------------------------------------------- scoring
def detection_error_rate(model, protocol) -> float:
    """Run the voice-activity pipeline over the test files and score it against the reference."""
    from pyannote.audio.pipelines import VoiceActivityDetection as VoiceActivityPipeline
    from pyannote.metrics.detection import DER_FALSE_ALARM, DER_MISS, DER_TOTAL, DetectionErrorRate

    model.eval()
    pipeline = VoiceActivityPipeline(segmentation=model, batch_size=BATCH_SIZE)
    pipeline.instantiate({"onset": 0.5, "offset": 0.5, "min_duration_on": 0.0, "min_duration_off": 0.0})
    metric = DetectionErrorRate(collar=0.0, skip_overlap=False)
    for file in protocol.test():
        metric(file["annotation"], pipeline(file), uem=file["annotated"])
    totals = metric.accumulated_
    print(f"test: {totals[DER_TOTAL]:.1f} s of speech, {totals[DER_MISS]:.1f} s missed, "
          f"{totals[DER_FALSE_ALARM]:.1f} s false alarm")
    return abs(metric)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("devinet", "pyannet"), default="devinet")
    parser.add_argument("--conv-channels", type=int, default=32, help="DeviNet's conv_channels (default 32)")
    parser.add_argument("--recurrent", type=int, default=32, help="DeviNet's BiGRU size (default 32)")
    parser.add_argument("--seed-config", action="store_true",
                        help="train DeviNet with the seed's configuration (conv_channels 128, recurrent [128])")
    parser.add_argument("--bn-momentum", type=float, default=0.1,
                        help="DeviNet's BatchNorm momentum (default 0.1; DeviNetSegmentation's own is 0.01)")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0, help="training seed (the corpus is always the same)")
    parser.add_argument("--fine-tune", type=Path, metavar="CKPT", help="start from this (trusted) checkpoint")
    parser.add_argument("--save", type=Path, metavar="CKPT", help="save the trained model here")
    parser.add_argument("--workdir", type=Path, help="keep the corpus here (default: a temporary folder)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        import devinet.integrations.pyannote  # noqa: F401  (one line saying why pyannote.audio is unusable)
    except ImportError as exc:
        fail(str(exc))
    if shutil.which("espeak-ng") is None:
        fail("espeak-ng not found: run bash scripts/install_pyannote_cpu.sh (it installs espeak-ng)")
    if args.fine_tune is not None and not args.fine_tune.is_file():
        fail(f"{args.fine_tune}: no such checkpoint")
    from pyannote.database import FileFinder, registry

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="pyannote_vad_") as scratch:
        args.workdir = args.workdir or Path(scratch)
        registry.load_database(make_corpus(args.workdir))
        protocol = registry.get_protocol("SynthVAD.SpeakerDiarization.Espeak", preprocessors={"audio": FileFinder()})
        model = train(args, protocol)
        rate = detection_error_rate(model, protocol)
    print(f"total time: {time.perf_counter() - started:.0f} s")
    print(f"detection error rate: {rate:.3f}")


if __name__ == "__main__":
    main()
