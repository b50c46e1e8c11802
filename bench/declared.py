"""A declared stateful graph served by seqserve against the per-stream loop a user would otherwise write
behind their own gRPC server, at 1, 16 and 64 streams.

The model is `bench-vad` (bench/declared_models.py): a voice-activity detector's shape, a GRU of hidden
128 over 512-sample frames with 64 samples of context carried between frames, its state [1, batch, 128]
and a sample-rate constant. Both servers speak seqserve.v1's Stream with named tensors; each stream sends
one frame a chunk and awaits its answer (closed loop), for `duration_s`.

- seqserve: `seqserve serve` over the repository (the declaration beside the graph); streams share calls.
- naive: `python -m bench.declared naive`: each stream's handler keeps its state and context and runs one
  onnxruntime call per frame, inline on the event loop (the strongest naive variant, as in
  bench/baseline_servers.py).

Reported per row: frames/s, p50 / p99 per frame, and server CPU per frame (from /proc). `make bench` runs
these rows (bench/run.py); alone:

    python -m bench.declared [--duration-s 4] [--streams 1,16,64]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort

from bench.baseline_servers import serve
from bench.declared_models import vad
from bench.process_costs import cpu_clock
from bench.report import TextTable, print_and_write
from seqserve import declaration as declarations
from seqserve.service.engine.runtime import graph_tensors
from seqserve.service.server.launch import running_server, serve_command
from seqserve.v1 import seqserve_pb2 as pb
from seqserve.v1 import seqserve_pb2_grpc as pb_grpc

MODEL = "bench-vad"
HIDDEN = 128
FRAME = 512
STREAMS = (1, 16, 64)
TARGET_STREAMS = 64
RESULTS = Path(__file__).parent / "results" / "declared.json"


def write_model(repository: Path) -> Path:
    return vad(repository / MODEL / "1", hidden=HIDDEN)


class NaiveDeclaredServicer(pb_grpc.InferenceServiceServicer):
    """One onnxruntime call per frame per stream, the state and context in the handler: the loop a user
    writes around the graph, from the same declaration."""

    def __init__(self, folder: Path) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self.session = ort.InferenceSession(
            str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"]
        )
        graph_in, graph_out = (
            graph_tensors(self.session.get_inputs()),
            graph_tensors(self.session.get_outputs()),
        )
        self.declaration = declarations.resolve(declarations.read(folder), graph_in, graph_out)

    async def Stream(self, request_iterator: AsyncIterator[pb.StreamRequest], context) -> AsyncIterator:  # noqa: N802
        d = self.declaration
        (spec,) = d.inputs
        states = {s.input: np.expand_dims(s.zero_row(), s.batch_axis) for s in d.states}
        context_samples = np.zeros(spec.context, np.float32)
        constants = {c.name: c.value() for c in d.constants}
        names = [o.name for o in d.outputs] + [s.output for s in d.states]
        index = 0
        async for request in request_iterator:
            kind = request.WhichOneof("kind")
            if kind == "open":
                yield pb.StreamResponse(opened=pb.StreamOpened(stream_id="naive", streamable=True))
            elif kind == "chunk":
                (tensor,) = request.chunk.tensors
                frames = np.frombuffer(tensor.data, dtype="<f4").reshape(tuple(tensor.shape))
                outputs = []
                for frame in frames:
                    whole = np.concatenate([context_samples, frame])
                    results = self.session.run(names, {spec.name: whole[None], **states, **constants})
                    context_samples = whole[-spec.context :]
                    states = dict(zip((s.input for s in d.states), results[len(d.outputs) :], strict=True))
                    outputs.append(results[0][0])
                out = np.stack(outputs)
                result = pb.ChunkResult(chunk_index=index)
                result.outputs.add(
                    name=d.outputs[0].name, datatype="FP32", shape=out.shape, data=out.tobytes()
                )
                index += 1
                yield pb.StreamResponse(chunk=result)
            else:
                yield pb.StreamResponse(ended=pb.StreamEnded(reason=pb.END_REASON_COMPLETED))
                return


@dataclass
class DeclaredRow:
    server: str
    streams: int
    frames_per_s: float
    p50_ms: float
    p99_ms: float
    server_cpu_us_per_frame: float


async def _one_stream(
    stub: pb_grpc.InferenceServiceStub, until: float, latencies: list[float], seed: int
) -> int:
    frame = np.random.default_rng(seed).standard_normal((1, FRAME)).astype(np.float32)
    chunk = pb.StreamRequest(
        chunk=pb.StreamChunk(steps=1, tensors=[pb.Tensor(name="input", datatype="FP32", shape=[1, FRAME],
                                                         data=frame.tobytes())])
    )  # fmt: skip
    call = stub.Stream()
    await call.write(pb.StreamRequest(open=pb.StreamOpen(model=MODEL)))
    await call.read()
    frames = 0
    while time.perf_counter() < until:
        sent = time.perf_counter()
        await call.write(chunk)
        await call.read()
        latencies.append(time.perf_counter() - sent)
        frames += 1
    await call.write(pb.StreamRequest(end=pb.StreamEnd()))
    await call.done_writing()
    while await call.read() is not grpc.aio.EOF:
        pass
    return frames


async def _load(target: str, streams: int, duration_s: float, server_cpu) -> tuple[float, list[float], float]:  # noqa: ANN001
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        await asyncio.gather(
            *(_one_stream(stub, time.perf_counter() + 0.3, [], i) for i in range(streams))
        )  # warm
        latencies: list[float] = []
        cpu_before, started = server_cpu(), time.perf_counter()
        until = started + duration_s
        counts = await asyncio.gather(*(_one_stream(stub, until, latencies, i) for i in range(streams)))
        elapsed, cpu = time.perf_counter() - started, server_cpu() - cpu_before
    return sum(counts) / elapsed, latencies, cpu / max(sum(counts), 1)


def measure_rows(
    repository: Path, streams: tuple[int, ...], duration_s: float, logs: Path
) -> list[DeclaredRow]:
    folder = repository / MODEL / "1"
    commands = {
        "seqserve": serve_command(repository, "--metrics-port", "-1"),
        "naive": [sys.executable, "-m", "bench.declared", "naive", "--folder", str(folder)],
    }
    rows = []
    for name, command in commands.items():
        with running_server(command, logs / f"declared-{name}.log") as server:
            clock = cpu_clock(server.pid)
            for count in streams:
                rate, latencies, cpu = asyncio.run(_load(server.target, count, duration_s, clock))
                p50, p99 = np.percentile(latencies, [50, 99]) * 1000
                rows.append(
                    DeclaredRow(
                        name, count, round(rate, 1), round(p50, 2), round(p99, 2), round(cpu * 1e6, 1)
                    )
                )
    return rows


@dataclass
class Declared:
    """The section `make bench` reports: rows, the seqserve / naive frames/s ratio at each count."""

    rows: list[DeclaredRow]
    key: str = "declared"

    def to_dict(self) -> dict[str, Any]:
        return {"rows": [asdict(row) for row in self.rows], "ratios": self.ratios()}

    def _rate(self, server: str, streams: int) -> float:
        return statistics.fmean(
            r.frames_per_s for r in self.rows if r.server == server and r.streams == streams
        )

    def ratios(self) -> dict[str, float]:
        counts = {r.streams for r in self.rows}
        return {
            f"declared_vs_naive_{count}": round(self._rate("seqserve", count) / self._rate("naive", count), 3)
            for count in sorted(counts)
        }

    def targets(self) -> dict[str, tuple[str, float]]:
        return {}  # no target set: the figures say what batching a user's graph buys

    def tables(self) -> list[TextTable]:
        header = ["server", "streams", "frames/s", "p50 ms", "p99 ms", "server CPU us/frame"]
        body = [
            [r.server, str(r.streams), f"{r.frames_per_s:,.0f}", f"{r.p50_ms:.2f}", f"{r.p99_ms:.2f}",
             f"{r.server_cpu_us_per_frame:.0f}"]
            for r in self.rows
        ]  # fmt: skip
        title = f"Declared graph ({MODEL}: VAD-shaped GRU, hidden {HIDDEN}, one frame a chunk)"
        return [TextTable(title, tuple(header), [tuple(row) for row in body])]


def measure(repository: Path, streams: tuple[int, ...], duration_s: float, logs: Path) -> Declared:
    write_model(repository)
    return Declared(measure_rows(repository, streams, duration_s, logs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", nargs="?", choices=["bench", "naive"], default="bench")
    parser.add_argument("--folder", type=Path, help="naive: the model version folder to serve")
    parser.add_argument("--duration-s", type=float, default=4.0)
    parser.add_argument("--streams", default=",".join(map(str, STREAMS)))
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.mode == "naive":
        asyncio.run(serve(NaiveDeclaredServicer(args.folder), "naive", "127.0.0.1"))
        return
    with tempfile.TemporaryDirectory(prefix="seqserve-declared-") as work:
        section = measure(
            Path(work) / "repository", tuple(map(int, args.streams.split(","))), args.duration_s, Path(work)
        )
    print_and_write(section, args.out)


if __name__ == "__main__":
    main()
