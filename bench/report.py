"""The bench's results: raw figures, the ratios against their targets, the JSON and the tables."""

from __future__ import annotations

import json
import operator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.ort_ceiling import OrtResult
from bench.scenarios import BenchConfig, IdleFigures, RatioRound, ServedFigures, median_ratios

# The targets, each on one key of `ratios` (the later bound where two were set:
# 0.9 of the echo ceiling, p99 15 ms at chunk 32, CPU per step against onnxruntime's); sections add theirs.
TARGETS: dict[str, tuple[str, float]] = {
    "service_vs_grpc_ceiling_chunk1_64": (">=", 0.9),
    "service_vs_ort_chunk32_64": (">=", 0.6),
    "server_cpu_vs_ort_cpu_chunk32_64": ("<=", 1.5),
    "service_vs_naive_chunk32_64": (">=", 1.5),
    "service_vs_resend_T256": (">=", 10.0),
    "p99_ms_chunk1_64": ("<=", 10.0),
    "p99_ms_chunk32_64": ("<=", 15.0),
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
    rounds: list[RatioRound]
    idle: list[IdleFigures]  # echo (gRPC's own cost per stream), then seqserve
    sections: list[Any] = field(default_factory=list)  # bench.sections.BenchSection

    def idle_of(self, server: str) -> IdleFigures:
        return next(figures for figures in self.idle if figures.server == server)

    def ratios(self) -> dict[str, float]:
        """The median over the ratio rounds of each ratio, and seqserve's RSS with the idle streams open."""
        ratios = median_ratios(self.rounds)
        ratios["rss_mb_10k_idle_streams"] = self.idle_of("seqserve").rss_mb_open
        for section in self.sections:
            ratios.update(section.ratios())
        return ratios

    def targets(self) -> dict[str, dict[str, Any]]:
        ratios = self.ratios()
        targets = dict(TARGETS)
        for section in self.sections:
            targets.update(section.targets())
        return {
            key: {"target": f"{op} {bound:g}", "value": ratios[key], "met": _COMPARE[op](ratios[key], bound)}
            for key, (op, bound) in targets.items()
            if key in ratios
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
            "rounds": [round_.to_dict() for round_ in self.rounds],
            "idle": [asdict(figures) for figures in self.idle],
            **{section.key: section.to_dict() for section in self.sections},
        }

    def write_json(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    def tables(self) -> list[TextTable]:
        return [
            self._ort_table(),
            self._served_table(),
            self._rounds_table(),
            self._idle_table(),
            *(table for section in self.sections for table in section.tables()),
            self._targets_table(),
        ]

    def print_tables(self, console: Console) -> None:
        for table in self.tables():
            console.print(table.rich())

    def write_markdown(self, path: Path) -> None:
        """The same tables as markdown, for bench/README.md."""
        path.write_text("\n\n".join(table.markdown() for table in self.tables()) + "\n")

    def _ort_table(self) -> TextTable:
        table = TextTable("onnxruntime in-process ceiling", ("batch", "chunk", "steps/s", "cpu us/step"))
        for result in self.ort:
            steps, cpu = f"{result.steps_per_s:,.0f}", f"{result.cpu_us_per_step:.2f}"
            table.add_row(str(result.batch), str(result.chunk), steps, cpu)
        return table

    def _served_table(self) -> TextTable:
        columns = ("server", "chunk", "streams", "msgs/s", "steps/s", "p50 ms", "p99 ms", "batch")
        title = f"served over gRPC ({self.meta['client_processes']} load-generator processes)"
        cpu = ("server cpu us/step", "server cpu us/msg loop/py/C", "client cpu us/msg", "cores busy")
        table = TextTable(title, (*columns, *cpu))
        for figures in [*self.echo, *self.naive, *self.seqserve]:
            load = figures.load
            batch = "" if figures.mean_batch_size is None else f"{figures.mean_batch_size:.1f}"
            table.add_row(
                figures.server,
                str(load.chunk),
                str(load.streams),
                f"{load.msgs_per_s:,.0f}",
                f"{load.steps_per_s:,.0f}",
                f"{load.p50_ms:.2f}",
                f"{load.p99_ms:.2f}",
                batch,
                f"{figures.server_cpu_us_per_step:.1f}",
                by_thread(figures.server_cpu_us_per_msg_by_thread),
                f"{load.client_cpu_us_per_msg:.0f}",
                f"{figures.cores_busy:.2f}",
            )
        return table

    def _rounds_table(self) -> TextTable:
        config = self.config
        small, large, streams = config.small_chunk, config.large_chunk, config.ratio_streams
        columns = (
            "round",
            f"echo c{small} msgs/s",
            f"seqserve c{small} msgs/s",
            f"resend T={config.resend_steps} steps/s",
            f"naive c{large} steps/s",
            f"seqserve c{large} steps/s",
            f"ort b{streams} c{large} steps/s",
        )
        table = TextTable(f"ratio rounds at {streams} streams (back to back)", columns)
        for index, round_ in enumerate(self.rounds, start=1):
            table.add_row(
                str(index),
                f"{round_.echo_small.load.msgs_per_s:,.0f}",
                f"{round_.seqserve_small.load.msgs_per_s:,.0f}",
                f"{round_.resend.load.steps_per_s:,.0f}",
                f"{round_.naive_large.load.steps_per_s:,.0f}",
                f"{round_.seqserve_large.load.steps_per_s:,.0f}",
                f"{round_.ort_large.steps_per_s:,.0f}",
            )
        return table

    def _idle_table(self) -> TextTable:
        columns = (
            "server",
            "streams",
            "open s",
            "RSS before MB",
            "RSS open MB",
            "KB/stream",
            "RSS closed MB",
        )
        table = TextTable("idle streams", (*columns, "open streams: open -> closed"))
        for figures in self.idle:
            active = (
                ""
                if figures.streams_active_open is None
                else f"{figures.streams_active_open:.0f} -> {figures.streams_active_after_close:.0f}"
            )
            table.add_row(
                figures.server,
                str(figures.streams),
                f"{figures.open_s:.1f}",
                f"{figures.rss_mb_before:.0f}",
                f"{figures.rss_mb_open:.0f}",
                f"{figures.kb_per_stream:.1f}",
                f"{figures.rss_mb_after_close:.0f}",
                active,
            )
        return table

    def _targets_table(self) -> TextTable:
        title = f"targets (median of {len(self.rounds)} ratio rounds)"
        table = TextTable(title, ("figure", "value", "target", "met"))
        for key, verdict in self.targets().items():
            table.add_row(
                key, f"{verdict['value']:.3g}", verdict["target"], "yes" if verdict["met"] else "no"
            )
        return table


def by_thread(cpu: dict[str, float]) -> str:
    """main (the event loop) / Python's other threads (executor, grpc poller) / grpc's C threads."""
    loop, python = cpu.get("main", 0.0), cpu.get("python", 0.0)
    return f"{loop:.0f}/{python:.0f}/{sum(cpu.values()) - loop - python:.0f}"


@dataclass
class TextTable:
    """A titled table of strings, printed with rich and written as markdown."""

    title: str
    columns: tuple[str, ...]
    rows: list[tuple[str, ...]] = field(default_factory=list)

    def add_row(self, *cells: str) -> None:
        self.rows.append(cells)

    def rich(self) -> Table:
        table = Table(title=self.title)
        for index, column in enumerate(self.columns):
            table.add_column(column, justify="left" if index == 0 else "right")
        for row in self.rows:
            table.add_row(*row)
        return table

    def markdown(self) -> str:
        lines = [f"**{self.title}**", "", "| " + " | ".join(self.columns) + " |"]
        lines.append(
            "|" + "|".join("---" if index == 0 else "---:" for index in range(len(self.columns))) + "|"
        )
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        return "\n".join(lines)


def print_and_write(section: Any, out: Path | None) -> None:
    """A section run alone: its tables in markdown, its ratios as one JSON line, its JSON into `out`."""
    for table in section.tables():
        print(table.markdown())
    print(json.dumps(section.ratios()))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(section.to_dict(), indent=2) + "\n")
