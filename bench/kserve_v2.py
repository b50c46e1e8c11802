"""The KServe V2 rows: Triton's perf_analyzer drives seqserve's `inference.GRPCInferenceService` endpoint
(sequences on one streaming call) beside seqserve's own load client on `seqserve.v1`, same server, same run.

Each cell runs the two back to back, so drift in the box's load hits both sides alike. perf_analyzer is
run by `bench.triton_peer.perf_analyzer` (its CSV report, `-f`) and installed by
scripts/install_perf_analyzer.sh; without it the rows are skipped with the reason. Issue 16's target: the
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
from typing import Any

from bench.load_pool import LoadResult
from bench.prometheus_scrape import scrape
from bench.report import TextTable
from bench.scenarios import BATCH_SIZE_METRIC, BenchRun, ServedFigures
from bench.server_process import ServerProcess
from bench.triton_peer import PERF_ANALYZER, perf_analyzer

TARGET_SEQUENCES = 64
TARGET_RATIO = 0.9


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
class KServeV2:
    """perf_analyzer on the V2 endpoint and seqserve's client on seqserve.v1, per (chunk, sequences)."""

    cells: list[V2Cell]
    skipped: str | None = None
    key: str = "kserve_v2"

    def to_dict(self) -> dict[str, Any]:
        return {
            "skipped": self.skipped,
            "rows": [
                {"v2": c.v2.to_dict(), "v1": c.v1.to_dict(), "v2_vs_v1_steps_per_s": c.ratio}
                for c in self.cells
            ],
        }

    def ratios(self) -> dict[str, float]:
        return {f"v2_vs_v1_chunk{c.v2.load.chunk}_{c.v2.load.streams}": c.ratio for c in self.cells}

    def targets(self) -> dict[str, tuple[str, float]]:
        return {key: (">=", TARGET_RATIO) for key in self.ratios() if key.endswith(f"_{TARGET_SEQUENCES}")}

    def tables(self) -> list[TextTable]:
        title = "KServe V2 endpoint (perf_analyzer, --streaming, sequences) beside seqserve.v1 (own client)"
        if self.skipped:
            title += f": skipped, {self.skipped}"
        columns = ("chunk", "sequences", "V2 req/s", "V2 steps/s", "V2 p50 ms", "V2 p99 ms", "V2 cpu us/req",
                   "v1 msgs/s", "v1 steps/s", "v1 p50 ms", "v1 p99 ms", "v1 cpu us/msg",
                   "V2 / v1 steps/s")  # fmt: skip
        table = TextTable(title, columns)
        for cell in self.cells:
            v2, v1 = cell.v2.load, cell.v1.load
            table.add_row(
                str(v2.chunk), str(v2.streams), f"{v2.msgs_per_s:,.0f}", f"{v2.steps_per_s:,.0f}",
                f"{v2.p50_ms:.2f}", f"{v2.p99_ms:.2f}", f"{cell.v2.server_cpu_us_per_step * v2.chunk:.0f}",
                f"{v1.msgs_per_s:,.0f}", f"{v1.steps_per_s:,.0f}", f"{v1.p50_ms:.2f}", f"{v1.p99_ms:.2f}",
                f"{cell.v1.server_cpu_us_per_step * v1.chunk:.0f}", f"{cell.ratio:.2f}",
            )  # fmt: skip
        return [table]


def perf_served(run: BenchRun, server: ServerProcess, sequences: int, chunk: int) -> ServedFigures:
    """perf_analyzer on a seqserve V2 endpoint as a ServedFigures row (bench/ab.py's V2 rows): server CPU
    per request is the server's CPU over the whole perf_analyzer run divided by the chunks it answered in
    that time (its `seqserve_chunks_total`), so warm-up and trials outside perf_analyzer's window cancel."""
    before = scrape(server.metrics_url), server.cpu_seconds(), server.thread_cpu_seconds()
    v2 = perf_analyzer(
        "seqserve", server.target, server.cpu_seconds, sequences, chunk, run.info.features,
        run.config.triton_window_ms,
    )  # fmt: skip
    after = scrape(server.metrics_url), server.cpu_seconds(), server.thread_cpu_seconds()
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
        server_steps=0, client_cpu_us_per_msg=0.0,
    )  # fmt: skip
    cpu_per_step = (cpu_after - cpu_before) / (requests * chunk) * 1e6 if requests else 0.0
    batch = grown(f"{BATCH_SIZE_METRIC}_sum") / batches if batches else None
    return ServedFigures("seqserve", load, cpu_per_step, by_thread, batch)


def measure(run: BenchRun, server: ServerProcess) -> KServeV2:
    """Each (chunk, sequences) of the config: perf_analyzer on V2, then seqserve.v1's client, back to back."""
    if not PERF_ANALYZER.exists():
        return KServeV2([], "perf_analyzer is not installed (bash scripts/install_perf_analyzer.sh)")
    config, cells, failed = run.config, [], []
    for chunk in config.chunks:
        for count in config.v2_sequences:
            run.advance(f"V2 endpoint: perf_analyzer chunk {chunk} x {count}")
            try:
                v2 = perf_served(run, server, count, chunk)
            except (RuntimeError, subprocess.TimeoutExpired) as error:  # one cell lost, not the run
                failed.append(f"chunk {chunk} x {count}: {error}"[-300:])
                continue
            run.advance(f"V2 endpoint: seqserve.v1 chunk {chunk} x {count}")
            cells.append(V2Cell(v2, run.served(server, "seqserve", "stream", count, chunk)))
    return KServeV2(cells, "; ".join(failed) or None)


def main(out: Path = Path("bench/results/kserve_v2.json"), processes: int = 2) -> None:
    """`python -m bench.kserve_v2`: only these rows, on the bench model, against one `seqserve serve`
    (what `make bench` runs among everything else); prints the table and writes `out`."""
    from rich.console import Console

    from bench.bench_model import write_bench_model
    from bench.load_pool import LoadPool
    from bench.scenarios import BenchConfig
    from bench.server_process import running_server

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
    }
    out.write_text(
        json.dumps({"meta": meta, **section.to_dict(), "ratios": section.ratios()}, indent=2) + "\n"
    )
    console = Console(width=160)
    for table in section.tables():
        console.print(table.rich())
        console.print(table.markdown())


if __name__ == "__main__":
    main()
