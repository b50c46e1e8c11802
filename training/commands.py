"""`seqserve train` and `seqserve experiment vanishing`: flags in, a run folder and a summary out.

Only the standard library, typer and rich at module top: `seqserve serve` must not pay for torch.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table


def _fail(message: str) -> None:
    """Raises typer.Exit(2) after one `error:` line (seqserve.cli.fail)."""
    from seqserve.cli import fail

    fail(message)


def train_command(**kwargs) -> None:
    """Train one model; a bad data file or flag ends with one `error:` line and exit code 2."""
    from seqserve.training.datasets import DataError
    from seqserve.training.loop import TrainConfig, train

    try:
        result = train(TrainConfig(**kwargs), progress=True)
    except (DataError, ValueError) as exc:  # bad data or flag values (ModelConfig, task) from the user
        _fail(str(exc))
    metrics = result.metrics
    unit = "per step" if metrics["task"] == "many_to_many" else "per sequence"
    typer.echo(
        f"{metrics['dataset']} {kwargs['cell']}: test accuracy {metrics['test_accuracy']:.4f} ({unit}), "
        f"{metrics['epochs']} epochs (best {metrics['best_epoch']}) in {metrics['train_seconds']:.1f} s, "
        f"{metrics['parameters']} parameters -> {result.run_dir}"
    )


def _lengths(text: str) -> list[int]:
    from seqserve.training.synthetic import LongRangeTask

    try:
        lengths = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        lengths = []
    if not lengths or min(lengths) <= LongRangeTask.cue_steps:
        _fail(
            f"--lengths {text!r}: expected comma-separated integers > {LongRangeTask.cue_steps} "
            "(the cue's length), e.g. 50,100,200"
        )
    return lengths


def vanishing_command(out: Path, lengths: str, seed: int, quick: bool) -> None:
    """Run the vanishing/exploding-gradient study and print its accuracy table."""
    from seqserve.training.vanishing import StudyConfig, run_study

    study = run_study(StudyConfig(out=Path(out), lengths=_lengths(lengths), seed=seed, quick=quick))
    table = Table(title=f"Long-range task: test accuracy (chance {study.chance:.2f})")
    table.add_column("cell")
    for length in study.lengths:
        table.add_column(f"T={length}", justify="right")
    for cell, by_length in study.results.items():
        table.add_row(cell, *(f"{by_length[t]:.3f}" for t in study.lengths))
    console = Console()
    console.print(table)
    for line in study.notes:
        console.print(line)
    console.print(f"results, plots and details in {out} ({study.seconds:.0f} s)")
