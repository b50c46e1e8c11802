"""`seqserve stream`, `classify`, `generate`, `forecast`, `translate`: flags in, a load run or answers out.

Only stdlib and typer at module top; the client and data modules load inside each command.
"""

from __future__ import annotations

import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import typer

if TYPE_CHECKING:
    from seqserve.service.client.channels import ClientSecurity
    from seqserve.service.client.load import LoadReport

T = TypeVar("T")


def _report(report: LoadReport, title: str) -> None:
    from rich.table import Table

    from seqserve.console import make_console

    table = Table(title=title, show_header=False)
    for key, value in report.summary().items():
        table.add_row(key, str(value))
    make_console().print(table)


def _security(options: dict[str, Any]) -> ClientSecurity:
    """The CLI's --tls*/--token options as a ClientSecurity (service/client/channels.py)."""
    from seqserve.console import fail
    from seqserve.service.client.channels import ClientSecurity

    try:
        return ClientSecurity(**options)
    except ValueError as exc:
        fail(str(exc))


def _run_client(coroutine: Coroutine[Any, Any, T]) -> T:
    import asyncio

    from seqserve.console import fail
    from seqserve.errors import SeqserveError
    from seqserve.training.datasets import DataError

    try:
        return asyncio.run(coroutine)
    except (SeqserveError, DataError, ValueError) as exc:
        fail(str(exc))


def checked_output(output: Path | None, force: bool) -> Path | None:
    """--output checked before anything runs: one `error:` line for a path that cannot be written."""
    from seqserve.console import fail
    from seqserve.predictions import OutputError, check_output

    try:
        return check_output(output, force)
    except OutputError as exc:
        fail(str(exc))


def write_output(report: LoadReport, output: Path | None) -> None:
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
    chunk_interval_ms: float = 0.0,
    output: Path | None = None,
    force: bool = False,
    **security: Any,
) -> None:
    from seqserve.service.client.load import on_dataset, stream_load

    output = checked_output(output, force)
    options: dict[str, Any] = {"chunk": chunk, "concurrency": concurrency, "version": version}
    options["progress"] = True
    options["include_scores"] = output is not None
    options["checkpoint_every_chunks"] = checkpoint_every_chunks
    options["chunk_interval_s"] = chunk_interval_ms / 1000
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
    **security: Any,
) -> None:
    from seqserve.service.client.load import classify_load, on_dataset

    output = checked_output(output, force)
    options: dict[str, Any] = {"batch": batch, "version": version, "progress": True}
    options["include_scores"] = output is not None
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
    from seqserve.service.client.client import AsyncClient
    from seqserve.service.client.load import Generated, generate

    shown: list[str] = []

    def show(text: str) -> None:
        if not shown:  # the prompt once the server has accepted the request, so errors stand alone
            shown.append(prompt)
            sys.stdout.write(prompt)
        sys.stdout.write(text)
        sys.stdout.flush()

    async def run() -> Generated:
        async with AsyncClient(target) as client:
            return await generate(
                client, model, prompt, max_tokens, temperature, top_k, seed, stop or (), version, on_text=show
            )

    result = _run_client(run())
    sys.stdout.write("\n")
    typer.echo(f"[{result.tokens} characters, stopped: {result.reason}]", err=True)


def forecast_command(
    target: str,
    model: str,
    version: int,
    data: Path,
    horizon: int,
    quantiles: str,
    output: Path | None,
    plot: Path | None,
    force: bool,
    **security: Any,
) -> None:
    """Forecast every series of a history CSV with one Forecast call; write the CSV (and the picture)."""
    from seqserve import forecasts
    from seqserve.service.client.client import AsyncClient

    output = checked_output(output, force)

    async def run() -> str:
        levels = forecasts.parse_levels(quantiles)
        histories = forecasts.read_histories(data)
        names, stamps, values = histories
        async with AsyncClient(target, security=_security(security)) as client:
            answers = await client.forecast(
                model, values, horizon=horizon, quantiles=levels, version=version,
                start_unix_s=[forecasts.start_unix_s(s) for s in stamps],
            )  # fmt: skip
        return forecasts.finish(output, plot, histories, [(a.mean, a.quantiles) for a in answers])

    typer.echo(_run_client(run()), err=output is None)


# Inputs per Translate call, and calls in flight: a long --data file goes as many calls, whose rows the
# server batches together, and no one call holds the whole file.
TRANSLATE_BATCH, TRANSLATE_CALLS = 64, 4


def translate_command(
    target: str,
    model: str,
    version: int,
    words: list[str] | None,
    data: Path | None,
    output: Path | None,
    force: bool,
    beam: int,
    nbest: int,
    max_steps: int,
    length_penalty: float,
    **security: Any,
) -> None:
    """Translate words (arguments and/or a file of one a line) on the server; print or write the results
    (seqserve/translations.py)."""
    import asyncio

    from seqserve import translations
    from seqserve.service.client.client import AsyncClient

    output = checked_output(output, force)

    async def run() -> list[translations.Result]:
        inputs = translations.read_inputs(words or [], data)
        batches = [inputs[i : i + TRANSLATE_BATCH] for i in range(0, len(inputs), TRANSLATE_BATCH)]
        room = asyncio.Semaphore(TRANSLATE_CALLS)
        async with AsyncClient(target, security=_security(security)) as client:

            async def one(batch: list[str]) -> list[translations.Result]:
                async with room:
                    found = await client.translate(
                        model, batch, beam=beam, nbest=nbest, max_steps=max_steps,
                        length_penalty=length_penalty, version=version,
                    )  # fmt: skip
                return [(t.input, t.hypotheses) for t in found]

            done = await asyncio.gather(*(one(batch) for batch in batches))
        return [result for batch in done for result in batch]

    results = _run_client(run())
    sys.stdout.write(translations.write(results, output))
    if output is not None:
        typer.echo(f"wrote {len(results)} translations of {model} to {output}", err=True)
