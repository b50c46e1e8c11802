"""`seqserve stream`, `classify`, `generate`: flags in, a load run against a server out.

Only stdlib and typer at module top; the client and data modules load inside each command.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer


def _report(report, title: str) -> None:  # noqa: ANN001
    from rich.table import Table

    from seqserve.console import make_console

    table = Table(title=title, show_header=False)
    for key, value in report.summary().items():
        table.add_row(key, str(value))
    make_console().print(table)


def _security(options: dict[str, object]):  # noqa: ANN202
    """The CLI's --tls*/--token options as a ClientSecurity (service/client/channels.py)."""
    from seqserve.console import fail
    from seqserve.service.client.channels import ClientSecurity

    try:
        return ClientSecurity(**options)
    except ValueError as exc:
        fail(str(exc))


def _run_client(coroutine) -> object:  # noqa: ANN001
    import asyncio

    import grpc

    from seqserve.console import fail
    from seqserve.training.datasets import DataError

    try:
        return asyncio.run(coroutine)
    except grpc.aio.AioRpcError as exc:
        fail(f"{exc.code().name}: {exc.details()}")
    except (DataError, ValueError) as exc:
        fail(str(exc))


def checked_output(output: Path | None, force: bool) -> Path | None:
    """--output checked before anything runs: one `error:` line for a path that cannot be written."""
    from seqserve.console import fail
    from seqserve.predictions import OutputError, check_output

    try:
        return check_output(output, force)
    except OutputError as exc:
        fail(str(exc))


def write_output(report, output: Path | None) -> None:  # noqa: ANN001
    from seqserve.predictions import write_predictions

    if output is None:
        return
    count = write_predictions(output, report.predictions, report.labels, report.task == "many_to_many")
    unit = "steps" if report.task == "many_to_many" else "sequences"
    typer.echo(f"wrote {count} predictions ({unit}) of {report.model}:{report.version} to {output}")


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
    checkpoint_every_chunks: int = 0,
    output: Path | None = None,
    force: bool = False,
    **security: object,
) -> None:
    from seqserve.service.client.load import on_dataset, stream_load

    output = checked_output(output, force)
    options = {"chunk": chunk, "concurrency": concurrency, "version": version, "progress": True}
    options["include_scores"] = output is not None
    options["checkpoint_every_chunks"] = checkpoint_every_chunks
    options["security"] = _security(security)
    report = _run_client(on_dataset(stream_load, target, model, dataset, data, split, seed, limit, **options))
    _report(report, f"stream {model}: chunk {chunk}, {concurrency} concurrent streams")
    if len(target) > 1 or report.resumes:
        typer.echo(f"resumes: {report.resumes} (streams that moved to another target and went on)")
    write_output(report, output)


def classify_command(
    target: str,
    model: str,
    version: int,
    dataset: str | None,
    data: Path | None,
    split: str,
    seed: int,
    batch: int,
    output: Path | None = None,
    force: bool = False,
    **security: object,
) -> None:
    from seqserve.service.client.load import classify_load, on_dataset

    output = checked_output(output, force)
    options = {"batch": batch, "version": version, "progress": True, "include_scores": output is not None}
    options["security"] = _security(security)
    report = _run_client(on_dataset(classify_load, target, model, dataset, data, split, seed, **options))
    _report(report, f"classify {model}: {batch} sequences per call")
    write_output(report, output)


def generate_command(
    target: str,
    model: str,
    version: int,
    prompt: str,
    max_tokens: int,
    temperature: float,
    top_k: int,
    seed: int,
    stop: list[str] | None,
) -> None:
    """Print the prompt, then the generated text as it arrives, then why it stopped (on stderr)."""
    import grpc

    from seqserve.service.client.load import CHANNEL_OPTIONS, generate
    from seqserve.v1 import seqserve_pb2 as pb
    from seqserve.v1 import seqserve_pb2_grpc as pb_grpc

    shown = []

    def show(text: str) -> None:
        if not shown:  # the prompt once the server has accepted the request, so errors stand alone
            shown.append(prompt)
            sys.stdout.write(prompt)
        sys.stdout.write(text)
        sys.stdout.flush()

    async def run() -> object:
        async with grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
            stub = pb_grpc.InferenceServiceStub(channel)
            return await generate(
                stub, model, prompt, max_tokens, temperature, top_k, seed, stop or (), version, on_text=show
            )

    result = _run_client(run())
    sys.stdout.write("\n")
    reason = pb.GenerateStopReason.Name(result.reason).removeprefix("GENERATE_STOP_REASON_").lower()
    typer.echo(f"[{result.tokens} characters, stopped: {reason}]", err=True)
