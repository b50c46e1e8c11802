"""A seqserve.v1 stream of named tensors, blocking: what a client of a declared graph sends and reads."""

from __future__ import annotations

import grpc
import numpy as np

from seqserve import declaration as declarations
from seqserve.v1 import seqserve_pb2 as pb
from seqserve.v1 import seqserve_pb2_grpc as pb_grpc


def tensor(name: str, array: np.ndarray) -> pb.Tensor:
    array = np.ascontiguousarray(array)
    return pb.Tensor(
        name=name,
        datatype=declarations.V2_DATATYPES[array.dtype.name],
        shape=array.shape,
        data=array.tobytes(),
    )


def stream(
    target: str,
    model: str,
    chunks: list[dict[str, np.ndarray]],
    constants: dict[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Open, send every chunk, end; each output's answers joined along steps (frames)."""
    opening = pb.StreamOpen(model=model, constants=[tensor(n, v) for n, v in (constants or {}).items()])
    requests = [pb.StreamRequest(open=opening)]
    for chunk in chunks:
        steps = next(iter(chunk.values())).shape[0]
        tensors = [tensor(name, value) for name, value in chunk.items()]
        requests.append(pb.StreamRequest(chunk=pb.StreamChunk(steps=steps, tensors=tensors)))
    requests.append(pb.StreamRequest(end=pb.StreamEnd()))
    outputs: dict[str, list[np.ndarray]] = {}
    with grpc.insecure_channel(target) as channel:
        for response in pb_grpc.InferenceServiceStub(channel).Stream(iter(requests), timeout=60):
            for answer in response.chunk.outputs if response.HasField("chunk") else ():
                dtype = np.dtype(declarations.NUMPY_DTYPES[answer.datatype])
                outputs.setdefault(answer.name, []).append(
                    np.frombuffer(answer.data, dtype).reshape(tuple(answer.shape))
                )
    return {name: np.concatenate(parts) for name, parts in outputs.items()}
