"""What the sections that compare ways of doing one thing (forecasts, translations) share: the closed-loop
run of one way at a count of clients, the ratios of the lead way's rate over each other way's, and the
command line that runs a section alone.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from bench.report import print_and_write
from seqserve.v1 import seqserve_pb2_grpc as pb_grpc

# One client of a way: (stub, until, latencies, index) -> what it did by `until` (forecasts, words),
# appending each one's latency in seconds.
Client = Callable[[pb_grpc.InferenceServiceStub, float, list[float], int], Awaitable[int]]
WARM_S = 0.3


@dataclass(frozen=True)
class Run:
    count: int  # what the clients did, together (at least 1)
    elapsed_s: float
    p50_ms: float
    p99_ms: float
    server_cpu_s: float  # the server's CPU over the run

    @property
    def rate(self) -> float:
        return self.count / self.elapsed_s


async def closed_loop(
    target: str, client: Client, clients: int, duration_s: float, server_cpu: Callable[[], float]
) -> Run:
    """`clients` clients of one way, each awaiting an answer before it asks again, for `duration_s` after a
    warm-up of WARM_S."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        warm = time.perf_counter() + WARM_S
        await asyncio.gather(*(client(stub, warm, [], i) for i in range(clients)))
        latencies: list[float] = []
        cpu_before, started = server_cpu(), time.perf_counter()
        counts = await asyncio.gather(
            *(client(stub, started + duration_s, latencies, i) for i in range(clients))
        )
        elapsed, cpu = time.perf_counter() - started, server_cpu() - cpu_before
    p50, p99 = np.percentile(latencies, [50, 99]) * 1000
    return Run(max(sum(counts), 1), elapsed, round(float(p50), 2), round(float(p99), 2), cpu)


def lead_ratios(
    rows: Sequence[Any],
    rate: Callable[[Any], float],
    count: Callable[[Any], int],
    ways: Sequence[str],
    name: str,
) -> dict[str, float]:
    """`{name}_vs_{other way}_{count}`: the first way's rate over each other way's, at each client count
    (rows: each with a `way`; several rows of one way and count are averaged)."""

    def mean(way: str, clients: int) -> float:
        return statistics.fmean(rate(r) for r in rows if r.way == way and count(r) == clients)

    return {
        f"{name}_vs_{other.replace(' ', '_')}_{clients}": round(
            mean(ways[0], clients) / mean(other, clients), 2
        )
        for other in ways[1:]
        for clients in sorted({count(r) for r in rows})
    }


# measure(repository, client counts, duration_s, logs folder) -> the section (bench.sections.BenchSection)
Measure = Callable[[Path, tuple[int, ...], float, Path], Any]


def section_main(description: str, measure: Measure, counts: tuple[int, ...], results: Path) -> None:
    """`python -m bench.<section> [--duration-s S] [--clients 1,16,64] [--out FILE]`: the section's rows
    in a scratch repository, its tables printed, its JSON written."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--duration-s", type=float, default=4.0)
    parser.add_argument("--clients", "--streams", default=",".join(map(str, counts)))
    parser.add_argument("--out", type=Path, default=results)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="seqserve-bench-") as work:
        chosen = tuple(map(int, args.clients.split(",")))
        section = measure(Path(work) / "repository", chosen, args.duration_s, Path(work))
    print_and_write(section, args.out)
