#!/usr/bin/env bash
# Install devinet with pyannote.audio 4 into a virtual environment on a CPU-only Linux machine.
#
#   bash scripts/install_pyannote_cpu.sh [VENV_DIR]      (default: .venv-pyannote in the repository root)
#
# Safe to rerun: every step checks what is already there. Non-interactive; as root or not
# (system packages then go through `sudo -n`). Steps:
#   1. system packages, only if missing (apt-get): the FFmpeg shared libraries torchcodec
#      decodes with, and espeak-ng, which examples/pyannote_vad.py speaks its test audio with;
#   2. the virtual environment (created if absent, else updated);
#   3. pip install torch==2.13.0 -e '.[pyannote]' pytest  (the extra pins torchcodec 0.13.0,
#      the newest release whose decoder links no CUDA library);
#   4. torchaudio (a pyannote.audio dependency) is a CUDA build on PyPI: with a CPU-only torch,
#      its compiled extension fails to load and `import pyannote.audio` with it. The extension
#      is optional (pyannote.audio uses only torchaudio's Python code), so its libraries that
#      link CUDA are removed;
#   5. a smoke check: import pyannote.audio and devinet.integrations.pyannote, decode a wav.
#
# Environment: PYTHON (interpreter for a new environment, default python3); pip's own
# variables apply (e.g. PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu where the
# index would otherwise serve torch's multi-GB CUDA build).
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV_DIR=${1:-$REPO_ROOT/.venv-pyannote}
PYTHON=${PYTHON:-python3}
TORCH_REQUIREMENT="torch==2.13.0"
# torchcodec loads libtorchcodec_core{4..8}.so, each linking one FFmpeg release's libraries
FFMPEG_LIBS=(avutil avcodec avformat avdevice avfilter swscale swresample)

log() { printf 'install_pyannote_cpu: %s\n' "$*"; }
die() { printf 'install_pyannote_cpu: error: %s\n' "$*" >&2; exit 1; }

