"""Checkpoint overhead A/B: a checkpoint every 0 and every 16 chunks, alternated round by round on one
server, so drift on a shared box hits both alike; prints the median ratio per chunk size (the target:
every 16 chunks within 5 % of none, in steps/s) and writes bench/results/checkpoint_ab.json.

    python -m bench.experiments.checkpoint_ab --rounds 4
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import statistics
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from bench.bench_model import write_bench_model
from bench.load_pool import LoadPool
from bench.scenarios import BenchConfig, BenchRun
from seqserve.service.server.launch import running_server

app = typer.Typer(add_completion=False)


@app.command()
def main(
    rounds: Annotated[int, typer.Option(help="Rounds of (none, every 16) per chunk size.", min=1)] = 4,
    processes: Annotated[int, typer.Option(help="Load-generator processes.", min=1)] = 2,
    out: Annotated[Path, typer.Option(help="JSON file for the figures.")] = Path(
        "bench/results/checkpoint_ab.json"
    ),
) -> None:
    config = BenchConfig()
    streams = config.ratio_streams
    figures: dict[str, list[dict[str, float]]] = {}
    with (
        tempfile.TemporaryDirectory(prefix="seqserve-ckpt-ab-") as work,
        contextlib.closing(LoadPool(processes)) as pool,
    ):
        repository = Path(work) / "repository"
        info = write_bench_model(repository, Path(work))
        run = BenchRun(config, pool, repository, info, "cpu", Path(work) / "logs", lambda name: None)
        key_file = Path(work) / "state-key"
        key_file.write_text(secrets.token_hex(32) + "\n")
        command = [*run.command("seqserve"), "--state-key-file", str(key_file)]
        with running_server(command, Path(work) / "seqserve.log") as server:
            for chunk in config.chunks:
                for index in range(rounds):
                    pair = {}
                    for every in (0, 16) if index % 2 == 0 else (16, 0):
                        served = run.served(
                            server, f"every {every}", "stream", streams, chunk, checkpoint_every_chunks=every
                        )
                        pair[f"every{every}_steps_per_s"] = served.load.steps_per_s
                        pair[f"every{every}_cpu_us_per_step"] = served.server_cpu_us_per_step
                    figures.setdefault(f"chunk{chunk}", []).append(pair)
    summary = {"load_average_at_end": os.getloadavg()[0], "streams": streams, "rounds": figures}
    for key, pairs in figures.items():
        steps = statistics.median(p["every16_steps_per_s"] / p["every0_steps_per_s"] for p in pairs)
        cpu = statistics.median(p["every16_cpu_us_per_step"] / p["every0_cpu_us_per_step"] for p in pairs)
        summary[f"{key}_every16_vs_none_steps"] = steps
        summary[f"{key}_every16_vs_none_cpu_per_step"] = cpu
        print(f"{key} x {streams}: every 16 vs none, median of {len(pairs)} rounds: steps/s x{steps:.3f}, "
              f"server CPU per step x{cpu:.3f}")  # fmt: skip
    out.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    app()
