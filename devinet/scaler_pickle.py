"""Read a pickled scikit-learn ``StandardScaler`` (the original CVSSP training's scaler) as plain data.

The original ``prepare_data.py calculate_scaler`` fitted ``sklearn.preprocessing.StandardScaler``
on the packed training features and saved it with ``pickle.dump(scaler, f)``: under Python 2
that is protocol 0 (``copy_reg._reconstructor``, ``sklearn.preprocessing.data.StandardScaler``,
numpy arrays rebuilt by ``numpy.core.multiarray._reconstruct`` with their bytes as latin-1
strings). Today's scikit-learn pickles the same attributes (``mean_``, ``var_``, ``scale_``,
``n_samples_seen_``, flags, ``_sklearn_version``) through ``NEWOBJ`` and, with protocol 5,
``numpy._core.numeric._frombuffer``.

:func:`read_standard_scaler` reads such a file with an allow-list unpickler: every global the
pickle names is looked up in :data:`ALLOWED`, and each allowed name resolves to a stand-in of
this module that rebuilds plain data (numeric numpy arrays from their bytes, numbers, strings);
scikit-learn is never imported, no class of the file is instantiated and no function it names
is called. Anything else (``os.system``, ``builtins.exec``, ...) stops the reading with a
:class:`~devinet.errors.FileFormatError` before it is ever reached.
"""

from __future__ import annotations

import io
import math
import os
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np

from .errors import FileFormatError

#: a scaler of 64 bins pickles to a few KB; anything far larger is not one
MAX_FILE_BYTES = 16 * 2 ** 20
#: elements of one array (a scaler's arrays hold one value per feature)
MAX_ELEMENTS = 2 ** 20

# numpy dtype codes a scaler's arrays and scalars use: bool, integers, floats (any byte order).
_DTYPE_CODE = re.compile(r"^[<>|=]?(b1|[iu][1248]|f[248])$")
_BYTE_ORDERS = frozenset("<>|=")


class _Refused(pickle.UnpicklingError):
    """What the unpickler refused, in one line."""


# ---------------------------------------------------------------------- stand-ins
class _ScalerState:
    """Stand-in for ``StandardScaler``: holds the attribute dict that the pickle's BUILD gives it."""

    def __init__(self) -> None:
        self.state: dict[str, Any] | None = None

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2 and state[1] is None:  # (dict, slots) form
            state = state[0]
        if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
            raise _Refused("the StandardScaler's state is not a dict of attributes")
        self.state = state


class _DType:
    """Stand-in for ``numpy.dtype(code, align, copy)``: a simple numeric code and its byte order."""

    def __init__(self, code: Any, align: Any = 0, copy: Any = 1) -> None:
        if isinstance(code, bytes):
            code = code.decode("latin-1")
        if not isinstance(code, str) or not _DTYPE_CODE.match(code):
            raise _Refused(f"numpy dtype {code!r} is not a plain numeric type")
        self.code = code
        self.byte_order = "="

    def __setstate__(self, state: Any) -> None:
        # (version, byte order, subarray, names, fields, element size, alignment, flags)
        if not isinstance(state, tuple) or len(state) < 2:
            raise _Refused("malformed numpy dtype state")
        order = state[1].decode("latin-1") if isinstance(state[1], bytes) else state[1]
        if order not in _BYTE_ORDERS or (len(state) >= 5 and any(part is not None for part in state[2:5])):
            raise _Refused("numpy dtype state describes a structured or sub-array type")
        self.byte_order = order

    def resolve(self) -> np.dtype:
        dtype = np.dtype(self.code)
        return dtype.newbyteorder(self.byte_order) if self.byte_order in "<>" else dtype


class _ArrayState:
    """Stand-in for ``numpy.core.multiarray._reconstruct(ndarray, (0,), b'b')``; BUILD fills it."""

    def __init__(self) -> None:
        self.array: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise _Refused("malformed numpy array state")
        shape, dtype, fortran, data = state[-4:]
        self.array = _array_from(data, dtype, shape, "F" if fortran else "C")


class _NdarrayMarker:
    """What ``numpy.ndarray`` resolves to: only a type tag for :func:`_reconstruct`."""


def _reconstruct(subtype: Any, shape: Any, dtype_code: Any) -> _ArrayState:
    if subtype is not _NdarrayMarker:
        raise _Refused("numpy _reconstruct of something other than numpy.ndarray")
    return _ArrayState()


def _scalar(dtype: Any, data: Any = None) -> Any:
    array = _array_from(data, dtype, (), "C")
    return array.item()