usage() { sed -n '2,4p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
if [[ ${1:-} == -h || ${1:-} == --help ]]; then usage; exit 0; fi
if [[ $# -gt 1 || ${1:-} == -* ]]; then usage >&2; exit 1; fi

has_shared_lib() {
    local ldconfig
    ldconfig=$(command -v ldconfig || echo /sbin/ldconfig)
    "$ldconfig" -p 2>/dev/null | grep -q "lib$1\.so\.[0-9]"
}

# The apt packages to install: FFmpeg's libraries (through libavdeviceNN, which depends on the
# six others of its release) and espeak-ng, each only when missing.
missing_packages() {
    local lib
    for lib in "${FFMPEG_LIBS[@]}"; do
        if ! has_shared_lib "$lib"; then echo ffmpeg; break; fi
    done
    command -v espeak-ng >/dev/null || echo espeak-ng
    if [[ ! -x $VENV_DIR/bin/python ]] && ! "$PYTHON" -c 'import ensurepip' 2>/dev/null; then
        echo python3-venv
    fi
}

install_system_packages() {
    local missing sudo=() packages=() name
    missing=$(missing_packages)
    if [[ -z $missing ]]; then
        log "system packages: FFmpeg libraries and espeak-ng already present"
        return
    fi
    command -v apt-get >/dev/null \
        || die "missing $(echo $missing) and no apt-get: install FFmpeg 4-8 shared libraries and espeak-ng with your package manager, then rerun"
    if [[ $(id -u) -ne 0 ]]; then
        command -v sudo >/dev/null && sudo -n true 2>/dev/null \
            || die "missing $(echo $missing): rerun as root, or with password-less sudo, or have an administrator run: apt-get update && apt-get install -y --no-install-recommends libavdevice59 espeak-ng (the libavdevice of your release)"
        sudo=(sudo -n)
    fi
    log "apt-get update"
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
    for name in $missing; do
        if [[ $name == ffmpeg ]]; then
            # libavdevice58 (FFmpeg 4.4) ... libavdevice62 (FFmpeg 8): whichever this release ships
            name=$(apt-cache pkgnames libavdevice | grep -E '^libavdevice[0-9]+$' | sort -V | tail -n 1)
            [[ -n $name ]] || die "apt has no libavdevice package (FFmpeg's shared libraries)"
        fi
        packages+=("$name")
    done
    log "apt-get install ${packages[*]}"
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${packages[@]}"
}

create_or_update_venv() {
    if [[ -x $VENV_DIR/bin/python ]]; then
        log "virtual environment: updating $VENV_DIR"
    else
        log "virtual environment: creating $VENV_DIR"
        "$PYTHON" -m venv "$VENV_DIR"
        echo '*' > "$VENV_DIR/.gitignore"  # keeps a venv inside the clone out of git status
    fi
    # torch named on the command line: a bare `torch` requirement lets pip pick its CUDA build
    log "pip install $TORCH_REQUIREMENT -e '.[pyannote]' pytest"
    "$VENV_DIR/bin/python" -m pip install --quiet "$TORCH_REQUIREMENT" -e "$REPO_ROOT[pyannote]" pytest
}

# Step 4: with a CPU-only torch, delete the torchaudio libraries that link CUDA (found by
# their DT_NEEDED names, so renamed files are found too); with a CUDA torch, keep them.
remove_torchaudio_cuda_libraries() {
    "$VENV_DIR/bin/python" - <<'PY'
import importlib.util
from pathlib import Path

import torch

spec = importlib.util.find_spec("torchaudio")  # locates the package without running it
lib_dir = Path(spec.origin).parent / "lib"
if torch.version.cuda is not None:
    print("install_pyannote_cpu: torch is a CUDA build: torchaudio's extension is kept")
else:
    cuda_names = (b"libtorch_cuda.so", b"libc10_cuda.so", b"libcudart.so")
    removed = [p for p in sorted(lib_dir.glob("*.so*")) if any(n in p.read_bytes() for n in cuda_names)]
    for path in removed:
        path.unlink()
    left = ", ".join(p.name for p in sorted(lib_dir.glob("*.so*"))) or "none"
    print(f"install_pyannote_cpu: torchaudio libraries linking CUDA removed: "
          f"{', '.join(p.name for p in removed) or 'none (already done)'}; left: {left}")
PY
}

smoke_check() {
    log "smoke check"
    PYANNOTE_METRICS_ENABLED=false "$VENV_DIR/bin/python" - <<'PY'
import tempfile
import wave
from pathlib import Path

import numpy as np
import torch
import torchcodec
from torchcodec.decoders import AudioDecoder

import pyannote.audio
from pyannote.audio.core.io import Audio

import devinet
import devinet.integrations.pyannote  # noqa: F401  (the import guard checks pyannote.audio's version)

rate = 16000
tone = (0.5 * np.sin(2 * np.pi * 440 * np.arange(rate // 2) / rate) * 32767).astype("<i2")
with tempfile.TemporaryDirectory() as folder:
    path = Path(folder) / "tone.wav"
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(rate)
        handle.writeframes(tone.tobytes())
    decoded = AudioDecoder(str(path)).get_all_samples()
    waveform, sample_rate = Audio(sample_rate=rate, mono="downmix")(str(path))
assert decoded.sample_rate == sample_rate == rate, (decoded.sample_rate, sample_rate)
expected = torch.from_numpy(tone / 32768.0).float()[None]
for got in (decoded.data, waveform):
    assert got.shape == expected.shape, got.shape
    assert torch.allclose(got, expected, atol=1e-4), float((got - expected).abs().max())
print(f"install_pyannote_cpu: ok: torch {torch.__version__}, pyannote.audio {pyannote.audio.__version__}, "
      f"torchcodec {torchcodec.__version__}, devinet {devinet.__version__} from {Path(devinet.__file__).parent}")
PY
}

install_system_packages
create_or_update_venv
remove_torchaudio_cuda_libraries
smoke_check
log "done: activate with: source $VENV_DIR/bin/activate"
