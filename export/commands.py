"""`seqserve export` and `seqserve models`: flags in, progress lines and a summary table out.

Only stdlib, typer and rich at module top; the export stack (torch, onnx) is imported when a command runs.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from seqserve.console import make_console, steps

if TYPE_CHECKING:
    from seqserve.contract import ModelInfo
    from seqserve.export.job import ExportResult, RunOutcome

console = make_console()


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
        f"{info.name} v{info.version} {info.precision} accuracy {result.accuracy:.4f} "
        f"parity {_parity_text(info)} latency {result.latency.single_ms:.3f} ms"
    )


def _print_outcome(outcome: RunOutcome) -> None:
    if outcome.ok:
        console.print("[green]ok[/green] " + "; ".join(_version_line(r) for r in outcome.results))
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


def _speed_text(speedup: float) -> str:
    if speedup >= 1.05:
        return f"x{speedup:.2f} faster"
    if speedup <= 0.95:
        return f"SLOWER (x{speedup:.2f})"
    return f"no faster (x{speedup:.2f})"


def _int8_notes(outcomes: list[RunOutcome]) -> list[str]:
    """One plain paragraph per int8 model: accuracy and speed beside its fp32 twin, timed side by side in
    this run, and what was quantized."""
    notes = []
    for outcome in outcomes:
        pairs = {r.info.precision: r for r in outcome.results}
        if "int8" not in pairs:
            continue
        fp32, int8 = pairs["fp32"].info, pairs["int8"].info
        metrics = int8.test_metrics
        single, batch = metrics["speedup"]["single"], metrics["speedup"]["batch"]
        batch_size = metrics["latency_ms"]["batch"]
        notes.append(
            f"{int8.name} (int8) beside {fp32.name} (fp32), timed side by side on this machine just now: "
            f"{_speed_text(single)} for one sequence, {_speed_text(batch)} for a batch of {batch_size}; "
            f"accuracy {metrics['onnx_accuracy']:.4f} vs {metrics['fp32_onnx_accuracy']:.4f}. "
            f"Static scales calibrated on the training split: answers do not depend on the batch. "
            f"int8 reaches {', '.join(metrics['int8_op_types']) or 'no op'} only; the {int8.cell.upper()} "
            f"layers stay fp32 (onnxruntime has no static int8 kernel for them)."
            + (" fp32 is the better choice here." if max(single, batch) < 1.0 else "")
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
    from seqserve.console import fail
    from seqserve.export.errors import ExportInputError
    from seqserve.export.job import export_runs, steps_of

    runs = _export_own_jobs(runs, repository, name, version, force)
    if not runs:
        return
    with ExitStack() as stack:

        def progress_for(plans: list) -> Callable[[str], None]:
            progress = stack.enter_context(steps("export", sum(steps_of(plan) for plan in plans)))
            return progress.advance

        try:
            outcomes = export_runs(
                runs,
                repository,
                name,
                version,
                quantize,
                opset,
                force,
                on_outcome=_print_outcome,
                on_plans=progress_for,
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


def _forecaster_line(info: ModelInfo, path: Path) -> str:
    return (
        f"{info.name} v{info.version}: forecaster, parity with PyTorch {info.parity['max_abs_diff']:.1e} "
        f"(in units of the series scale) -> {path}"
    )


def _seq2seq_line(info: ModelInfo, path: Path) -> str:
    parity = info.parity
    return (
        f"{info.name} v{info.version}: seq2seq, encoder and decoder step, parity with PyTorch "
        f"{parity['max_abs_diff']:.1e} at every teacher-forced step of {parity['words']} test words, greedy "
        f"decodes equal -> {path}"
    )


def _export_own_jobs(
    runs: list[Path], repository: Path, name: str | None, version: int | None, force: bool
) -> list[Path]:
    """Export the forecaster and seq2seq runs among `runs` (export/forecast_job.py, seq2seq_job.py, one
    version each); returns the other runs."""
    from seqserve import contract
    from seqserve.console import fail
    from seqserve.export.errors import ExportError, ExportInputError
    from seqserve.export.forecast_job import export_forecaster
    from seqserve.export.runs import checkpoint_kind
    from seqserve.export.seq2seq_job import export_seq2seq

    jobs = {
        contract.FORECAST: (export_forecaster, _forecaster_line),
        contract.SEQ2SEQ: (export_seq2seq, _seq2seq_line),
    }
    others = []
    for run in runs:
        kind = checkpoint_kind(run)
        if kind not in jobs:
            others.append(run)
            continue
        export, line = jobs[kind]
        try:
            path, info = export(run, repository, name, version, force)
        except (ExportError, ExportInputError) as exc:
            fail(str(exc))
        console.print(line(info, path), highlight=False)
    return others


def models_command(repository: Path) -> None:
    from seqserve import contract
    from seqserve.console import fail

    if not repository.is_dir():
        fail(f"repository {repository} is not a folder")
    table = Table(title=str(repository), caption="default: the version a request that pins none gets")
    columns = ("model", "version", "default", "task", "cell", "layers x hidden", "precision", "accuracy")
    for column in (*columns, "parity"):
        table.add_column(column)
    broken = 0
    for name in contract.list_models(repository):
        numbers = contract.list_versions(repository, name)
        for number in numbers:
            default = "default" if number == numbers[-1] else ""
            folder = contract.version_dir(repository, name, number)
            if not (folder / contract.METADATA_FILE).exists():  # a graph seqserve did not write
                source = "declaration.json" if (folder / "declaration.json").is_file() else "inferred at load"
                table.add_row(name, str(number), default, contract.DECLARED, f"graph ({source})", *["-"] * 4)
                continue
            try:
                info = contract.read_model_info(folder)
            except contract.ContractError as exc:
                broken += 1
                table.add_row(name, str(number), default, f"[red]unreadable: {exc}[/red]", *["-"] * 5)
                continue
            shape = f"{info.layers} x {info.hidden}" + (" bi" if info.bidirectional else "")
            table.add_row(
                name,
                str(number),
                default,
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
