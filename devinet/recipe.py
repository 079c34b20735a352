"""The constants of the original CVSSP recipe: features, classes and post-processing.

Plain Python with no imports, so that command-line modules can show them as defaults
without importing numpy or torch. Everything else (``devinet.features``,
``devinet.postprocessing``, checkpoints' self-description, the evaluation) reads them here.
"""

#: sample rate of the features (config.sample_rate of the original)
SAMPLE_RATE = 16000
#: STFT window length (config.n_window)
N_FFT = 1024
#: window overlap (config.n_overlap); chosen so that a 10-s clip gives 240 frames
N_OVERLAP = 360
#: hop between frames: N_FFT - N_OVERLAP samples
HOP = N_FFT - N_OVERLAP
#: seconds from one frame to the next: 664 / 16000 = 0.0415 s
FRAME_STEP_SEC = HOP / SAMPLE_RATE
#: mel bands and their frequency range
N_MELS = 64
FMIN = 0.0
FMAX = 8000.0
#: frames of a clip (config.max_len): features are zero-padded or truncated to it (10 s)
FRAMES = 240
#: added before the log (log(x + 1e-8))
LOG_OFFSET = 1e-8

#: CVSSP's decision threshold, the same for every class (AT tags and SED frames)
DEFAULT_THRESHOLD = 0.3
#: CVSSP's smoothing: bridge gaps of up to this many frames (difference of frame indices)
DEFAULT_N_SMOOTH = 10
#: CVSSP's smoothing: drop runs of this many frames or fewer
DEFAULT_N_SALT = 10

#: The 17 labels of DCASE 2017 Task 4 in the official order (the order of the original CVSSP config).
DCASE2017_CLASSES: tuple[str, ...] = (
    "Train horn",
    "Air horn, truck horn",
    "Car alarm",
    "Reversing beeps",
    "Bicycle",
    "Skateboard",
    "Ambulance (siren)",
    "Fire engine, fire truck (siren)",
    "Civil defense siren",
    "Police car (siren)",
    "Screaming",
    "Car",
    "Car passing by",
    "Bus",
    "Truck",
    "Motorcycle",
    "Train",
)
