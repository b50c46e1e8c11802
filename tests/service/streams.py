"""Raw Stream calls for the tests: open, chunk bytes of any shape (bad ones too), end, read to the status."""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc
import numpy as np

from seqserve.v1 import seqserve_pb2 as pb
from seqserve.v1 import seqserve_pb2_grpc as pb_grpc


def open_request(
    model: str, version: int = 0, idle_timeout_ms: int = 0, **options: object
) -> pb.StreamRequest:
    return pb.StreamRequest(
        open=pb.StreamOpen(model=model, version=version, idle_timeout_ms=idle_timeout_ms, **options)
    )


def chunk_request(x: np.ndarray, steps: int | None = None) -> pb.StreamRequest:
    return pb.StreamRequest(
        chunk=pb.StreamChunk(steps=x.shape[0] if steps is None else steps, values=x.astype("<f4").tobytes())
    )


END = pb.StreamRequest(end=pb.StreamEnd())


async def end_ok(call: grpc.aio.StreamStreamCall) -> pb.StreamEnded:
    """Send end, half-close, read StreamEnded; the stream must finish OK."""
    await call.write(END)
    await call.done_writing()
    ended = (await call.read()).ended
    assert await call.code() == grpc.StatusCode.OK
    return ended


@dataclass
class Outcome:
    """Everything the server sent on one stream, and the status it ended with."""

    responses: list[pb.StreamResponse] = field(default_factory=list)
    code: grpc.StatusCode | None = None
    details: str = ""

    @property
    def ended(self) -> pb.StreamEnded | None:
        last = self.responses[-1] if self.responses else None
        return last.ended if last is not None and last.HasField("ended") else None


async def drive(
    stub: pb_grpc.InferenceServiceStub,
    requests: list[pb.StreamRequest],
    metadata: tuple[tuple[str, str], ...] | None = None,
) -> Outcome:
    """Write every request (reading each answer as it comes), half-close, then read to the status."""
    call = stub.Stream(metadata=metadata)
    outcome = Outcome()
    try:
        for request in requests:
            await call.write(request)
        await call.done_writing()
        async for response in call:
            outcome.responses.append(response)
    except grpc.aio.AioRpcError:
        pass
    outcome.code = await call.code()
    outcome.details = await call.details()
    return outcome
