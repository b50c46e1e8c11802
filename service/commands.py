"""`seqserve serve`, `seqserve stream`, `seqserve classify`: flags in, a server or a load run out.

Only stdlib, typer and rich at module top; the service and data modules load inside each command.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer


def serve_command(
    repository: Path,
    host: str,
    port: int,
    metrics_port: int,
    device: str,
    max_batch: int,
    max_delay_ms: float,
    max_streams: int,
    max_chunk_steps: int,
    max_message_bytes: int,
    idle_timeout_s: float,
    max_idle_timeout_s: float,
    grace_s: float,
    inference_threads: int,
    calls_in_flight: int,
    inline_max_us: float,
    workers: int,
    state_key_file: Path | None,
    checkpoint_ttl_s: float,
) -> None:
    options = dict(locals())
    import asyncio

    from seqserve.cli import fail
    from seqserve.service.config import ServerConfig
    from seqserve.service.server import RunningServer, serve

    try:
        config = ServerConfig(**options)
    except ValueError as exc:
        fail(str(exc))

    def announce(running: RunningServer) -> None:
        typer.echo(running.listening_line())
        sys.stdout.flush()

    try:
        if config.workers > 1:
            from seqserve.service.server import listening_line
            from seqserve.service.workers import serve_workers

            def announce_workers(grpc_address: str, metrics_address: str | None) -> None:
                typer.echo(listening_line(grpc_address, metrics_address))
                sys.stdout.flush()

            code = serve_workers(config, announce_workers)
        else:
            running = asyncio.run(serve(config, announce))
            typer.echo(running.stopped_line())
            code = 0
    except (OSError, RuntimeError, ValueError) as exc:  # ContractError and a bad state key are ValueErrors
        fail(str(exc))
    if code:
        raise typer.Exit(code)


def _report(report, title: str) -> None:  # noqa: ANN001
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_header=False)
    for key, value in report.summary().items():
        table.add_row(key, str(value))
    Console().print(table)


def _run_client(coroutine) -> object:  # noqa: ANN001
    import asyncio

    import grpc

    from seqserve.cli import fail
    from seqserve.training.datasets import DataError

    try:
        return asyncio.run(coroutine)
    except grpc.aio.AioRpcError as exc:
        fail(f"{exc.code().name}: {exc.details()}")
    except (DataError, ValueError) as exc:
        fail(str(exc))


def stream_command(
    target: list[str],
    model: str,
    version: int,
    dataset: str | None,
    data: Path | None,
    split: str,
    seed: int,
    chunk: int,
    concurrency: int,
    limit: int | None,
    checkpoint_every_chunks: int,
) -> None:
    from seqserve.service.client import on_dataset, stream_load

    options = {
        "chunk": chunk,
        "concurrency": concurrency,
        "version": version,
        "progress": True,
        "checkpoint_every_chunks": checkpoint_every_chunks,
    }
    report = _run_client(on_dataset(stream_load, target, model, dataset, data, split, seed, limit, **options))
    _report(report, f"stream {model}: chunk {chunk}, {concurrency} concurrent streams")
    if len(target) > 1 or report.resumes:
        typer.echo(f"resumes: {report.resumes} (streams that moved to another target and went on)")


def classify_command(
    target: str,
    model: str,
    version: int,
    dataset: str | None,
    data: Path | None,
    split: str,
    seed: int,
    batch: int,
) -> None:
    from seqserve.service.client import classify_load, on_dataset

    options = {"batch": batch, "version": version, "progress": True}
    report = _run_client(on_dataset(classify_load, target, model, dataset, data, split, seed, **options))
    _report(report, f"classify {model}: {batch} sequences per call")
