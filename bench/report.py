"""The bench's results: raw figures, the issue's ratios against their targets, the JSON and the table."""

from __future__ import annotations

import json
import operator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.load_pool import LoadResult
from bench.ort_ceiling import OrtResult
from bench.scenarios import BenchConfig, IdleFigures, ServedFigures

# The targets, each on one key of `ratios`.
TARGETS: dict[str, tuple[str, float]] = {
    "service_vs_grpc_ceiling_chunk1_64": (">=", 0.8),
    "service_vs_ort_chunk32_64": (">=", 0.6),
    "service_vs_naive_chunk32_64": (">=", 1.5),
    "service_vs_resend_T256": (">=", 10.0),
    "p99_ms_chunk1_64": ("<=", 10.0),
    "p99_ms_chunk32_64": ("<=", 10.0),
    "rss_mb_10k_idle_streams": ("<=", 300.0),
}
_COMPARE = {">=": operator.ge, "<=": operator.le}


@dataclass
class BenchResults:
    meta: dict[str, Any]
    config: BenchConfig
    ort: list[OrtResult]
    echo: list[ServedFigures]
    naive: list[ServedFigures]
    seqserve: list[ServedFigures]
    resend: ServedFigures
    idle: IdleFigures

    def ratios(self) -> dict[str, float]:
        """The issue's ratios, taken at the ratio concurrency (64 streams in the full run)."""
        streams, small, large = self.config.ratio_streams, self.config.small_chunk, self.config.large_chunk
        service_small = _pick(self.seqserve, small, streams)
        service_large = _pick(self.seqserve, large, streams)
        ort = next(r for r in self.ort if r.batch == streams and r.chunk == large)
        return {
            "service_vs_grpc_ceiling_chunk1_64": service_small.msgs_per_s
            / _pick(self.echo, small, streams).msgs_per_s,
            "service_vs_ort_chunk32_64": service_large.steps_per_s / ort.steps_per_s,
            "service_vs_naive_chunk32_64": service_large.steps_per_s
            / _pick(self.naive, large, streams).steps_per_s,
            "service_vs_resend_T256": service_small.steps_per_s / self.resend.load.steps_per_s,
            "rss_mb_10k_idle_streams": self.idle.rss_mb_open,
            "p99_ms_chunk1_64": service_small.p99_ms,
            "p99_ms_chunk32_64": service_large.p99_ms,
        }

    def targets(self) -> dict[str, dict[str, Any]]:
        ratios = self.ratios()
        return {
            key: {"target": f"{op} {bound:g}", "value": ratios[key], "met": _COMPARE[op](ratios[key], bound)}
            for key, (op, bound) in TARGETS.items()
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "meta": self.meta,
            "config": asdict(self.config),
            "ratios": self.ratios(),
            "targets": self.targets(),
            "ort": [asdict(result) for result in self.ort],
            "echo": [figures.to_dict() for figures in self.echo],
            "naive": [figures.to_dict() for figures in self.naive],
            "seqserve": [figures.to_dict() for figures in self.seqserve],
            "resend": self.resend.to_dict(),
            "idle": asdict(self.idle),
        }

    def write_json(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    def print_tables(self, console: Console) -> None:
        ort = Table(title="onnxruntime in-process ceiling")
        for column in ("batch", "chunk", "steps/s"):
            ort.add_column(column, justify="right")
        for result in self.ort:
            ort.add_row(str(result.batch), str(result.chunk), f"{result.steps_per_s:,.0f}")
        console.print(ort)

        served = Table(title=f"served over gRPC ({self.meta['client_processes']} client processes)")
        columns = (
            "server",
            "chunk",
            "streams",
            "msgs/s",
            "steps/s",
            "p50 ms",
            "p99 ms",
            "batch",
            "server cpu us/step",
            "client cpu us/msg",
        )
        for column in columns:
            served.add_column(column, justify="right")
        for figures in [*self.echo, *self.naive, *self.seqserve, self.resend]:
            load = figures.load
            name = (
                figures.server
                if load.mode == "stream"
                else f"{figures.server} resend T={self.config.resend_steps}"
            )
            batch = "" if figures.mean_batch_size is None else f"{figures.mean_batch_size:.1f}"
            served.add_row(
                name,
                str(load.chunk),
                str(load.streams),
                f"{load.msgs_per_s:,.0f}",
                f"{load.steps_per_s:,.0f}",
                f"{load.p50_ms:.2f}",
                f"{load.p99_ms:.2f}",
                batch,
                f"{figures.server_cpu_us_per_step:.1f}",
                f"{load.client_cpu_us_per_msg:.0f}",
            )
        console.print(served)

        idle = self.idle
        console.print(
            f"idle scale: {idle.streams} streams open in {idle.open_s:.1f} s; server RSS "
            f"{idle.rss_mb_before:.0f} MB before, {idle.rss_mb_open:.0f} MB with all open, "
            f"{idle.rss_mb_after_close:.0f} MB after closing; open streams {idle.streams_active_open:.0f} "
            f"-> {idle.streams_active_after_close:.0f}"
        )

        verdicts = Table(title="targets")
        for column in ("figure", "value", "target", "met"):
            verdicts.add_column(column)
        for key, verdict in self.targets().items():
            met = "[green]yes[/]" if verdict["met"] else "[red]no[/]"
            verdicts.add_row(key, f"{verdict['value']:.3g}", verdict["target"], met)
        console.print(verdicts)


def _pick(figures: list[ServedFigures], chunk: int, streams: int) -> LoadResult:
    return next(f.load for f in figures if f.load.chunk == chunk and f.load.streams == streams)
