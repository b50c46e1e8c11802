"""What the Python client costs per message, beside the generated stubs: client CPU per answered chunk.

    python -m bench.client_cost            # writes bench/results/client_cost.json

One `seqserve serve` process on the bench model; each variant runs in its own spawned process (client and
server never share one), `--streams` concurrent streams, each sending a chunk of `--chunk` steps and
awaiting its answer before the next, for `--seconds` after a warm-up. The variant's CPU is its own
process's (every thread: grpc's C threads too), from resource.getrusage, over the measuring window only;
divided by the chunks answered in it.

- stubs: the generated stubs as docs/client.md's lower section uses them: a StreamRequest built and
  serialised per chunk, the StreamResponse parsed, its label read.
- client: `AsyncClient.stream(...).send(chunk)` with a numpy chunk, the answer's label read.
- bytes: the leanest possible: one chunk serialised once and sent as bytes (what the bench's load client
  did before it used the client); the floor under both.

Variants alternate within each round, so a change in machine load hits all of them; the figure is the
median over rounds of client / stubs. Target: client <= 1.2x stubs at chunk 1 x 64 streams.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).parent / "results" / "client_cost.json"
VARIANTS = ("stubs", "client", "bytes")
TARGET_RATIO = 1.2


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _window_loop(send_one: Any, streams: int, warmup_s: float, seconds: float) -> tuple[int, float]:
    """Run `send_one(stream_index, window)` loops; (answers inside the window, CPU seconds in it)."""
    start = time.monotonic() + warmup_s
    end = start + seconds
    counted = [0]

    async def cpu() -> float:
        await asyncio.sleep(max(0.0, start - time.monotonic()))
        before = _cpu_s()
        await asyncio.sleep(max(0.0, end - time.monotonic()))
        return _cpu_s() - before

    async def loop(index: int) -> None:
        async for sent_at in send_one(index, end):
            if sent_at >= start:
                counted[0] += 1

    measured = asyncio.create_task(cpu())
    await asyncio.gather(*(loop(i) for i in range(streams)))
    return counted[0], await measured


async def _stubs(target: str, model: str, x: np.ndarray, streams: int, warmup: float, seconds: float) -> Any:
    import grpc

    from seqserve.v1 import seqserve_pb2 as pb
    from seqserve.v1 import seqserve_pb2_grpc as pb_grpc

    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.InferenceServiceStub(channel)

        async def send_one(index: int, end: float) -> Any:
            call = stub.Stream()
            await call.write(pb.StreamRequest(open=pb.StreamOpen(model=model)))
            await call.read()
            while (sent_at := time.monotonic()) < end:
                values = np.ascontiguousarray(x, dtype="<f4").tobytes()
                await call.write(pb.StreamRequest(chunk=pb.StreamChunk(steps=x.shape[0], values=values)))
                response = await call.read()
                _ = response.chunk.results[-1].label
                yield sent_at
            await call.write(pb.StreamRequest(end=pb.StreamEnd()))
            await call.done_writing()
            await call.read()

        return await _window_loop(send_one, streams, warmup, seconds)


async def _client(target: str, model: str, x: np.ndarray, streams: int, warmup: float, seconds: float) -> Any:
    from seqserve.service.client.client import AsyncClient

    async with AsyncClient(target) as client:

        async def send_one(index: int, end: float) -> Any:
            async with client.stream(model) as stream:
                while (sent_at := time.monotonic()) < end:
                    _ = (await stream.send(x)).label
                    yield sent_at

        return await _window_loop(send_one, streams, warmup, seconds)


async def _bytes(target: str, model: str, x: np.ndarray, streams: int, warmup: float, seconds: float) -> Any:
    import grpc

    from seqserve.v1 import seqserve_pb2 as pb

    opening = pb.StreamRequest(open=pb.StreamOpen(model=model)).SerializeToString()
    values = np.ascontiguousarray(x, dtype="<f4").tobytes()
    chunk = pb.StreamRequest(chunk=pb.StreamChunk(steps=x.shape[0], values=values)).SerializeToString()
    end_request = pb.StreamRequest(end=pb.StreamEnd()).SerializeToString()
    async with grpc.aio.insecure_channel(target) as channel:
        method = channel.stream_stream("/seqserve.v1.InferenceService/Stream")

        async def send_one(index: int, end: float) -> Any:
            call = method()
            await call.write(opening)
            await call.read()
            while (sent_at := time.monotonic()) < end:
                await call.write(chunk)
                _ = pb.StreamResponse.FromString(await call.read()).chunk.results[-1].label
                yield sent_at
            await call.write(end_request)
            await call.done_writing()
            await call.read()

        return await _window_loop(send_one, streams, warmup, seconds)


_RUNNERS = {"stubs": _stubs, "client": _client, "bytes": _bytes}


def _variant(variant: str, target: str, model: str, chunk: int, features: int, streams: int,
             warmup: float, seconds: float) -> tuple[int, float]:  # fmt: skip
    x = np.random.default_rng(1).standard_normal((chunk, features)).astype(np.float32)
    return asyncio.run(_RUNNERS[variant](target, model, x, streams, warmup, seconds))


def measure(target: str, model: str, features: int, args: argparse.Namespace) -> dict[str, Any]:
    """Every variant `args.rounds` times, alternated; per round each variant's CPU per message."""
    context = multiprocessing.get_context("spawn")  # grpc does not survive fork
    rounds = []
    with context.Pool(1, maxtasksperchild=1) as pool:
        for index in range(args.rounds):
            order = VARIANTS if index % 2 == 0 else VARIANTS[::-1]
            row: dict[str, Any] = {}
            for variant in order:
                job = (
                    variant,
                    target,
                    model,
                    args.chunk,
                    features,
                    args.streams,
                    args.warmup_s,
                    args.seconds,
                )
                messages, cpu_s = pool.apply(_variant, job)
                row[variant] = {
                    "messages": messages,
                    "cpu_s": round(cpu_s, 3),
                    "msgs_per_s": round(messages / args.seconds, 1),
                    "cpu_us_per_msg": round(cpu_s / messages * 1e6, 2),
                }
            row["client_over_stubs"] = round(
                row["client"]["cpu_us_per_msg"] / row["stubs"]["cpu_us_per_msg"], 3
            )
            rounds.append(row)
            print(json.dumps(row), flush=True)
    median = {v: statistics.median(r[v]["cpu_us_per_msg"] for r in rounds) for v in VARIANTS}
    ratio = statistics.median(r["client_over_stubs"] for r in rounds)
    return {
        "chunk": args.chunk,
        "streams": args.streams,
        "seconds": args.seconds,
        "rounds": rounds,
        "median_cpu_us_per_msg": median,
        "client_over_stubs": ratio,
        "target": f"client <= {TARGET_RATIO}x stubs",
        "met": ratio <= TARGET_RATIO,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--warmup-s", type=float, default=1.0)
    parser.add_argument("--streams", type=int, default=64)
    parser.add_argument("--chunk", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    from bench.bench_model import BENCH_MODEL, FEATURES, write_bench_model
    from seqserve.service.server.launch import start_server_process

    with tempfile.TemporaryDirectory(prefix="seqserve-client-cost-") as work:
        repository = Path(work) / "repository"
        write_bench_model(repository, Path(work))
        server = start_server_process(repository, "--metrics-port", "-1")
        try:
            figures = measure(server.target, BENCH_MODEL, FEATURES, args)
        finally:
            server.terminate()
    figures["python"] = sys.version.split()[0]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"client / stubs CPU per message: {figures['client_over_stubs']} (median of {args.rounds} rounds), "
          f"{figures['median_cpu_us_per_msg']} us; wrote {args.out}")  # fmt: skip


if __name__ == "__main__":
    main()
