"""Named tensors on the wire, for every protocol: (name, KServe V2 datatype, shape, raw bytes) <-> numpy.
A tensor whose bytes do not match its datatype and shape is refused naming it and what was expected."""

from __future__ import annotations

import math

import numpy as np

from seqserve.declaration import NUMPY_DTYPES, V2_DATATYPES
from seqserve.service.engine import InvalidChunk

# Per datatype: the little-endian dtype the wire carries and the native one the graph takes (the same on
# a little-endian host, where no copy is made). Made once: a dtype is not free to build per chunk.
_WIRE = {name: (np.dtype(dtype).newbyteorder("<"), np.dtype(dtype)) for name, dtype in NUMPY_DTYPES.items()}


def to_array(name: str, datatype: str, shape: list[int], data: bytes, what: str) -> np.ndarray:
    """The tensor's values (a read-only view of `data`), little-endian as the wire carries them."""
    dtypes = _WIRE.get(datatype)
    if dtypes is None:
        raise InvalidChunk(
            f"{what}: tensor {name} has datatype {datatype!r}; expected one of {', '.join(NUMPY_DTYPES)}"
        )
    if any(d < 0 for d in shape):
        raise InvalidChunk(f"{what}: tensor {name} has shape {list(shape)}; expected dims >= 0")
    wire, native = dtypes
    want = math.prod(shape) * wire.itemsize
    if len(data) != want:
        raise InvalidChunk(
            f"{what}: tensor {name} has {len(data)} bytes; {datatype} {list(shape)} is {want} bytes"
        )
    array = np.frombuffer(data, dtype=wire).reshape(shape)
    return array if wire == native else array.astype(native)


def datatype(array: np.ndarray) -> str:
    return V2_DATATYPES[array.dtype.name]


def to_bytes(array: np.ndarray) -> bytes:
    return np.asarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()  # C order, 0-d too
