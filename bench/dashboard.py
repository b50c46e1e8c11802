"""`python -m bench.dashboard` (`make dashboard`): the Grafana dashboard's panels, drawn from a real run.

Grafana cannot be installed here, so the picture in the README comes from the same PromQL: a seqserve
serves two seeded GRUs, Debian's Prometheus scrapes it every second, a schedule of load phases runs against
it (streams of several counts and chunk sizes on both models, Classify calls, streams left idle until the
server evicts them, requests it refuses), then every panel's query of docker/grafana/dashboards/seqserve.json
runs as a range query over the run and matplotlib draws them into one PNG.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import grpc
import numpy as np
import typer

from bench.bench_model import FEATURES, write_bench_model
from bench.dashboard_plot import PanelData, SeriesData, plot_dashboard
from bench.grafana_dashboard import Panel, expand, load_dashboard, panels, series_name
from bench.load_client import LoadSpec
from bench.load_pool import LoadPool
from bench.prometheus_server import Prometheus, start_prometheus
from seqserve.service.server.launch import running_server, serve_command
from seqserve.v1 import seqserve_pb2 as pb
from seqserve.v1.seqserve_pb2_grpc import InferenceServiceStub

logger = logging.getLogger(__name__)

# Two models of different cost, so the per-model series differ: (name, hidden, layers).
MODELS = (("gru-large", 128, 2), ("gru-small", 32, 1))
# Grafana's $__rate_interval is about four scrapes; with 1 s scrapes a few more keep short phases smooth.
SCRAPE_INTERVAL = "1s"
RATE_INTERVAL = "10s"
STEP_S = 2.0
IDLE_TIMEOUT_MS = 1500


@dataclass(frozen=True)
class Phase:
    """A stretch of the run: what each model's load generator sends meanwhile (mode, streams, chunk)."""

    name: str
    loads: tuple[tuple[str, int, int], ...]  # one per model in MODELS


PHASES = (
    Phase("8 + 4 streams, chunk 8", (("stream", 8, 8), ("stream", 4, 8))),
    Phase("64 + 16 streams, chunk 1 / 4", (("stream", 64, 1), ("stream", 16, 4))),
    Phase("256 streams, chunk 1 + Classify", (("stream", 256, 1), ("resend", 8, 1))),
    Phase("16 + 64 streams, chunk 16 / 1", (("stream", 16, 16), ("stream", 64, 1))),
)


@dataclass
class RunLog:
    """Wall-clock marks of the run, for the plot's phase bands."""

    start: float = 0.0
    end: float = 0.0
    phases: list[tuple[str, float, float]] = field(default_factory=list)


def _run_phase(pools: list[LoadPool], target: str, phase: Phase, seconds: float) -> None:
    specs = [
        LoadSpec(
            target=target,
            model=name,
            features=FEATURES,
            mode=mode,
            streams=streams,
            chunk=chunk,
            warmup_s=0.0,
            duration_s=seconds,
        )  # fmt: skip
        for (name, _, _), (mode, streams, chunk) in zip(MODELS, phase.loads, strict=True)
    ]
    with ThreadPoolExecutor(len(pools)) as threads:
        for done in [threads.submit(pool.run, spec) for pool, spec in zip(pools, specs, strict=True)]:
            done.result()


def _idle_until_evicted(stub: InferenceServiceStub, model: str) -> str:
    """Open a stream with a short idle timeout, send one chunk, say nothing more: the server evicts it."""
    chunk = np.zeros((2, FEATURES), dtype="<f4")
    requests = iter(
        [
            pb.StreamRequest(open=pb.StreamOpen(model=model, idle_timeout_ms=IDLE_TIMEOUT_MS)),
            pb.StreamRequest(chunk=pb.StreamChunk(steps=2, values=chunk.tobytes())),
        ]
    )
    blocked = threading.Event()

    def then_wait() -> Iterator[pb.StreamRequest]:
        yield from requests
        blocked.wait()  # keep the request side open so only the server's timer ends the stream

    try:
        for _ in stub.Stream(then_wait(), timeout=30):
            pass
        return "OK"
    except grpc.RpcError as error:
        return error.code().name
    finally:
        blocked.set()


