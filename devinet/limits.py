"""The largest inputs devinet accepts: one definition of each limit, checked before allocating.

Every reader compares what a file *declares* (a dataset's shape, an archive member's
uncompressed size, an audio header's rate and length) with these limits before it reads
or allocates anything, and refuses the rest in one line naming the file. The limits are
derived from what the model family can hold and from the sizes of the real data; how each
was chosen is stated beside it and in docs/guarantees.md.
"""

from __future__ import annotations

# ---------------------------------------------------------------------- model files
#: elements of one weight (HDF5 dataset). The largest weight of the published models is the
#: final convolution, 3 x 3 x 64 x 256 = 147,456 elements; 2**22 is 28 times that and holds a
#: frame-wise head of 256 x 16,384 classes.
MAX_WEIGHT_ELEMENTS = 2**22

#: elements of all weights of one model file together. The published models hold 1,190,851
#: (crnn_sed); 2**24 is 14 times that.
MAX_MODEL_ELEMENTS = 2**24

#: layers listed in one model file. The published models list 63 to 65 (the intended 8-block
#: models a few more); 1,000 leaves room for any model of the family and refuses a listing
#: that repeats names to make the reader read the same weights again and again.
MAX_LAYERS = 1000

#: bytes of a model's JSON description (``config.json`` of a ``.keras`` archive, the
#: ``model_config`` attribute of a Keras 2 file). Those of the published models are 38,668
#: (Keras 3) and 50,540 (Keras 2, crnn_sed) bytes; 2**24 (16 MiB) is 330 times that.
MAX_CONFIG_BYTES = 2**24

#: uncompressed bytes of one member of a ``.keras`` archive: every weight the family can hold
#: in float64, plus 16 MiB for HDF5's own structures (the published ``model.weights.h5`` is
#: 4.9 MB). Checked on the size the archive declares, before inflating anything.
MAX_ARCHIVE_MEMBER_BYTES = 8 * MAX_MODEL_ELEMENTS + 2**24

# ---------------------------------------------------------------------- text files
#: characters of one line of a metadata, ground-truth, prediction or submission file (plain
#: or gzip). The longest line of the official metadata and of real CVSSP predictions has 187
#: characters; 65,536 is 350 times that and holds a probability line of 2,600 classes.
MAX_LINE_CHARS = 2**16

# ---------------------------------------------------------------------- audio
#: seconds of one clip (header duration, and the extent of a clip named <id>_<start>_<end>).
#: DCASE 2017 clips last 10 s and only their first 10 s are packed, but a clip is decoded
#: whole; 30 minutes is 180 times a DCASE clip.
MAX_CLIP_SECONDS = 1800.0

#: samples (frames x channels) decoded from one clip: a 30-minute 48-kHz stereo clip, which
#: decodes to 1.4 GB of float64. Higher rates or more channels are accepted for shorter clips.
MAX_DECODED_SAMPLES = int(MAX_CLIP_SECONDS * 48_000 * 2)

#: sample rates accepted, in Hz. The DCASE clips are 44.1 kHz; 8 kHz (telephone) is the
#: lowest rate of audio in common use and 4 kHz is half of it (below it the 64 mel bands up to
#: 8 kHz would be nearly all empty, and 1 Hz makes the resampler produce 16,000 outputs per
#: input sample); 768 kHz is twice the highest rate of studio converters (384 kHz). The
#: resampler divides by zero above 8,192,000 Hz.
MIN_SAMPLE_RATE = 4_000
MAX_SAMPLE_RATE = 768_000

