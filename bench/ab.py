"""`python -m bench.ab`: seqserve variants (flag sets) and the naive server, side by side in one run.

Every variant runs as its own server for the whole run; each scenario (chunk x streams) runs on every
server back to back, `--rounds` times, and the median of each figure is printed, so a change is judged
against its neighbour in time, not against a run from another hour on a shared box. A variant
`NAME=git:REV` is seqserve as committed at REV (old code against the working tree). `--protocols` picks
the clients: `v1` seqserve's load client on Stream, `v2` the same client on the KServe V2 endpoint (one
sequence per ModelStreamInfer stream), `v2-perf` perf_analyzer on it; V2 rows run on seqserve servers only.

    python -m bench.ab --variant executor='--inline-max-us 0' --variant inline='' --streams 1,4,64
    python -m bench.ab --variant old=git:main --variant new='' --protocols v1,v2 --streams 64 --no-naive
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import statistics
import subprocess
import tempfile
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from bench.bench_model import write_bench_model
from bench.kserve_v2 import perf_served
from bench.load_pool import LoadPool
from bench.scenarios import BenchConfig, BenchRun, ServedFigures
from bench.server_process import running_server

ROOT = Path(__file__).resolve().parent.parent
app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


def _thread(f: ServedFigures, name: str) -> float:
    return f.server_cpu_us_per_msg_by_thread.get(name, 0.0)


# Server CPU per message: the event loop (main thread), Python's other threads, grpc's C threads.
_THREADS = (
    lambda f: _thread(f, "main"),
    lambda f: _thread(f, "python"),
    lambda f: sum(f.server_cpu_us_per_msg_by_thread.values()) - _thread(f, "main") - _thread(f, "python"),
)


def _median(figures: list[ServedFigures], value) -> float:  # noqa: ANN001
    return statistics.median(value(f) for f in figures)


def _committed_tree(rev: str, work: Path) -> Path:
    """seqserve as committed at `rev`, laid out as the editable install maps it (service/, export/ and
    training/ inside seqserve/), for PYTHONPATH; the protobuf stubs are this checkout's (generated, not
    committed)."""
    source, packages = work / f"source-{rev}", work / f"packages-{rev}"
    source.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", rev], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(source)], input=archive, check=True)
    shutil.copytree(source / "seqserve", packages / "seqserve")
    for stage in ("service", "export", "training"):
        (packages / "seqserve" / stage).symlink_to(source / stage)
    for stub in (ROOT / "seqserve" / "v1").glob("*_pb2*.py"):
        shutil.copy(stub, packages / "seqserve" / "v1")
    return packages


def variant_command(run: BenchRun, flags: str, repository: Path, work: Path) -> list[str]:
    """seqserve with these flags; `git:REV [flags]` seqserve as committed at REV; `@echo` or `@naive` a
    baseline; `!command line` any server ({repo})."""
    if flags.startswith("@"):
        return run.command(flags[1:])
    if flags.startswith("!"):
        return shlex.split(flags[1:].replace("{repo}", str(repository)))
    if flags.startswith("git:"):
        rev, *rest = shlex.split(flags[4:])
        # PYTHONPATH comes before the editable install's finder, so REV's modules are the ones imported;
        # PYTHONSAFEPATH keeps the working directory (this checkout's seqserve/) off sys.path.
        path = f"PYTHONPATH={_committed_tree(rev, work)}"
        return ["env", "PYTHONSAFEPATH=1", path, *run.command("seqserve"), *rest]
    return [*run.command("seqserve"), *shlex.split(flags)]


@app.command()
def main(
    variant: Annotated[
        list[str], typer.Option(help="NAME='seqserve serve flags', NAME=@echo, NAME='!command {repo}'.")
    ],
    streams: Annotated[str, typer.Option(help="Comma-separated stream counts.")] = "1,4,16,64",
    chunks: Annotated[str, typer.Option(help="Comma-separated chunk sizes.")] = "1,32",
    naive: Annotated[bool, typer.Option(help="Also run the naive server.")] = True,
    rounds: Annotated[int, typer.Option(min=1)] = 3,
    duration_s: Annotated[float, typer.Option()] = 2.0,
    processes: Annotated[int, typer.Option(min=1)] = 2,
    protocols: Annotated[
        str, typer.Option(help="Comma-separated: v1, v2 (the load client on V2), v2-perf (perf_analyzer).")
    ] = "v1",
) -> None:
    config = BenchConfig(warmup_s=0.5, duration_s=duration_s)
    console = Console(width=200)
    variants = dict(item.split("=", 1) for item in variant)
    console.print(f"load average at start {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory(prefix="seqserve-ab-") as work:
        repository = Path(work) / "repository"
        info = write_bench_model(repository, Path(work))
        with contextlib.closing(LoadPool(processes)) as pool, contextlib.ExitStack() as stack:
            run = BenchRun(config, pool, repository, info, "cpu", Path(work) / "logs")
            commands = {name: variant_command(run, f, repository, Path(work)) for name, f in variants.items()}
            speaks_v2 = {name for name, flags in variants.items() if not flags.startswith(("@", "!"))}
            if naive:
                commands["naive"] = run.command("naive")
            servers = {
                name: stack.enter_context(running_server(command, Path(work) / f"{name}.log"))
                for name, command in commands.items()
            }
            table = Table(title="A/B, median of rounds")
            for column in ("chunk", "streams", "server", "protocol", "msgs/s", "p50 ms", "p99 ms", "batch",
                           "cpu us/msg", "loop/py/C us/msg", "load avg"):  # fmt: skip
                table.add_column(column, justify="right")
            for chunk in (int(c) for c in chunks.split(",")):
                for count in (int(s) for s in streams.split(",")):
                    cells = [
                        (name, protocol)
                        for protocol in protocols.split(",")
                        for name in servers
                        if protocol == "v1" or name in speaks_v2
                    ]
                    results: dict[tuple[str, str], list[ServedFigures]] = {cell: [] for cell in cells}
                    for _ in range(rounds):
                        for name, protocol in cells:
                            server = servers[name]
                            if protocol == "v2-perf":
                                figures = perf_served(run, server, count, chunk)
                            else:
                                mode = "stream" if protocol == "v1" else protocol
                                figures = run.served(server, name, mode, count, chunk)
                            results[(name, protocol)].append(figures)
                    load = os.getloadavg()[0]
                    for (name, protocol), figures in results.items():
                        split = "/".join(f"{_median(figures, lambda f, g=g: g(f)):.0f}" for g in _THREADS)
                        batch = [f.mean_batch_size for f in figures if f.mean_batch_size]
                        table.add_row(
                            str(chunk), str(count), name, protocol,
                            f"{_median(figures, lambda f: f.load.msgs_per_s):,.0f}",
                            f"{_median(figures, lambda f: f.load.p50_ms):.2f}",
                            f"{_median(figures, lambda f: f.load.p99_ms):.2f}",
                            f"{statistics.median(batch):.1f}" if batch else "",
                            f"{_median(figures, lambda f, c=chunk: f.server_cpu_us_per_step * c):.0f}",
                            split, f"{load:.1f}",
                        )  # fmt: skip
            console.print(table)


if __name__ == "__main__":
    app()