def _refused(stub: InferenceServiceStub, model: str) -> list[str]:
    """Requests the server turns away, one of each kind: unknown model, a chunk of the wrong width."""
    codes = []
    wrong_width = np.zeros((2, FEATURES + 1), dtype="<f4")
    for stream_open, chunk in (
        (pb.StreamOpen(model="no-such-model"), None),
        (pb.StreamOpen(model=model), pb.StreamChunk(steps=2, values=wrong_width.tobytes())),
    ):
        messages = [pb.StreamRequest(open=stream_open)]
        if chunk is not None:
            messages.append(pb.StreamRequest(chunk=chunk))
        try:
            list(stub.Stream(iter(messages), timeout=10))
            codes.append("OK")
        except grpc.RpcError as error:
            codes.append(error.code().name)
    return codes


def _side_traffic(target: str, stop: threading.Event) -> dict[str, int]:
    """Every few seconds until `stop`: a few streams left to idle out and a few refused requests."""
    seen: dict[str, int] = {}
    with grpc.insecure_channel(target) as channel, ThreadPoolExecutor(4) as threads:
        stub = InferenceServiceStub(channel)
        while not stop.wait(3.0):
            idle = [threads.submit(_idle_until_evicted, stub, name) for name, _, _ in MODELS]
            for code in _refused(stub, MODELS[0][0]) + [done.result() for done in idle]:
                seen[code] = seen.get(code, 0) + 1
    return seen


def run_load(target: str, phase_s: float, processes: int) -> RunLog:
    log = RunLog(start=time.time())
    stop = threading.Event()
    pools = [LoadPool(processes) for _ in MODELS]
    with ThreadPoolExecutor(1) as side:
        traffic = side.submit(_side_traffic, target, stop)
        try:
            for phase in PHASES:
                began = time.time()
                _run_phase(pools, target, phase, phase_s)
                log.phases.append((phase.name, began, time.time()))
        finally:
            stop.set()
            for pool in pools:
                pool.close()
        logger.info("side traffic answered: %s", traffic.result())
    log.end = time.time()
    return log


def collect(prometheus: Prometheus, dashboard_panels: list[Panel], log: RunLog) -> list[PanelData]:
    """Each panel's queries over the run, as Grafana would send them with every model selected."""
    collected = []
    for panel in dashboard_panels:
        series = []
        for query in panel.queries:
            expr = expand(query.expr, RATE_INTERVAL)
            if query.instant:
                rows = prometheus.query(expr)
                series += [
                    SeriesData(series_name(query.legend, row["metric"]), row["metric"], [], [])
                    for row in rows
                ]
                continue
            for row in prometheus.query_range(expr, log.start, log.end, STEP_S):
                times = [float(t) - log.start for t, _ in row["values"]]
                values = [float(v) for _, v in row["values"]]
                series.append(
                    SeriesData(series_name(query.legend, row["metric"]), row["metric"], times, values)
                )
        collected.append(PanelData(panel, series))
    return collected


def main(
    out: Annotated[Path, typer.Option(help="PNG to write.")] = Path("docs/img/dashboard.png"),
    phase_s: Annotated[float, typer.Option(help="Seconds of each load phase.", min=1.0)] = 30.0,
    processes: Annotated[int, typer.Option(help="Load-generator processes per model.", min=1)] = 1,
) -> None:
    """Run seqserve under load with Prometheus scraping it; draw the dashboard's panels into one PNG."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if shutil.which("prometheus") is None:
        raise typer.Exit(f"prometheus is not installed: `apt-get install prometheus` ({__name__} needs it)")
    with tempfile.TemporaryDirectory(prefix="seqserve-dashboard-") as work:
        work_dir = Path(work)
        repository = work_dir / "repository"
        for name, hidden, layers in MODELS:
            write_bench_model(repository, work_dir, name=name, hidden=hidden, layers=layers)
        with running_server(serve_command(repository), work_dir / "seqserve.log") as server:
            prometheus = start_prometheus(server.metrics_target, work_dir / "prometheus", SCRAPE_INTERVAL)
            try:
                prometheus.wait_for('up{job="seqserve"}', lambda up: up == 1)
                log = run_load(server.target, phase_s, processes)
                time.sleep(3.0)  # two more scrapes, so the last phase's counters are in
                log.end = time.time()
                data = collect(prometheus, panels(load_dashboard()), log)
            finally:
                prometheus.stop()
    plot_dashboard(data, log.phases, log.start, out)
    empty = [d.panel.title for d in data if not any(s.values or s.labels for s in d.series)]
    print(
        f"wrote {out}: {len(data)} panels over {log.end - log.start:.0f} s; without data: {empty or 'none'}"
    )


if __name__ == "__main__":
    typer.run(main)
