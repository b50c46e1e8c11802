"""`python -m bench.run` (what `make bench` runs): every scenario in one run, then the table, JSON and PNG.

Writes `<out>/latest.json`, `<out>/latest.md` (the tables) and `<out>/streams.png`; server logs go to
`<out>/tmp/` (ignored by git).
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from bench.bench_model import (
    BENCH_LM,
    BENCH_MODEL,
    HIDDEN,
    LAYERS,
    write_bench_language_model,
    write_bench_model,
)
from bench.declared import measure as measure_declared
from bench.forecast import measure as measure_forecast
from bench.forecast_accuracy import measure as measure_forecast_accuracy
from bench.forecast_recalibration import measure as measure_forecast_recalibration
from bench.generation import measure as measure_generation
from bench.kserve_v2 import measure as measure_kserve_v2
from bench.load_pool import LoadPool
from bench.plot import plot_streams
from bench.process_costs import cpu_clock
from bench.report import BenchResults
from bench.scenarios import INFERENCE_THREADS, QUICK, BenchConfig, BenchRun
from bench.sections import Checkpoints, NaiveGrid, TritonPeer, Workers
from bench.translate import measure as measure_translate
from bench.triton_peer import run_peer

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


def _default_processes() -> int:
    return max(2, min(4, os.cpu_count() or 2))


@app.command()
def main(
    device: Annotated[
        str, typer.Option(help="cpu or cuda, for seqserve, the naive server and the ceiling.")
    ] = "cpu",
    quick: Annotated[bool, typer.Option(help="Tiny sizes and short windows (the smoke test).")] = False,
    out: Annotated[Path, typer.Option(help="Folder for latest.json and streams.png.")] = Path(
        "bench/results"
    ),
    processes: Annotated[
        int, typer.Option(help="Load-generator processes (default: CPU cores, 2 to 4).", min=1)
    ] = _default_processes(),
) -> None:
    """Benchmark seqserve against its ceilings and against what a user would run instead."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # Piped output (make bench > log) would otherwise wrap the tables at 80 columns.
    console = Console(width=None if sys.stdout.isatty() else 160)
    config = QUICK if quick else BenchConfig()
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    meta = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "device": device,
        "quick": quick,
        "client_processes": processes,
        "cpu_count": os.cpu_count(),
        # Other work on the box skews absolute figures; the 1-minute load average says how busy it was.
        "load_average_at_start": os.getloadavg()[0],
        "machine": platform.platform(),
        "model": f"{BENCH_MODEL} (GRU, hidden {HIDDEN}, {LAYERS} layers, seeded weights)",
        "language_model": f"{BENCH_LM} (GRU, hidden {config.generation_hidden}, embedding 64, Shakespeare "
        "vocabulary, seeded weights)",
        "inference_threads": INFERENCE_THREADS,
        "versions": {name: version(name) for name in ("onnxruntime", "grpcio", "protobuf", "numpy")},
    }
    columns = (TextColumn("{task.description:<44}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with (
        tempfile.TemporaryDirectory(prefix="seqserve-bench-") as work,
        Progress(*columns, console=console) as bar,
    ):
        task = bar.add_task("exporting the bench model", total=config.scenario_count())
        repository = Path(work) / "repository"
        info = write_bench_model(repository, Path(work))
        started_scenarios = 0

        def advance(name: str) -> None:
            nonlocal started_scenarios
            bar.update(task, description=name, completed=started_scenarios)
            started_scenarios += 1

        with contextlib.closing(LoadPool(processes)) as pool:
            run = BenchRun(config, pool, repository, info, device, out / "tmp", advance)
            meta["seqserve_command"] = " ".join(run.command("seqserve")[2:]).replace(str(repository), "REPO")
            with run.servers() as servers:
                ort = run.ort_ceiling()
                echo = run.baseline(servers.echo, "echo")
                naive, grid = run.grids(servers.naive, servers.seqserve)
                rounds = run.ratio_rounds(servers)
                run.advance("Triton peer (perf_analyzer, both servers)")
                peer = run_peer(
                    repository, info, servers.seqserve.target, cpu_clock(servers.seqserve.pid), config.chunks,
                    config.triton_sequences, config.triton_window_ms, Path(work), install=not quick,
                )  # fmt: skip
                kserve_v2 = measure_kserve_v2(run, servers.seqserve)
            idle = [run.idle_scale("echo"), run.idle_scale("seqserve")]
            workers = run.workers()
            checkpoints = run.checkpoints()
            run.advance("exporting the bench language model")
            lm_repository = Path(work) / "lm-repository"
            write_bench_language_model(lm_repository, Path(work), hidden=config.generation_hidden)
            generation = measure_generation(run, lm_repository, BENCH_LM)
            run.advance("declared graph (seqserve and the per-stream loop)")
            declared = measure_declared(
                Path(work) / "declared-repository", config.declared_streams, config.duration_s, out / "tmp"
            )
            run.advance("forecasts (from the stream, a window, a client loop)")
            forecast = measure_forecast(
                Path(work) / "forecast-repository", config.forecast_streams, config.duration_s, out / "tmp"
            )
            run.advance("forecast accuracy (Taylor and M1 trained, beside the seasonal naive)")
            forecast_runs = Path(work) / "forecast-runs"
            forecast_accuracy = measure_forecast_accuracy(forecast_runs, config.forecast_epochs)
            run.advance("forecast intervals (Taylor, recalibrated each midnight)")
            forecast_recalibration = measure_forecast_recalibration(
                forecast_runs / "taylor", Path(work) / "recalibration"
            )
            run.advance("translations (Translate, a client loop, unbatched)")
            translate = measure_translate(
                Path(work) / "translate-repository", config.translate_clients, config.duration_s, out / "tmp"
            )
        bar.update(task, description="done", completed=config.scenario_count())
    meta["wall_s"] = round(time.monotonic() - started, 1)
    meta["load_average_at_end"] = os.getloadavg()[0]
    sections = [
        NaiveGrid(naive, grid),
        Workers(workers),
        TritonPeer(peer.rows, peer.labels, peer.skipped),
        kserve_v2,
        Checkpoints(checkpoints),
        generation,
        declared,
        forecast,
        forecast_accuracy,
        forecast_recalibration,
        translate,
    ]
    results = BenchResults(meta, config, ort, echo, naive, grid, rounds, idle, sections)
    results.print_tables(console)
    results.write_json(out / "latest.json")
    results.write_markdown(out / "latest.md")
    plot_streams(results, out / "streams.png")
    console.print(f"wrote latest.json, latest.md and streams.png in {out} in {meta['wall_s']:.0f} s")


if __name__ == "__main__":
    app()
