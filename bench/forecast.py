"""Forecasts at 1, 16 and 64 concurrent clients: seqserve's forecast from a live stream's state against the
two ways a client gets one without it.

The model is the default Taylor forecaster's shape (GRU 32, the weekly naive, yesterday's error, the time
of day; weights at their seed: the cost does not depend on them). Each client forecasts HORIZON (48) steps,
over and over, for `duration_s`:

- stream: one seqserve.v1 stream per client holds its series (2 weeks of half-hours sent at open); each
  round sends the next observation (a chunk of 1) and asks a forecast on the stream
  (StreamRequest.forecast): the server rolls out from the state it already has, every client's forecast
  steps sharing one onnxruntime call per step.
- window: the stateless way (Darts' `predict` re-runs `input_chunk_length` from zero): each round is one
  unary Forecast call with the last WINDOW (672) values; the server runs the window, then the rollout.
- client loop: what a user writes around a server that only answers chunks: each round opens a stream,
  sends the window as one chunk, then feeds back each step's mean as a chunk of 1, HORIZON - 1 round trips.

Reported per row: forecasts/s, p50 / p99 per forecast, and server CPU per forecast step (from /proc).
`make bench` runs these rows (bench/run.py); alone:

    python -m bench.forecast [--duration-s 4] [--streams 1,16,64]
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from bench.process_costs import cpu_clock
from bench.report import TextTable
from bench.ways import closed_loop, lead_ratios, section_main
from seqserve.service.server.launch import running_server, serve_command
from seqserve.v1 import seqserve_pb2 as pb
from seqserve.v1 import seqserve_pb2_grpc as pb_grpc

MODEL = "bench-forecaster"
HORIZON = 48
WINDOW = 672  # two weeks of half-hours: the model's 384-step memory and more
STREAMS = (1, 16, 64)
WAYS = ("stream", "window", "client loop")
RESULTS = Path(__file__).parent / "results" / "forecast.json"


def taylor_shaped_forecaster(name: str) -> tuple[Any, Any]:
    """The default Taylor forecaster (`seqserve train --task forecast --dataset taylor`'s shape and
    calendar) with seeded weights, and its model.json record."""
    import torch

    from seqserve.export.forecast_job import forecaster_info
    from seqserve.training.forecast_loop import ForecastTrainConfig, build_model
    from seqserve.training.series import taylor

    torch.manual_seed(0)
    model = build_model(ForecastTrainConfig(out=Path("unused")), taylor()).eval()
    return model, forecaster_info(model, name, 1, HORIZON)


def write_model(repository: Path) -> None:
    from seqserve.export.forecast_graph import build_forecaster
    from seqserve.export.repository import VersionFiles, write_versions

    model, info = taylor_shaped_forecaster(MODEL)
    write_versions(repository, [VersionFiles(build_forecaster(model, info), info)])


def _series(seed: int, length: int) -> np.ndarray:
    """A demand-like series: daily and weekly cycles around 30,000 with noise."""
    t = np.arange(length)
    rng = np.random.default_rng(seed)
    daily, weekly = np.sin(2 * np.pi * t / 48), np.sin(2 * np.pi * t / 336)
    return (30_000 + 6_000 * daily + 2_000 * weekly + rng.normal(0, 300, length)).astype(np.float32)


def _chunk(values: np.ndarray) -> pb.StreamRequest:
    return pb.StreamRequest(chunk=pb.StreamChunk(steps=len(values), values=values.astype("<f4").tobytes()))


ASK = pb.ForecastAsk(horizon=HORIZON, quantiles=[0.1, 0.9])
OPEN = pb.StreamRequest(open=pb.StreamOpen(model=MODEL))
END = pb.StreamRequest(end=pb.StreamEnd())


async def _finish(call: grpc.aio.StreamStreamCall) -> None:
    await call.write(END)
    await call.done_writing()
    while await call.read() is not grpc.aio.EOF:
        pass


async def _stream(stub: pb_grpc.InferenceServiceStub, until: float, latencies: list[float], seed: int) -> int:
    series = _series(seed, WINDOW + 100_000)
    call = stub.Stream()
    await call.write(OPEN)
    await call.read()
    await call.write(_chunk(series[:WINDOW]))
    await call.read()
    forecasts, step = 0, WINDOW
    ask = pb.StreamRequest(forecast=ASK)
    while time.perf_counter() < until:
        sent = time.perf_counter()
        await call.write(_chunk(series[step : step + 1]))
        await call.read()
        await call.write(ask)
        answer = await call.read()
        assert len(answer.forecast.mean) == HORIZON
        latencies.append(time.perf_counter() - sent)
        forecasts += 1
        step += 1
    await _finish(call)
    return forecasts


async def _window(stub: pb_grpc.InferenceServiceStub, until: float, latencies: list[float], seed: int) -> int:
    series = _series(seed, WINDOW + 100_000)
    forecasts, step = 0, WINDOW
    while time.perf_counter() < until:
        sent = time.perf_counter()
        request = pb.ForecastRequest(
            model=MODEL, series=[pb.ForecastSeries(values=series[step - WINDOW + 1 : step + 1])], ask=ASK
        )
        answer = await stub.Forecast(request)
        assert len(answer.forecasts[0].mean) == HORIZON
        latencies.append(time.perf_counter() - sent)
        forecasts += 1
        step += 1
    return forecasts


def _loc(response: pb.StreamResponse) -> float:
    (loc,) = [t for t in response.chunk.outputs if t.name == "loc"]
    return float(np.frombuffer(loc.data, dtype="<f4")[-1])


async def _client_loop(
    stub: pb_grpc.InferenceServiceStub, until: float, latencies: list[float], seed: int
) -> int:
    series = _series(seed, WINDOW + 100_000)
    forecasts, step = 0, WINDOW
    while time.perf_counter() < until:
        sent = time.perf_counter()
        call = stub.Stream()
        await call.write(OPEN)
        await call.read()
        await call.write(_chunk(series[step - WINDOW + 1 : step + 1]))
        means = [_loc(await call.read())]
        for _ in range(HORIZON - 1):
            await call.write(_chunk(np.array(means[-1:], np.float32)))
            means.append(_loc(await call.read()))
        await _finish(call)
        latencies.append(time.perf_counter() - sent)
        forecasts += 1
        step += 1
    return forecasts


CLIENTS: dict[str, Callable[..., Awaitable[int]]] = {
    "stream": _stream,
    "window": _window,
    "client loop": _client_loop,
}


@dataclass
class ForecastRow:
    way: str
    streams: int
    forecasts_per_s: float
    p50_ms: float
    p99_ms: float
    server_cpu_us_per_step: float


async def _load(target: str, way: str, streams: int, duration_s: float, server_cpu) -> ForecastRow:  # noqa: ANN001
    run = await closed_loop(target, CLIENTS[way], streams, duration_s, server_cpu)
    return ForecastRow(
        way, streams, round(run.rate, 1), run.p50_ms, run.p99_ms,
        round(run.server_cpu_s / (run.count * HORIZON) * 1e6, 2),
    )  # fmt: skip


@dataclass
class Forecasts:
    """The section `make bench` reports: rows, and forecasts/s of the stream way over each other way."""

    rows: list[ForecastRow]
    key: str = "forecast"

    def to_dict(self) -> dict[str, Any]:
        return {"rows": [asdict(row) for row in self.rows], "ratios": self.ratios()}

    def ratios(self) -> dict[str, float]:
        return lead_ratios(
            self.rows, lambda r: r.forecasts_per_s, lambda r: r.streams, WAYS, "forecast_stream"
        )

    def targets(self) -> dict[str, tuple[str, float]]:
        return {}

    def tables(self) -> list[TextTable]:
        header = ["way", "clients", "forecasts/s", "p50 ms", "p99 ms", "server CPU us/step"]
        body = [
            [r.way, str(r.streams), f"{r.forecasts_per_s:,.1f}", f"{r.p50_ms:.2f}", f"{r.p99_ms:.2f}",
             f"{r.server_cpu_us_per_step:.1f}"]
            for r in self.rows
        ]  # fmt: skip
        title = f"Forecasts of {HORIZON} steps ({MODEL}: the Taylor GRU's shape, window {WINDOW})"
        return [TextTable(title, tuple(header), [tuple(row) for row in body])]


def measure(repository: Path, streams: tuple[int, ...], duration_s: float, logs: Path) -> Forecasts:
    write_model(repository)
    rows = []
    with running_server(serve_command(repository, "--metrics-port", "-1"), logs / "forecast.log") as server:
        clock = cpu_clock(server.pid)
        for way in WAYS:
            for count in streams:
                rows.append(asyncio.run(_load(server.target, way, count, duration_s, clock)))
    return Forecasts(rows)


def main() -> None:
    section_main(__doc__.splitlines()[0], measure, STREAMS, RESULTS)


if __name__ == "__main__":
    main()
