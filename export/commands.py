"""`seqserve export` and `seqserve models`: flags in, progress lines and a summary table out.

Only stdlib, typer and rich at module top; the export stack (torch, onnx) is imported when a command runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from seqserve.contract import ModelInfo
    from seqserve.export.job import ExportResult, RunOutcome

console = Console()


def _parity_text(info: ModelInfo) -> str:
    parity = info.parity
    if "max_abs_diff" in parity:
        return f"{'ok' if parity.get('passed') else 'FAILED'} {parity['max_abs_diff']:.1e}"
    if "prediction_agreement" in parity:
        return f"agrees {parity['prediction_agreement']:.1%} with {parity.get('reference', 'fp32')}"
    return "-"


def _accuracy_text(info: ModelInfo) -> str:
    accuracy = info.test_metrics.get("onnx_accuracy")
    return "-" if accuracy is None else f"{accuracy:.4f}"


def _version_line(result: ExportResult) -> str:
    info = result.info
    return (
        f"v{info.version} {info.precision} accuracy {result.accuracy:.4f} parity {_parity_text(info)} "
        f"latency {result.latency.single_ms:.3f} ms"
    )


def _print_outcome(outcome: RunOutcome) -> None:
    if outcome.ok:
        console.print(
            f"[green]ok[/green] {outcome.name}: " + "; ".join(_version_line(r) for r in outcome.results)
        )
    else:
        console.print(f"[red]failed[/red] {outcome.error}", highlight=False)


def _summary_table(outcomes: list[RunOutcome]) -> Table:
    table = Table(title="export")
    for column in (
        "model",
        "version",
        "precision",
        "task",
        "cell",
        "accuracy",
        "parity",
        "1 seq ms",
        "batch ms",
    ):
        table.add_column(
            column, justify="right" if column.endswith(("ms", "accuracy", "version")) else "left"
        )
    for outcome in outcomes:
        if not outcome.ok:
            table.add_row(outcome.name, "-", "-", "-", "-", "-", "[red]failed[/red]", "-", "-")
        for result in outcome.results:
            info, latency = result.info, result.latency
            table.add_row(
                info.name,
                str(info.version),
                info.precision,
                info.task,
                info.cell,
                f"{result.accuracy:.4f}",
                _parity_text(info),
                f"{latency.single_ms:.3f}",
                f"{latency.batch_ms:.3f} ({latency.batch})",
            )
    return table


def _int8_notes(outcomes: list[RunOutcome]) -> list[str]:
    """One line per int8 version: accuracy and speed against its fp32 twin, and which ops were quantized."""
    notes = []
    for outcome in outcomes:
        pairs = {r.info.precision: r for r in outcome.results}
        if "int8" not in pairs:
            continue
        fp32, int8 = pairs["fp32"], pairs["int8"]
        notes.append(
            f"{outcome.name} int8 vs fp32: accuracy {int8.accuracy:.4f} vs {fp32.accuracy:.4f}, speed-up "
            f"x{fp32.latency.single_ms / int8.latency.single_ms:.2f} (1 seq), "
            f"x{fp32.latency.batch_ms / int8.latency.batch_ms:.2f} (batch of {int8.latency.batch}); "
            f"quantized ops {int8.info.test_metrics.get('quantized_ops', {})}"
        )
    return notes


def export_command(
    runs: list[Path],
    repository: Path,
    name: str | None,
    version: int | None,
    quantize: str | None,
    opset: int,
    force: bool,
) -> None:
    from seqserve.cli import fail
    from seqserve.export.errors import ExportInputError
    from seqserve.export.job import export_runs

    try:
        outcomes = export_runs(
            runs, repository, name, version, quantize, opset, force, on_outcome=_print_outcome
        )
    except ExportInputError as exc:
        fail(str(exc))
    console.print(_summary_table(outcomes))
    for note in _int8_notes(outcomes):
        console.print(note, highlight=False)
    failed = [outcome.name for outcome in outcomes if not outcome.ok]
    if failed:
        console.print(f"[red]{len(failed)} of {len(outcomes)} model(s) failed:[/red] {', '.join(failed)}")
        raise typer.Exit(1)


def models_command(repository: Path) -> None:
    from seqserve import contract
    from seqserve.cli import fail

    if not repository.is_dir():
        fail(f"repository {repository} is not a folder")
    table = Table(title=str(repository))
    for column in ("model", "version", "task", "cell", "layers x hidden", "precision", "accuracy", "parity"):
        table.add_column(column)
    broken = 0
    for name in contract.list_models(repository):
        for number in contract.list_versions(repository, name):
            try:
                info = contract.read_model_info(contract.version_dir(repository, name, number))
            except contract.ContractError as exc:
                broken += 1
                table.add_row(name, str(number), f"[red]unreadable: {exc}[/red]", *["-"] * 5)
                continue
            shape = f"{info.layers} x {info.hidden}" + (" bi" if info.bidirectional else "")
            table.add_row(
                name,
                str(number),
                info.task,
                info.cell,
                shape,
                info.precision,
                _accuracy_text(info),
                _parity_text(info),
            )
    console.print(table)
    if broken:
        raise typer.Exit(1)
