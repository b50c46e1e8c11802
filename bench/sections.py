"""Bench sections beyond the core scenarios: each brings its JSON, its tables, its ratios and targets.

`BenchResults` takes a list of sections, so a feature's rows (workers, Triton, checkpoints, generation...)
are one class here and one line in `bench/run.py`, with no change to the report's core.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from bench.checkpoint_probe import CheckpointFigures
from bench.report import TextTable
from bench.scenarios import ServedFigures
from bench.triton_peer import PerfFigures

# seqserve's p50 may exceed the naive server's by this much at any grid cell.
P50_SLACK_MS = 0.05


class BenchSection(Protocol):
    key: str  # its key in latest.json

    def to_dict(self) -> dict[str, Any]: ...
    def tables(self) -> list[TextTable]: ...
    def ratios(self) -> dict[str, float]: ...
    def targets(self) -> dict[str, tuple[str, float]]: ...


@dataclass
class NaiveGrid:
    """The grid's target: at every grid cell seqserve's msgs/s >= the naive server's, and its p50
    <= the naive server's + 0.05 ms (in each cell the two run back to back)."""

    naive: list[ServedFigures]
    seqserve: list[ServedFigures]
    key: str = "naive_grid"

    def _pairs(self) -> list[tuple[ServedFigures, ServedFigures]]:
        naive = {(f.load.chunk, f.load.streams): f for f in self.naive}
        return [(naive[(f.load.chunk, f.load.streams)], f) for f in self.seqserve]

    def to_dict(self) -> dict[str, Any]:
        return {"naive": [f.to_dict() for f in self.naive]}

    def ratios(self) -> dict[str, float]:
        pairs = self._pairs()
        return {
            "grid_min_msgs_vs_naive": min(s.load.msgs_per_s / n.load.msgs_per_s for n, s in pairs),
            "grid_max_p50_vs_naive_plus_slack": max(
                s.load.p50_ms / (n.load.p50_ms + P50_SLACK_MS) for n, s in pairs
            ),
        }

    def targets(self) -> dict[str, tuple[str, float]]:
        return {"grid_min_msgs_vs_naive": (">=", 1.0), "grid_max_p50_vs_naive_plus_slack": ("<=", 1.0)}

    def tables(self) -> list[TextTable]:
        columns = ("chunk", "streams", "naive msgs/s", "seqserve msgs/s", "ratio", "naive p50 ms",
                   "seqserve p50 ms", "naive cpu us/msg", "seqserve cpu us/msg", "met")  # fmt: skip
        table = TextTable("seqserve against the naive server at every grid cell", columns)
        for naive, ours in self._pairs():
            n, s = naive.load, ours.load
            met = s.msgs_per_s >= n.msgs_per_s and s.p50_ms <= n.p50_ms + P50_SLACK_MS
            table.add_row(
                str(s.chunk), str(s.streams), f"{n.msgs_per_s:,.0f}", f"{s.msgs_per_s:,.0f}",
                f"{s.msgs_per_s / n.msgs_per_s:.2f}", f"{n.p50_ms:.2f}", f"{s.p50_ms:.2f}",
                f"{naive.server_cpu_us_per_step * n.chunk:.0f}",
                f"{ours.server_cpu_us_per_step * s.chunk:.0f}",
                "yes" if met else "no",
            )  # fmt: skip
        return [table]


@dataclass
class Workers:
    """`seqserve serve --workers N` at the ratio concurrency: steps/s and server CPU (all processes)."""

    figures: list[ServedFigures]
    key: str = "workers"

    def to_dict(self) -> dict[str, Any]:
        return {"rows": [f.to_dict() for f in self.figures]}

    def ratios(self) -> dict[str, float]:
        return {}

    def targets(self) -> dict[str, tuple[str, float]]:
        return {}

    def tables(self) -> list[TextTable]:
        columns = ("server", "chunk", "streams", "steps/s", "p50 ms", "p99 ms", "batch",
                   "server cpu us/step", "cores busy")  # fmt: skip
        table = TextTable("seqserve --workers N (server CPU: every process)", columns)
        for f in self.figures:
            load = f.load
            batch = "" if f.mean_batch_size is None else f"{f.mean_batch_size:.1f}"
            table.add_row(
                f.server, str(load.chunk), str(load.streams), f"{load.steps_per_s:,.0f}",
                f"{load.p50_ms:.2f}", f"{load.p99_ms:.2f}", batch,
                f"{f.server_cpu_us_per_step:.1f}", f"{f.cores_busy:.2f}",
            )  # fmt: skip
        return [table]


