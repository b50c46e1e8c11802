"""Named tensors on the wire, for every protocol: (name, KServe V2 datatype, shape, raw bytes) <-> numpy.
A tensor whose bytes do not match its datatype and shape is refused naming it and what was expected."""

from __future__ import annotations

import numpy as np

from seqserve.declaration import NUMPY_DTYPES, V2_DATATYPES
from seqserve.service.engine import InvalidChunk


def to_array(name: str, datatype: str, shape: list[int], data: bytes, what: str) -> np.ndarray:
    """The tensor's values (a read-only view of `data`), little-endian as the wire carries them."""
    if datatype not in NUMPY_DTYPES:
        raise InvalidChunk(
            f"{what}: tensor {name} has datatype {datatype!r}; expected one of {', '.join(NUMPY_DTYPES)}"
        )
    if any(d < 0 for d in shape):
        raise InvalidChunk(f"{what}: tensor {name} has shape {list(shape)}; expected dims >= 0")
    dtype = np.dtype(NUMPY_DTYPES[datatype]).newbyteorder("<")
    want = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != want:
        raise InvalidChunk(
            f"{what}: tensor {name} has {len(data)} bytes; {datatype} {list(shape)} is {want} bytes"
        )
    return np.frombuffer(data, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="), copy=False)


def datatype(array: np.ndarray) -> str:
    return V2_DATATYPES[array.dtype.name]


def to_bytes(array: np.ndarray) -> bytes:
    return np.asarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()  # C order, 0-d too
