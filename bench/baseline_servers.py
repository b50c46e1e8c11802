"""The baselines seqserve is measured against, on the real `InferenceService.Stream` proto.

- `echo`: answers every chunk with a ChunkResult shaped like seqserve's (one running label, no scores) and
  does no inference, so only the cost of grpc.aio and protobuf remains: the ceiling for any Python service.
- `naive`: what a user would write without seqserve: one onnxruntime call per incoming chunk, the stream's
  state held by its handler, no batching. The call runs inline on the event loop: with one small call per
  message that is faster than an executor hop, so it is the strongest naive variant.

Run as `python -m bench.baseline_servers echo|naive --repository R --model NAME`; prints
`bench-<kind> listening grpc=HOST:PORT` once serving, stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np

from bench.bench_model import open_session
from seqserve.contract import (
    INPUT_LENGTHS,
    INPUT_X,
    MODEL_FILE,
    OUTPUT_LOGITS,
    ModelInfo,
    list_versions,
    read_model_info,
    state_inputs,
    state_outputs,
    version_dir,
)
from seqserve.v1 import seqserve_pb2 as pb
from seqserve.v1 import seqserve_pb2_grpc as pb_grpc


def _chunk_result(chunk_index: int, step: int, label_index: int, info: ModelInfo) -> pb.StreamResponse:
    result = pb.StepResult(step=step, label_index=label_index, label=info.labels[label_index])
    return pb.StreamResponse(chunk=pb.ChunkResult(chunk_index=chunk_index, results=[result]))


def _ended(steps: int) -> pb.StreamResponse:
    return pb.StreamResponse(ended=pb.StreamEnded(reason=pb.END_REASON_COMPLETED, steps=steps))


class _StreamServicer(pb_grpc.InferenceServiceServicer):
    """The Stream protocol both baselines speak: open, every chunk answered in turn, end."""

    kind = ""

    def __init__(self, info: ModelInfo) -> None:
        self._info = info

    def _initial_state(self) -> list[np.ndarray]:
        return []

    def _label(self, chunk: pb.StreamChunk, state: list[np.ndarray]) -> tuple[int, list[np.ndarray]]:
        """The chunk's running label and the state after it."""
        raise NotImplementedError

    async def Stream(self, request_iterator: AsyncIterator[pb.StreamRequest], context) -> AsyncIterator:  # noqa: N802
        state = self._initial_state()
        steps = 0
        chunk_index = 0
        async for request in request_iterator:
            kind = request.WhichOneof("kind")
            if kind == "open":
                yield pb.StreamResponse(opened=pb.StreamOpened(stream_id=self.kind, streamable=True))
            elif kind == "chunk":
                label_index, state = self._label(request.chunk, state)
                steps += request.chunk.steps
                yield _chunk_result(chunk_index, steps - 1, label_index, self._info)
                chunk_index += 1
            else:
                yield _ended(steps)
                return


class EchoServicer(_StreamServicer):
    kind = "echo"

    def _label(self, chunk: pb.StreamChunk, state: list[np.ndarray]) -> tuple[int, list[np.ndarray]]:
        return 0, state


class NaiveServicer(_StreamServicer):
    kind = "naive"

    def __init__(self, info: ModelInfo, model_path: Path, device: str, threads: int) -> None:
        super().__init__(info)
        self._session = open_session(model_path, device, threads)
        self._state_in = state_inputs(info.cell)
        self._outputs = [OUTPUT_LOGITS, *state_outputs(info.cell)]

    def _initial_state(self) -> list[np.ndarray]:
        return [np.zeros(self._info.state_shape(1), np.float32) for _ in self._state_in]

    def _label(self, chunk: pb.StreamChunk, state: list[np.ndarray]) -> tuple[int, list[np.ndarray]]:
        x = np.frombuffer(chunk.values, dtype="<f4").reshape(1, chunk.steps, self._info.features)
        feeds = {INPUT_X: x, INPUT_LENGTHS: np.array([chunk.steps], np.int32)}
        feeds.update(zip(self._state_in, state, strict=True))
        logits, *state = self._session.run(self._outputs, feeds)
        return int(logits[0].argmax()), state


async def serve(servicer: pb_grpc.InferenceServiceServicer, kind: str, host: str) -> None:
    """Serve Stream on a free port, say `bench-<kind> listening grpc=...` once up, stop on SIGTERM."""
    server = grpc.aio.server()
    pb_grpc.add_InferenceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port(f"{host}:0")
    await server.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print(f"bench-{kind} listening grpc={host}:{port}", flush=True)
    await stop.wait()
    await server.stop(grace=1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=["echo", "naive"])
    parser.add_argument("--repository", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--inference-threads", type=int, default=1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    path = version_dir(args.repository, args.model, list_versions(args.repository, args.model)[-1])
    info = read_model_info(path)
    if args.kind == "echo":
        servicer: _StreamServicer = EchoServicer(info)
    else:
        servicer = NaiveServicer(info, path / MODEL_FILE, args.device, args.inference_threads)
    asyncio.run(serve(servicer, args.kind, args.host))


if __name__ == "__main__":
    main()