@dataclass
class TritonPeer:
    """Triton (Python backend + onnxruntime, sequence batching `oldest`) and seqserve (its V2 endpoint),
    both driven by perf_analyzer; or why it was skipped."""

    rows: list[PerfFigures]
    labels: dict[str, Any]
    skipped: str | None = None
    key: str = "triton"

    def to_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped, "labels": self.labels, "rows": [r.to_dict() for r in self.rows]}

    def _pair(self, chunk: int, sequences: int) -> tuple[PerfFigures, PerfFigures] | None:
        found = {r.server: r for r in self.rows if r.chunk == chunk and r.sequences == sequences}
        return (found["seqserve"], found["triton"]) if len(found) == 2 else None

    def ratios(self) -> dict[str, float]:
        ratios = {}
        for row in self.rows:
            pair = self._pair(row.chunk, row.sequences)
            if row.server == "seqserve" and pair:
                key = f"service_vs_triton_chunk{row.chunk}_{row.sequences}"
                ratios[key] = pair[0].msgs_per_s / pair[1].msgs_per_s
        return ratios

    def targets(self) -> dict[str, tuple[str, float]]:
        # Ahead at 16 and 64 sequences, within 10 % at 1.
        return {key: (">=", 0.9 if key.endswith("_1") else 1.0) for key in self.ratios()}

    def tables(self) -> list[TextTable]:
        title = "Triton peer (perf_analyzer, gRPC streaming, sequences)"
        if self.skipped:
            title += f": skipped, {self.skipped}"
        columns = ("server", "chunk", "sequences", "msgs/s", "steps/s", "p50 ms", "p99 ms",
                   "server cpu us/step", "load avg")  # fmt: skip
        table = TextTable(title, columns)
        for r in self.rows:
            table.add_row(
                r.server, str(r.chunk), str(r.sequences), f"{r.msgs_per_s:,.0f}", f"{r.steps_per_s:,.0f}",
                f"{r.p50_ms:.2f}", f"{r.p99_ms:.2f}", f"{r.server_cpu_us_per_step:.1f}",
                f"{r.load_average:.1f}",
            )  # fmt: skip
        return [table]


@dataclass
class Checkpoints:
    """Checkpoint cost: throughput and p99 with a signed checkpoint every 0, 16 and 1 chunks, the token's
    size, and a resume's open time. Target: a checkpoint every 16 chunks within 5 % of none, in steps/s."""

    figures: CheckpointFigures
    key: str = "checkpoints"

    def _by(self) -> dict[tuple[int, int], ServedFigures]:
        return {(f.load.chunk, every): f for every, f in self.figures.rows}

    def to_dict(self) -> dict[str, Any]:
        rows = [{"checkpoint_every_chunks": every, **f.to_dict()} for every, f in self.figures.rows]
        return {"rows": rows, "resume": self.figures.probe.to_dict()}

    def ratios(self) -> dict[str, float]:
        by, ratios = self._by(), {}
        for (chunk, every), figures in by.items():
            none = by[(chunk, 0)].load.steps_per_s if (chunk, 0) in by else 0.0
            if every and none > 0:  # an empty window (an overloaded box) gives no ratio, not a crash
                ratios[f"checkpoint{every}_vs_none_chunk{chunk}"] = figures.load.steps_per_s / none
        return ratios

    def targets(self) -> dict[str, tuple[str, float]]:
        return {key: (">=", 0.95) for key in self.ratios() if key.startswith("checkpoint16_")}

    def tables(self) -> list[TextTable]:
        probe, by = self.figures.probe, self._by()
        title = (
            f"Checkpoints (token {probe.token_bytes} bytes; open p50 {probe.plain_open_ms_p50:.2f} ms plain, "
            f"{probe.resume_open_ms_p50:.2f} ms resuming, p99 {probe.resume_open_ms_p99:.2f} ms)"
        )
        columns = ("chunk", "streams", "checkpoint every", "steps/s", "vs none", "p50 ms", "p99 ms",
                   "server cpu us/step")  # fmt: skip
        table = TextTable(title, columns)
        for every, f in self.figures.rows:
            load, none = f.load, by.get((f.load.chunk, 0))
            ratio = (
                f"{load.steps_per_s / none.load.steps_per_s:.3f}" if none and none.load.steps_per_s else ""
            )
            table.add_row(
                str(load.chunk), str(load.streams), str(every) if every else "never",
                f"{load.steps_per_s:,.0f}", ratio, f"{load.p50_ms:.2f}", f"{load.p99_ms:.2f}",
                f"{f.server_cpu_us_per_step:.1f}",
            )  # fmt: skip
        return [table]
