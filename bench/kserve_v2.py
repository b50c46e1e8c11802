"""The KServe V2 rows: Triton's perf_analyzer drives seqserve's `inference.GRPCInferenceService` endpoint
(sequences on one streaming call) beside seqserve's own load client on `seqserve.v1`, same server, same run.

Each cell runs the two back to back, so drift in the box's load hits both sides alike. perf_analyzer is
run by `bench.triton_peer.perf_analyzer` (its CSV report, `-f`) and installed by
scripts/install_perf_analyzer.sh; without it the rows are skipped with the reason. The target: the
V2 path within 10 % of seqserve.v1's throughput at 64 sequences (same batcher; only the conversion costs).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from bench.load_pool import LoadResult
from bench.process_costs import cpu_clock, process_tree_cpu_seconds, thread_cpu_seconds
from bench.prometheus_scrape import scrape
from bench.report import TextTable
from bench.scenarios import BATCH_SIZE_METRIC, BenchRun, ServedFigures
from bench.triton_peer import PERF_ANALYZER, perf_analyzer
from seqserve.service.server.launch import ServerProcess

TARGET_RATIO = 0.9
# The seqserve.v1 row is made like for like with perf_analyzer's, so the two differ only in their protocol:
# - Connections: tritonclient's C++ client (perf_analyzer's) shares one gRPC connection among at most this
#   many of its clients, one per sequence in flight: 64 sequences ride 11 connections (counted with `ss`).
#   Fewer sequences per connection cost the server more per request (fewer messages per read, write and
#   poll), so seqserve.v1's client rides the same share.
# - Answers: perf_analyzer asks for every output (logits, label, scores), so seqserve.v1's client asks
#   for the class scores too (include_scores), not only the label it gets by default.
CHANNEL_SHARE_ENV = "TRITON_CLIENT_GRPC_CHANNEL_MAX_SHARE_COUNT"
TRITONCLIENT_CHANNEL_SHARE = 6


def sequences_per_connection() -> int:
    """How many sequences perf_analyzer puts on one connection (its environment may change the default)."""
    return int(os.environ.get(CHANNEL_SHARE_ENV, TRITONCLIENT_CHANNEL_SHARE))


@dataclass
class V2Cell:
    """One (chunk, sequences): perf_analyzer on V2 and seqserve's client on seqserve.v1, back to back."""

    v2: ServedFigures
    v1: ServedFigures

    @property
    def ratio(self) -> float:
        v1 = self.v1.load.steps_per_s
        return self.v2.load.steps_per_s / v1 if v1 else 0.0