def _frombuffer(buffer: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    return _array_from(buffer, dtype, shape, order if order in ("C", "F") else "C")


def _latin1_encode(text: Any, encoding: Any = "latin1") -> bytes:
    """``_codecs.encode(text, 'latin1')``: how Python 3 pickles bytes for protocols below 3."""
    if not isinstance(text, str) or str(encoding).lower().replace("-", "") != "latin1":
        raise _Refused("_codecs.encode used for something other than latin-1 bytes")
    return text.encode("latin-1")


def _reconstructor(cls: Any, base: Any, state: Any = None) -> _ScalerState:
    """``copy_reg._reconstructor(StandardScaler, object, None)``: protocol 0/1 objects."""
    if cls is not _ScalerState or base is not object or state is not None:
        raise _Refused("copy_reg._reconstructor used for something other than the StandardScaler")
    return _ScalerState()


def _array_from(data: Any, dtype: Any, shape: Any, order: str) -> np.ndarray:
    """A numeric array from its raw bytes, after checking the declared size against them."""
    if not isinstance(dtype, _DType):
        raise _Refused("numpy data without a plain numeric dtype")
    if isinstance(shape, int):
        shape = (shape,)
    if not isinstance(shape, tuple) or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0
                                               for n in shape):
        raise _Refused(f"malformed numpy shape {shape!r}")
    count = math.prod(shape)
    if count > MAX_ELEMENTS:
        raise _Refused(f"a numpy array of {count} elements is far larger than a scaler's")
    if isinstance(data, str):  # Python 2 byte strings arrive as latin-1 text
        data = data.encode("latin-1")
    if isinstance(data, pickle.PickleBuffer):
        data = bytes(data)
    if not isinstance(data, (bytes, bytearray)):
        raise _Refused("numpy data that is not raw bytes (object arrays are not read)")
    resolved = dtype.resolve()
    if len(data) != count * resolved.itemsize:
        raise _Refused(f"numpy data of {len(data)} bytes for shape {shape} of {resolved}")
    return np.frombuffer(bytes(data), dtype=resolved).reshape(shape, order=order).astype(resolved.newbyteorder("="))


#: (module, name) -> stand-in. Python 2 names (copy_reg, __builtin__, sklearn.preprocessing.data,
#: numpy.core) and today's (copyreg, builtins, sklearn.preprocessing._data, numpy._core).
ALLOWED: dict[tuple[str, str], Any] = {
    **{(module, "_reconstructor"): _reconstructor for module in ("copy_reg", "copyreg")},
    **{(module, "object"): object for module in ("__builtin__", "builtins")},
    **{(module, "StandardScaler"): _ScalerState
       for module in ("sklearn.preprocessing.data", "sklearn.preprocessing._data", "sklearn.preprocessing")},
    ("numpy", "ndarray"): _NdarrayMarker,
    ("numpy", "dtype"): _DType,
    **{(f"numpy.{core}.multiarray", "_reconstruct"): _reconstruct for core in ("core", "_core")},
    **{(f"numpy.{core}.multiarray", "scalar"): _scalar for core in ("core", "_core")},
    **{(f"numpy.{core}.numeric", "_frombuffer"): _frombuffer for core in ("core", "_core")},
    ("_codecs", "encode"): _latin1_encode,
}


class _AllowListUnpickler(pickle.Unpickler):
    """An unpickler whose globals come from :data:`ALLOWED` only."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED[(module, name)]
        except (KeyError, TypeError):
            raise _Refused(f"the pickle calls {module}.{name}") from None

    def persistent_load(self, pid: Any) -> Any:
        raise _Refused("the pickle refers to persistent objects")


# ---------------------------------------------------------------------- reading
def read_standard_scaler(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, int]:
    """``(mean, std, count)`` of a pickled ``StandardScaler``: ``mean_`` (0 without centring),
    ``scale_`` (1 without scaling; ``std_`` of scikit-learn < 0.17) and ``n_samples_seen_``."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise FileFormatError(path, f"{size} bytes: too large for a pickled StandardScaler")
        data = path.read_bytes()
    except OSError as exc:
        raise FileFormatError(path, f"cannot be read ({exc.strerror or exc})") from None
    try:
        found = _AllowListUnpickler(io.BytesIO(data), encoding="latin1").load()
    except _Refused as exc:
        raise FileFormatError(path, f"refused to read the pickle: {exc}; only numpy arrays and a scikit-learn "
                                    "StandardScaler are rebuilt (no code from the file is run)") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            MemoryError, RecursionError, UnicodeError) as exc:
        detail = " ".join(str(exc).split())[:120] or type(exc).__name__
        raise FileFormatError(path, f"not a scaler file (.npz, .json or a pickled StandardScaler): {detail}") from None
    if not isinstance(found, _ScalerState) or found.state is None:
        raise FileFormatError(path, "the pickle does not hold a scikit-learn StandardScaler")
    return _scaler_arrays(path, found.state)


def _scaler_arrays(path: Path, state: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, int]:
    def vector(key: str, enabled: bool) -> np.ndarray | None:
        value = state.get(key)
        if isinstance(value, _ArrayState):  # rebuilt by _reconstruct + BUILD
            value = value.array
        if not enabled or value is None:
            return None
        if not isinstance(value, np.ndarray) or value.ndim != 1 or value.dtype.kind not in "fiu":
            raise FileFormatError(path, f"StandardScaler attribute {key} is not a 1-D numeric array")
        return value.astype(np.float64)

    mean = vector("mean_", bool(state.get("with_mean", True)))
    std = vector("scale_" if "scale_" in state else "std_", bool(state.get("with_std", True)))
    if mean is None and std is None:
        raise FileFormatError(path, "the StandardScaler holds neither mean_ nor scale_ (not fitted?)")
    size = (mean if mean is not None else std).shape[0]
    mean = np.zeros(size) if mean is None else mean
    std = np.ones(size) if std is None else std
    if mean.shape != std.shape:
        raise FileFormatError(path, f"StandardScaler mean_ has {mean.shape[0]} values, scale_ {std.shape[0]}")
    seen = state.get("n_samples_seen_", 0)
    seen = seen.array if isinstance(seen, _ArrayState) else seen
    count = int(np.max(seen)) if isinstance(seen, (int, float, np.ndarray)) and np.size(seen) else 0
    return mean, std, count


__all__ = ["read_standard_scaler", "ALLOWED", "MAX_FILE_BYTES"]
