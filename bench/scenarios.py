"""Every scenario of the bench, each against a fresh server subprocess and the same load pool.

The sizes live in `BenchConfig`: the full run follows the issue; `QUICK` keeps the smoke test to seconds.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.bench_model import BENCH_MODEL, model_path, open_session
from bench.load_client import LoadSpec
from bench.load_pool import LoadPool, LoadResult
from bench.ort_ceiling import OrtResult, measure_ort
from bench.prometheus_scrape import scrape
from bench.server_process import ServerProcess, running_server
from seqserve.contract import ModelInfo

logger = logging.getLogger(__name__)

BATCH_SIZE_METRIC = "seqserve_batch_size"
STREAMS_ACTIVE_METRIC = "seqserve_streams_active"
# onnxruntime intra-op threads, the same for the ceiling, the naive server and seqserve.
INFERENCE_THREADS = 1
# Idle streams must outlive the whole idle scenario (seqserve clamps to its --max-idle-timeout-s).
IDLE_TIMEOUT_MS = 300_000


@dataclass(frozen=True)
class BenchConfig:
    stream_counts: tuple[int, ...] = (1, 4, 16, 64, 256)
    small_chunk: int = 1
    large_chunk: int = 32
    # The concurrency the ratios are taken at; baselines and the ceiling run at 1 and at this.
    ratio_streams: int = 64
    resend_steps: int = 256
    idle_streams: int = 10_000
    warmup_s: float = 1.0
    duration_s: float = 4.0
    ort_duration_s: float = 2.0

    @property
    def chunks(self) -> tuple[int, int]:
        return (self.small_chunk, self.large_chunk)

    @property
    def baseline_streams(self) -> tuple[int, int]:
        return (1, self.ratio_streams)

    def scenario_count(self) -> int:
        """For the progress bar: ceiling, echo, naive, seqserve grid, resend, idle."""
        return 4 + 4 + 4 + 2 * len(self.stream_counts) + 1 + 1


QUICK = BenchConfig(
    stream_counts=(1, 4),
    small_chunk=1,
    large_chunk=4,
    ratio_streams=4,
    resend_steps=8,
    idle_streams=20,
    warmup_s=0.2,
    duration_s=0.5,
    ort_duration_s=0.2,
)


@dataclass
class ServedFigures:
    """One load scenario against one server: the clients' figures and the server's own costs."""

    server: str  # echo | naive | seqserve
    load: LoadResult
    server_cpu_us_per_step: float
    mean_batch_size: float | None = None  # seqserve only, from its batch-size histogram

    def to_dict(self) -> dict[str, Any]:
        return {
            "server": self.server,
            **asdict(self.load),
            "server_cpu_us_per_step": self.server_cpu_us_per_step,
            "mean_batch_size": self.mean_batch_size,
        }


@dataclass
class IdleFigures:
    streams: int
    open_s: float
    rss_mb_before: float
    rss_mb_open: float
    rss_mb_after_close: float
    streams_active_open: float
    streams_active_after_close: float
    sent_steps: int
    server_steps: int


@dataclass
class BenchRun:
    config: BenchConfig
    pool: LoadPool
    repository: Path
    info: ModelInfo
    device: str
    logs: Path
    advance: Callable[[str], None] = field(default=lambda name: None)

    def _spec(self, target: str, mode: str, streams: int, chunk: int = 1) -> LoadSpec:
        return LoadSpec(
            target=target,
            model=BENCH_MODEL,
            features=self.info.features,
            mode=mode,
            streams=streams,
            chunk=chunk,
            resend_steps=self.config.resend_steps,
            warmup_s=self.config.warmup_s,
            duration_s=self.config.duration_s,
            idle_timeout_ms=IDLE_TIMEOUT_MS,
        )

    def seqserve_command(self) -> list[str]:
        return [
            *(sys.executable, "-m", "seqserve.cli", "serve", "--repository", str(self.repository)),
            *("--port", "0", "--metrics-port", "0", "--device", self.device, "--grace-s", "1"),
            *("--max-streams", str(max(20_000, 2 * self.config.idle_streams))),
            *("--inference-threads", str(INFERENCE_THREADS)),
        ]

    def _baseline_command(self, kind: str) -> list[str]:
        return [
            *(sys.executable, "-m", "bench.baseline_servers", kind, "--repository", str(self.repository)),
            *("--model", BENCH_MODEL, "--device", self.device, "--inference-threads", str(INFERENCE_THREADS)),
        ]

    def ort_ceiling(self) -> list[OrtResult]:
        session = open_session(model_path(self.repository), self.device, INFERENCE_THREADS)
        results = []
        for batch in self.config.baseline_streams:
            for chunk in self.config.chunks:
                self.advance(f"onnxruntime batch {batch} chunk {chunk}")
                results.append(measure_ort(session, self.info, batch, chunk, self.config.ort_duration_s))
        return results

    def _served(self, server: ServerProcess, name: str, spec: LoadSpec) -> ServedFigures:
        def probe() -> tuple[float, dict[str, float]]:
            return server.cpu_seconds(), scrape(server.metrics_url) if server.metrics_url else {}

        load, (cpu_before, metrics_before), (cpu_after, metrics_after) = self.pool.run(spec, probe)
        cpu_per_step = (cpu_after - cpu_before) / load.steps * 1e6 if load.steps else 0.0
        batches = metrics_after.get(f"{BATCH_SIZE_METRIC}_count", 0.0) - metrics_before.get(
            f"{BATCH_SIZE_METRIC}_count", 0.0
        )
        rows = metrics_after.get(f"{BATCH_SIZE_METRIC}_sum", 0.0) - metrics_before.get(
            f"{BATCH_SIZE_METRIC}_sum", 0.0
        )
        return ServedFigures(name, load, cpu_per_step, rows / batches if batches else None)

    def baseline(self, kind: str) -> list[ServedFigures]:
        """echo or naive, at both chunk sizes, at 1 stream and at the ratio concurrency."""
        figures = []
        with running_server(self._baseline_command(kind), self.logs / f"{kind}.log") as server:
            for chunk in self.config.chunks:
                for streams in self.config.baseline_streams:
                    self.advance(f"{kind} chunk {chunk} x {streams} streams")
                    figures.append(
                        self._served(server, kind, self._spec(server.target, "stream", streams, chunk))
                    )
        return figures

    def seqserve(self) -> tuple[list[ServedFigures], ServedFigures]:
        """The grid of chunk sizes and stream counts, then stateless resend through Classify."""
        grid = []
        with running_server(self.seqserve_command(), self.logs / "seqserve.log") as server:
            for chunk in self.config.chunks:
                for streams in self.config.stream_counts:
                    self.advance(f"seqserve chunk {chunk} x {streams} streams")
                    spec = self._spec(server.target, "stream", streams, chunk)
                    grid.append(self._served(server, "seqserve", spec))
            self.advance(f"resend T={self.config.resend_steps} x {self.config.ratio_streams} streams")
            resend = self._served(
                server, "seqserve", self._spec(server.target, "resend", self.config.ratio_streams)
            )
        return grid, resend

    def idle_scale(self) -> IdleFigures:
        """A fresh server: RSS warm, with every idle stream open, and after they all closed."""
        self.advance(f"idle scale: {self.config.idle_streams} streams")
        with running_server(self.seqserve_command(), self.logs / "seqserve-idle.log") as server:
            # One short stream first, so the runtime's buffers exist before RSS is taken.
            warm = self._spec(server.target, "stream", 1, self.config.small_chunk)
            self.pool.run(LoadSpec(**{**asdict(warm), "warmup_s": 0.0, "duration_s": 0.2}))
            rss_before = server.rss_mb()
            self.pool.open_idle(
                self._spec(server.target, "idle", self.config.idle_streams, self.config.small_chunk)
            )
            rss_open = server.rss_mb()
            active_open = scrape(server.metrics_url)[STREAMS_ACTIVE_METRIC]
            tallies = self.pool.close_idle()
            active_after = _settled_gauge(server.metrics_url, STREAMS_ACTIVE_METRIC)
            return IdleFigures(
                streams=self.config.idle_streams,
                open_s=max(tally.open_s for tally in tallies),
                rss_mb_before=rss_before,
                rss_mb_open=rss_open,
                rss_mb_after_close=server.rss_mb(),
                streams_active_open=active_open,
                streams_active_after_close=active_after,
                sent_steps=sum(tally.sent_steps for tally in tallies),
                server_steps=sum(tally.server_steps for tally in tallies),
            )


def _settled_gauge(url: str, name: str, timeout_s: float = 5.0) -> float:
    """A gauge that should fall to 0 once the server has cleaned up; waits briefly for it."""
    deadline = time.monotonic() + timeout_s
    while (value := scrape(url)[name]) != 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    return value
