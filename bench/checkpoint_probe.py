"""Checkpoint figures beside the load rows: the token's size, and what a resume's open costs.

A resume is one StreamOpen carrying the token: the server verifies the HMAC, checks the model and copies
the state rows. Its open-to-opened time, median over many, is set against a plain open on the same server
(both one stream at a time, alternating, so nothing else waits in the batcher).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np

from seqserve.v1 import seqserve_pb2 as pb
from seqserve.v1 import seqserve_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from bench.scenarios import ServedFigures

# Checkpoint intervals the bench compares (0: none).
CHECKPOINT_EVERY = (0, 16, 1)
_OPENS = 300


@dataclass
class ResumeProbe:
    token_bytes: int
    plain_open_ms_p50: float
    resume_open_ms_p50: float
    resume_open_ms_p99: float

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))


@dataclass
class CheckpointFigures:
    rows: list[tuple[int, ServedFigures]]  # (checkpoint every N chunks, the load scenario)
    probe: ResumeProbe


async def _open_ms(stub: pb_grpc.InferenceServiceStub, opening: pb.StreamOpen) -> float:
    call = stub.Stream()
    started = time.perf_counter()
    await call.write(pb.StreamRequest(open=opening))
    response = await call.read()
    elapsed = (time.perf_counter() - started) * 1000
    if not response.HasField("opened"):
        raise RuntimeError(f"expected opened, got {response}")
    await call.write(pb.StreamRequest(end=pb.StreamEnd()))
    await call.done_writing()
    await call.read()
    return elapsed


async def measure_resume(target: str, model: str, features: int) -> ResumeProbe:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        call = stub.Stream()
        await call.write(pb.StreamRequest(open=pb.StreamOpen(model=model, checkpoint_every_chunks=1)))
        await call.read()
        values = np.ones((4, features), dtype="<f4").tobytes()
        await call.write(pb.StreamRequest(chunk=pb.StreamChunk(steps=4, values=values)))
        token = (await call.read()).chunk.checkpoint.token
        await call.write(pb.StreamRequest(end=pb.StreamEnd()))
        await call.done_writing()
        await call.read()
        plain, resumed = [], []
        for _ in range(_OPENS):  # alternating, so load on the box weighs on both alike
            plain.append(await _open_ms(stub, pb.StreamOpen(model=model)))
            resumed.append(await _open_ms(stub, pb.StreamOpen(resume_token=token)))
    return ResumeProbe(
        token_bytes=len(token),
        plain_open_ms_p50=statistics.median(plain),
        resume_open_ms_p50=statistics.median(resumed),
        resume_open_ms_p99=float(np.percentile(resumed, 99)),
    )