@dataclass
class V2Rounds:
    """A cell measured `len(rounds)` times, the order alternated; the round of median ratio stands for it."""

    rounds: list[V2Cell]

    @property
    def median(self) -> V2Cell:
        return sorted(self.rounds, key=lambda cell: cell.ratio)[len(self.rounds) // 2]

    def to_dict(self) -> dict[str, Any]:
        cell = self.median
        return {
            "v2": cell.v2.to_dict(), "v1": cell.v1.to_dict(), "v2_vs_v1_steps_per_s": cell.ratio,
            "round_ratios": [r.ratio for r in self.rounds],
        }  # fmt: skip


@dataclass
class KServeV2:
    """perf_analyzer on the V2 endpoint and seqserve's client on seqserve.v1, per (chunk, sequences)."""

    cells: list[V2Rounds]
    skipped: str | None = None
    target_sequences: int = 64
    key: str = "kserve_v2"

    def to_dict(self) -> dict[str, Any]:
        return {
            "skipped": self.skipped,
            "sequences_per_connection": sequences_per_connection(),
            "rows": [c.to_dict() for c in self.cells],
        }

    def ratios(self) -> dict[str, float]:
        return {
            f"v2_vs_v1_chunk{c.median.v2.load.chunk}_{c.median.v2.load.streams}": c.median.ratio
            for c in self.cells
        }

    def targets(self) -> dict[str, tuple[str, float]]:
        return {
            key: (">=", TARGET_RATIO) for key in self.ratios() if key.endswith(f"_{self.target_sequences}")
        }

    def tables(self) -> list[TextTable]:
        title = (
            "KServe V2 endpoint (perf_analyzer, --streaming, sequences) beside seqserve.v1 (own client), "
            f"{sequences_per_connection()} sequences per connection, class scores in both; "
            f"at {self.target_sequences} the median of the rounds"
        )
        if self.skipped:
            title += f": skipped, {self.skipped}"
        columns = ("chunk", "sequences", "V2 req/s", "V2 steps/s", "V2 p50 ms", "V2 p99 ms", "V2 cpu us/req",
                   "perf_analyzer cpu us/req", "v1 msgs/s", "v1 steps/s", "v1 p50 ms", "v1 p99 ms",
                   "v1 cpu us/msg", "v1 client cpu us/msg", "V2 / v1 steps/s", "rounds")  # fmt: skip
        table = TextTable(title, columns)
        for rounds in self.cells:
            cell = rounds.median
            v2, v1 = cell.v2.load, cell.v1.load
            table.add_row(
                str(v2.chunk), str(v2.streams), f"{v2.msgs_per_s:,.0f}", f"{v2.steps_per_s:,.0f}",
                f"{v2.p50_ms:.2f}", f"{v2.p99_ms:.2f}", f"{cell.v2.server_cpu_us_per_step * v2.chunk:.0f}",
                f"{v2.client_cpu_us_per_msg:.0f}", f"{v1.msgs_per_s:,.0f}", f"{v1.steps_per_s:,.0f}",
                f"{v1.p50_ms:.2f}", f"{v1.p99_ms:.2f}", f"{cell.v1.server_cpu_us_per_step * v1.chunk:.0f}",
                f"{v1.client_cpu_us_per_msg:.0f}", f"{cell.ratio:.2f}",
                " ".join(f"{r.ratio:.2f}" for r in rounds.rounds),
            )  # fmt: skip
        return [table]


def perf_served(run: BenchRun, server: ServerProcess, sequences: int, chunk: int) -> ServedFigures:
    """perf_analyzer on a seqserve V2 endpoint as a ServedFigures row (bench.experiments.ab's V2 rows):
    server CPU per request is the server's CPU over the whole perf_analyzer run divided by the chunks it
    answered in that time (its `seqserve_chunks_total`), so warm-up and trials outside perf_analyzer's
    window cancel."""
    before = scrape(server.metrics_url), process_tree_cpu_seconds(server.pid), thread_cpu_seconds(server.pid)
    v2 = perf_analyzer(
        "seqserve", server.target, cpu_clock(server.pid), sequences, chunk, run.info.features,
        run.config.triton_window_ms,
    )  # fmt: skip
    after = scrape(server.metrics_url), process_tree_cpu_seconds(server.pid), thread_cpu_seconds(server.pid)
    (metrics_before, cpu_before, threads_before), (metrics_after, cpu_after, threads_after) = before, after

    def grown(name: str) -> float:
        return metrics_after.get(name, 0.0) - metrics_before.get(name, 0.0)

    requests = grown("seqserve_chunks_total")
    by_thread = {
        name: (seconds - threads_before.get(name, 0.0)) / requests * 1e6 if requests else 0.0
        for name, seconds in threads_after.items()
    }
    batches = grown(f"{BATCH_SIZE_METRIC}_count")
    load = LoadResult(
        mode="v2", streams=sequences, chunk=chunk, processes=1, seconds=run.config.triton_window_ms / 1000,
        messages=int(requests), steps=int(requests) * chunk, msgs_per_s=v2.msgs_per_s,
        steps_per_s=v2.steps_per_s, p50_ms=v2.p50_ms, p99_ms=v2.p99_ms, sent_steps=int(requests) * chunk,
        server_steps=0, client_cpu_us_per_msg=v2.client_cpu_s / requests * 1e6 if requests else 0.0,
    )  # fmt: skip
    cpu_per_step = (cpu_after - cpu_before) / (requests * chunk) * 1e6 if requests else 0.0
    batch = grown(f"{BATCH_SIZE_METRIC}_sum") / batches if batches else None
    return ServedFigures("seqserve", load, cpu_per_step, by_thread, batch)


def measure(run: BenchRun, server: ServerProcess) -> KServeV2:
    """Each (chunk, sequences) of the config: perf_analyzer on V2 and seqserve.v1's client back to back;
    at the target's sequences (64) `ratio_rounds` times, V2 first in the odd rounds, v1 first in the even."""
    if not PERF_ANALYZER.exists():
        return KServeV2(
            [], "perf_analyzer is not installed (bash scripts/install_perf_analyzer.sh)",
            run.config.v2_target_sequences,
        )  # fmt: skip
    config, cells, failed = run.config, [], []
    for chunk in config.chunks:
        for count in config.v2_sequences:
            rounds = []
            for index in range(config.ratio_rounds if count == config.v2_target_sequences else 1):
                run.advance(f"V2 endpoint: chunk {chunk} x {count}, round {index + 1}")
                try:
                    rounds.append(_round(run, server, count, chunk, v1_first=index % 2 == 1))
                except (RuntimeError, subprocess.TimeoutExpired) as error:  # one round lost, not the run
                    failed.append(f"chunk {chunk} x {count}: {error}"[-300:])
            if rounds:
                cells.append(V2Rounds(rounds))
    return KServeV2(cells, "; ".join(failed) or None, config.v2_target_sequences)


def _round(run: BenchRun, server: ServerProcess, count: int, chunk: int, v1_first: bool) -> V2Cell:
    def v1() -> ServedFigures:
        return run.served(
            server,
            "seqserve",
            "stream",
            count,
            chunk,
            streams_per_channel=sequences_per_connection(),
            include_scores=True,
        )

    if v1_first:
        first = v1()
        return V2Cell(perf_served(run, server, count, chunk), first)
    return V2Cell(perf_served(run, server, count, chunk), v1())


def main(
    out: Annotated[Path, typer.Option(help="JSON file for the figures.")] = Path(
        "bench/results/kserve_v2.json"
    ),
    processes: Annotated[int, typer.Option(help="Load-generator processes.", min=1)] = 2,
) -> None:
    """`python -m bench.kserve_v2`: only these rows, on the bench model, against one `seqserve serve`
    (what `make bench` runs among everything else); prints the table and writes `out`."""
    from rich.console import Console

    from bench.bench_model import write_bench_model
    from bench.load_pool import LoadPool
    from bench.scenarios import BenchConfig
    from seqserve.service.server.launch import running_server

    config = BenchConfig()
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    with tempfile.TemporaryDirectory(prefix="seqserve-bench-v2-") as work:
        repository = Path(work) / "repository"
        info = write_bench_model(repository, Path(work))
        with contextlib.closing(LoadPool(processes)) as pool:
            run = BenchRun(config, pool, repository, info, "cpu", out.parent / "tmp", advance=print)
            with running_server(run.command("seqserve"), out.parent / "tmp" / "seqserve-v2.log") as server:
                section = measure(run, server)
    meta = {
        "started_at": started_at,
        "load_average_at_end": os.getloadavg()[0],
        "cpu_count": os.cpu_count(),
        "window_ms": config.triton_window_ms,
        "v1_duration_s": config.duration_s,
        "ratio_rounds": config.ratio_rounds,
    }
    out.write_text(
        json.dumps({"meta": meta, **section.to_dict(), "ratios": section.ratios()}, indent=2) + "\n"
    )
    console = Console(width=160)
    for table in section.tables():
        console.print(table.rich())
        console.print(table.markdown())


if __name__ == "__main__":
    typer.run(main)
