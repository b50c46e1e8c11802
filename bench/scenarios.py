"""Every scenario of the bench: the three servers run side by side as subprocesses, one load pool drives them.

The sizes live in `BenchConfig`: the full run is the published one; `QUICK` keeps the smoke test to seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from bench.bench_model import BENCH_MODEL, model_path, open_session
from bench.checkpoint_probe import CHECKPOINT_EVERY, CheckpointFigures, measure_resume
from bench.load_client import LoadSpec
from bench.load_pool import LoadPool, LoadResult
from bench.ort_ceiling import OrtResult, measure_ort
from bench.process_costs import process_tree_cpu_seconds, rss_mb, thread_cpu_seconds
from bench.prometheus_scrape import scrape
from seqserve.contract import ModelInfo
from seqserve.service.server.launch import ServerProcess, running_server

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
    # Each ratio's two sides run back to back, this many times; the median is reported. On a shared box
    # the load drifts between scenarios far apart in time, and a ratio of neighbours resists that.
    ratio_rounds: int = 3
    resend_steps: int = 256
    idle_streams: int = 10_000
    warmup_s: float = 1.0
    duration_s: float = 4.0
    ort_duration_s: float = 2.0
    # `seqserve serve --workers N` rows, at the ratio concurrency; connections of this many streams each.
    worker_counts: tuple[int, ...] = (1, 2)
    worker_streams_per_channel: int = 4
    # Triton peer (bench/triton_peer.py): sequences in flight, perf_analyzer's window per trial.
    # Not 64: this tritonserver (nvidia-pytriton 0.7.0) segfaults in TRITONBACKEND_RequestRelease after
    # the Python backend's execute once more than 16 sequences run (32 and 64 tried, max batch 32 or 64).
    triton_sequences: tuple[int, ...] = (1, 16)
    triton_window_ms: int = 1500
    # seqserve's own V2 endpoint (bench/kserve_v2.py) has no such limit: the V2/v1 target is at 64.
    v2_sequences: tuple[int, ...] = (1, 16, 64)
    v2_target_sequences: int = 64  # measured `ratio_rounds` times, the order alternated
    # Generation rows (bench/generation.py): concurrent generations, characters each, the model's hidden
    # size. The ratio concurrency's generate / client-loop pair runs `ratio_rounds` times, alternated.
    generation_counts: tuple[int, ...] = (1, 16, 64)
    generation_tokens: int = 200
    generation_hidden: int = 384
    # Declared-graph rows (bench/declared.py): concurrent streams, seqserve and the per-stream loop.
    declared_streams: tuple[int, ...] = (1, 16, 64)
    # Forecast rows (bench/forecast.py): concurrent clients, each way of getting a forecast.
    forecast_streams: tuple[int, ...] = (1, 16, 64)
    # Forecast accuracy (bench/forecast_accuracy.py): Taylor and M1 trained at the default budget; a
    # number caps the epochs (the quick run's smoke test).
    forecast_epochs: int | None = None
    # Translation rows (bench/translate.py): concurrent clients of one word each, each way of translating.
    translate_clients: tuple[int, ...] = (1, 16, 64)

    @property
    def chunks(self) -> tuple[int, int]:
        return (self.small_chunk, self.large_chunk)

    @property
    def baseline_streams(self) -> tuple[int, int]:
        return (1, self.ratio_streams)

    def scenario_count(self) -> int:
        """For the progress bar: ceiling, echo, naive and seqserve grids, ratio rounds, idle, workers,
        Triton, the KServe V2 rows (a step a round), checkpoints."""
        grids = 2 * 2 * len(self.stream_counts)
        rounds = len(fields(RatioRound)) * self.ratio_rounds
        v2 = 2 * (
            len(self.v2_sequences) + (self.ratio_rounds - 1) * (self.v2_target_sequences in self.v2_sequences)
        )
        checkpoints = 2 * len(CHECKPOINT_EVERY) + 1
        generation = 1 + 3 * len(self.generation_counts) + 2 * (self.ratio_rounds - 1)
        declared = 1
        forecast = 3
        translate = 1
        return (
            4
            + 4
            + grids
            + rounds
            + 2
            + 2 * len(self.worker_counts)
            + 1
            + v2
            + checkpoints
            + generation
            + declared
            + forecast
            + translate
        )


QUICK = BenchConfig(
    stream_counts=(1, 4),
    small_chunk=1,
    large_chunk=4,
    ratio_streams=4,
    resend_steps=8,
    idle_streams=20,
    ratio_rounds=1,
    warmup_s=0.2,
    duration_s=0.5,  # long enough that a loaded 2-core box still answers in every window
    ort_duration_s=0.1,
    worker_counts=(2,),
    triton_sequences=(1,),
    triton_window_ms=300,
    v2_sequences=(1,),
    generation_counts=(1, 4),
    generation_tokens=10,
    generation_hidden=16,
    declared_streams=(1, 4),
    forecast_streams=(1, 4),
    forecast_epochs=1,
    translate_clients=(1, 4),
)


@dataclass
class ServedFigures:
    """One load scenario against one server: the clients' figures and the server's own costs."""

    server: str  # echo | naive | seqserve
    load: LoadResult
    server_cpu_us_per_step: float
    # Server CPU per message by thread group (see ServerProcess.thread_cpu_seconds): where its time goes.
    server_cpu_us_per_msg_by_thread: dict[str, float]
    mean_batch_size: float | None = None  # seqserve only, from its batch-size histogram

    @property
    def cores_busy(self) -> float:
        """Cores the server and the load generator kept busy together; near the core count the box is full."""
        server = self.server_cpu_us_per_step * self.load.steps_per_s
        return (server + self.load.client_cpu_us_per_msg * self.load.msgs_per_s) / 1e6

    def to_dict(self) -> dict[str, Any]:
        return {
            "server": self.server,
            **asdict(self.load),
            "server_cpu_us_per_step": self.server_cpu_us_per_step,
            "server_cpu_us_per_msg_by_thread": self.server_cpu_us_per_msg_by_thread,
            "mean_batch_size": self.mean_batch_size,
            "cores_busy": self.cores_busy,
        }


@dataclass
class RatioRound:
    """The ratios from scenarios run back to back, at the ratio concurrency."""

    echo_small: ServedFigures
    seqserve_small: ServedFigures
    resend: ServedFigures
    naive_large: ServedFigures
    seqserve_large: ServedFigures
    ort_large: OrtResult

    def ratios(self) -> dict[str, float]:
        small, large = self.seqserve_small.load, self.seqserve_large.load
        return {
            "service_vs_grpc_ceiling_chunk1_64": small.msgs_per_s / self.echo_small.load.msgs_per_s,
            "service_vs_ort_chunk32_64": large.steps_per_s / self.ort_large.steps_per_s,
            "server_cpu_vs_ort_cpu_chunk32_64": self.seqserve_large.server_cpu_us_per_step
            / self.ort_large.cpu_us_per_step,
            "service_vs_naive_chunk32_64": large.steps_per_s / self.naive_large.load.steps_per_s,
            "service_vs_resend_T256": small.steps_per_s / self.resend.load.steps_per_s,
            "p99_ms_chunk1_64": small.p99_ms,
            "p99_ms_chunk32_64": large.p99_ms,
        }

    def to_dict(self) -> dict[str, Any]:
        figures = {
            name: value.to_dict() if isinstance(value, ServedFigures) else asdict(value)
            for name, value in vars(self).items()
        }
        return {"ratios": self.ratios(), **figures}


def median_ratios(rounds: list[RatioRound]) -> dict[str, float]:
    per_round = [r.ratios() for r in rounds]
    return {key: statistics.median(ratios[key] for ratios in per_round) for key in per_round[0]}


@dataclass
class IdleFigures:
    """A fresh server holding `streams` idle streams (each opened and answered one chunk)."""

    server: str
    streams: int
    open_s: float
    rss_mb_before: float
    rss_mb_open: float
    rss_mb_after_close: float
    kb_per_stream: float
    sent_steps: int
    server_steps: int
    # From seqserve's metrics; the echo server has none.
    streams_active_open: float | None = None
    streams_active_after_close: float | None = None


@dataclass
class Servers:
    echo: ServerProcess
    naive: ServerProcess
    seqserve: ServerProcess


@dataclass
class BenchRun:
    config: BenchConfig
    pool: LoadPool
    repository: Path
    info: ModelInfo
    device: str
    logs: Path
    advance: Callable[[str], None] = field(default=lambda name: None)

    def _spec(self, target: str, mode: str, streams: int, chunk: int = 1, **options) -> LoadSpec:
        """`options`: other LoadSpec fields (streams_per_channel, checkpoint_every_chunks, include_scores)."""
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
            **options,
        )

    def command(self, kind: str, repository: Path | None = None) -> list[str]:
        """The command line that starts the seqserve, echo or naive server on the bench repository (or
        another: the generation rows' language model has its own)."""
        repository = repository or self.repository
        if kind == "seqserve":
            return [
                *(sys.executable, "-m", "seqserve.cli", "serve", "--repository", str(repository)),
                *("--port", "0", "--metrics-port", "0", "--device", self.device, "--grace-s", "1"),
                # Throughput and idle streams past any admission bound: no stream may be refused here.
                *("--max-streams", str(max(20_000, 2 * self.config.idle_streams))),
                *("--max-accept-delay-ms", "0"),
                *("--inference-threads", str(INFERENCE_THREADS)),
            ]
        return [
            *(sys.executable, "-m", "bench.baseline_servers", kind, "--repository", str(repository)),
            *("--model", BENCH_MODEL, "--device", self.device, "--inference-threads", str(INFERENCE_THREADS)),
        ]

    @contextlib.contextmanager
    def servers(self) -> Iterator[Servers]:
        """All three servers at once, so ratio rounds can alternate between them; idle ones cost nothing."""
        with contextlib.ExitStack() as stack:
            started = {
                kind: stack.enter_context(running_server(self.command(kind), self.logs / f"{kind}.log"))
                for kind in ("echo", "naive", "seqserve")
            }
            yield Servers(**started)

    def ort_ceiling(self) -> list[OrtResult]:
        results = []
        for batch in self.config.baseline_streams:
            for chunk in self.config.chunks:
                self.advance(f"onnxruntime batch {batch} chunk {chunk}")
                results.append(self._ort(batch, chunk))
        return results

    def _ort(self, batch: int, chunk: int) -> OrtResult:
        session = open_session(model_path(self.repository), self.device, INFERENCE_THREADS)
        return measure_ort(session, self.info, batch, chunk, self.config.ort_duration_s)

    def served(
        self,
        server: ServerProcess,
        name: str,
        mode: str,
        streams: int,
        chunk: int,
        **options,
    ) -> ServedFigures:
        """One load scenario; the server's CPU time and metrics are read as the window opens and closes."""

        def probe() -> tuple[float, dict[str, float], dict[str, float]]:
            metrics = scrape(server.metrics_url) if server.metrics_url else {}
            return process_tree_cpu_seconds(server.pid), thread_cpu_seconds(server.pid), metrics

        spec = self._spec(server.target, mode, streams, chunk, **options)
        load, before, after = self.pool.run(spec, probe)
        (cpu_before, threads_before, metrics_before), (cpu_after, threads_after, metrics_after) = (
            before,
            after,
        )
        cpu_per_step = (cpu_after - cpu_before) / load.steps * 1e6 if load.steps else 0.0
        by_thread = {
            name: (seconds - threads_before.get(name, 0.0)) / load.messages * 1e6 if load.messages else 0.0
            for name, seconds in threads_after.items()
        }
        batches, rows = (
            metrics_after.get(f"{BATCH_SIZE_METRIC}_{part}", 0.0)
            - metrics_before.get(f"{BATCH_SIZE_METRIC}_{part}", 0.0)
            for part in ("count", "sum")
        )
        return ServedFigures(name, load, cpu_per_step, by_thread, rows / batches if batches else None)

    def baseline(self, server: ServerProcess, kind: str) -> list[ServedFigures]:
        """echo or naive, at both chunk sizes, at 1 stream and at the ratio concurrency."""
        figures = []
        for chunk in self.config.chunks:
            for streams in self.config.baseline_streams:
                self.advance(f"{kind} chunk {chunk} x {streams} streams")
                figures.append(self.served(server, kind, "stream", streams, chunk))
        return figures

    def grids(self, naive: ServerProcess, seqserve: ServerProcess) -> tuple[list[ServedFigures], ...]:
        """The naive server and seqserve at every cell of the grid (concurrency x chunk), the two back to
        back in each cell, so the cell-by-cell comparison sees the same load on the box."""
        naive_grid, seqserve_grid = [], []
        for chunk in self.config.chunks:
            for streams in self.config.stream_counts:
                self.advance(f"naive chunk {chunk} x {streams} streams")
                naive_grid.append(self.served(naive, "naive", "stream", streams, chunk))
                self.advance(f"seqserve chunk {chunk} x {streams} streams")
                seqserve_grid.append(self.served(seqserve, "seqserve", "stream", streams, chunk))
        return naive_grid, seqserve_grid

    def workers(self) -> list[ServedFigures]:
        """`seqserve serve --workers N` at the ratio concurrency, both chunk sizes; CPU of all processes."""
        figures = []
        streams, per_channel = self.config.ratio_streams, self.config.worker_streams_per_channel
        for count in self.config.worker_counts:
            command = [*self.command("seqserve"), "--workers", str(count)]
            with running_server(command, self.logs / f"seqserve-workers-{count}.log") as server:
                for chunk in self.config.chunks:
                    self.advance(f"seqserve --workers {count}: chunk {chunk} x {streams}")
                    name = f"seqserve --workers {count}"
                    figures.append(
                        self.served(server, name, "stream", streams, chunk, streams_per_channel=per_channel)
                    )
        return figures

    def checkpoints(self) -> CheckpointFigures:
        """Checkpoint overhead at the ratio concurrency: both chunk sizes, a checkpoint every 0, 16 and 1
        chunks, on one server with a state key (the rows alternate, so drift hits them alike); then the
        token's size and the time a resume's open takes against a plain open."""
        key_file = self.logs / "state-key"
        key_file.parent.mkdir(parents=True, exist_ok=True)
        key_file.write_text(secrets.token_hex(32) + "\n")
        command = [*self.command("seqserve"), "--state-key-file", str(key_file)]
        streams, rows = self.config.ratio_streams, []
        with running_server(command, self.logs / "seqserve-checkpoints.log") as server:
            for chunk in self.config.chunks:
                for every in CHECKPOINT_EVERY:
                    self.advance(f"checkpoint every {every}: chunk {chunk} x {streams}")
                    figures = self.served(
                        server, f"every {every}", "stream", streams, chunk, checkpoint_every_chunks=every
                    )
                    rows.append((every, figures))
            self.advance("checkpoint token and resume time")
            probe = asyncio.run(measure_resume(server.target, BENCH_MODEL, self.info.features))
        return CheckpointFigures(rows, probe)

    def ratio_rounds(self, servers: Servers) -> list[RatioRound]:
        return [self._ratio_round(servers, index) for index in range(1, self.config.ratio_rounds + 1)]

    def _ratio_round(self, servers: Servers, index: int) -> RatioRound:
        streams, small, large = self.config.ratio_streams, self.config.small_chunk, self.config.large_chunk

        def step(name: str) -> None:
            self.advance(f"ratio round {index}/{self.config.ratio_rounds}: {name}")

        step(f"echo chunk {small}")
        echo = self.served(servers.echo, "echo", "stream", streams, small)
        step(f"seqserve chunk {small}")
        seqserve_small = self.served(servers.seqserve, "seqserve", "stream", streams, small)
        step(f"resend T={self.config.resend_steps}")
        resend = self.served(servers.seqserve, "seqserve", "resend", streams, 1)
        step(f"naive chunk {large}")
        naive = self.served(servers.naive, "naive", "stream", streams, large)
        step(f"seqserve chunk {large}")
        seqserve_large = self.served(servers.seqserve, "seqserve", "stream", streams, large)
        step(f"onnxruntime batch {streams} chunk {large}")
        return RatioRound(echo, seqserve_small, resend, naive, seqserve_large, self._ort(streams, large))

    def idle_scale(self, kind: str) -> IdleFigures:
        """A fresh server: RSS warm, with every idle stream open, and after they all closed."""
        self.advance(f"idle scale: {kind}, {self.config.idle_streams} streams")
        with running_server(self.command(kind), self.logs / f"{kind}-idle.log") as server:
            # One short stream first, so the runtime's buffers exist before RSS is taken.
            warm = self._spec(server.target, "stream", 1, self.config.small_chunk)
            self.pool.run(LoadSpec(**{**asdict(warm), "warmup_s": 0.0, "duration_s": 0.2}))
            rss_before = rss_mb(server.pid)
            opened = self.pool.open_idle(
                self._spec(server.target, "idle", self.config.idle_streams, self.config.small_chunk)
            )
            rss_open = rss_mb(server.pid)
            active_open = scrape(server.metrics_url)[STREAMS_ACTIVE_METRIC] if server.metrics_url else None
            tallies = self.pool.close_idle()
            active_after = (
                _settled_gauge(server.metrics_url, STREAMS_ACTIVE_METRIC) if server.metrics_url else None
            )
            return IdleFigures(
                server=kind,
                streams=opened,
                open_s=max(tally.open_s for tally in tallies),
                rss_mb_before=rss_before,
                rss_mb_open=rss_open,
                rss_mb_after_close=rss_mb(server.pid),
                kb_per_stream=(rss_open - rss_before) * 1024 / opened,
                sent_steps=sum(tally.sent_steps for tally in tallies),
                server_steps=sum(tally.server_steps for tally in tallies),
                streams_active_open=active_open,
                streams_active_after_close=active_after,
            )


def _settled_gauge(url: str, name: str, timeout_s: float = 5.0) -> float:
    """A gauge that should fall to 0 once the server has cleaned up; waits briefly for it."""
    deadline = time.monotonic() + timeout_s
    while (value := scrape(url)[name]) != 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    return value
