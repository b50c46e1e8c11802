"""`seqserve serve`: flags in, a server (or `--workers N` of them) out.

Only stdlib and typer at module top; the server modules load inside the command.
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
    max_accept_delay_ms: float,
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
    poll_repository_s: float,
    metrics_host: str,
    tls_cert: Path | None,
    tls_key: Path | None,
    tls_client_ca: Path | None,
    auth_tokens_file: Path | None,
    max_streams_per_token: int,
    max_generate_tokens: int,
    max_forecast_steps: int,
    max_beam: int,
    max_decode_steps: int,
) -> None:
    options = dict(locals())
    import asyncio

    from seqserve.console import fail
    from seqserve.service.config import ServerConfig
    from seqserve.service.server.grpc_server import RunningServer, serve

    try:
        config = ServerConfig(**options)
    except ValueError as exc:
        fail(str(exc))

    def announce(running: RunningServer) -> None:
        typer.echo(running.listening_line())
        sys.stdout.flush()

    try:
        if config.workers > 1:
            from seqserve.service.server.grpc_server import listening_line
            from seqserve.service.server.workers import serve_workers

            def announce_workers(grpc_address: str, metrics_address: str | None) -> None:
                typer.echo(listening_line(grpc_address, metrics_address))
                sys.stdout.flush()

            code = serve_workers(config, announce_workers)
        else:
            running = asyncio.run(serve(config, announce))
            typer.echo(running.stopped_line())
            code = 0
    except (
        OSError,
        RuntimeError,
        ValueError,
    ) as exc:  # ValueError: a ContractError, tokens, TLS or state key files
        fail(str(exc))
    if code:
        raise typer.Exit(code)
