"""`seqserve train` and `seqserve experiment vanishing`: flags in, a run folder and a summary out.

Only the standard library, typer and rich at module top: `seqserve serve` must not pay for torch.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from seqserve.console import make_console


def _fail(message: str) -> None:
    """Raises typer.Exit(2) after one `error:` line (seqserve.cli.fail)."""
    from seqserve.cli import fail

    fail(message)


def check_out(out: Path, force: bool, written: tuple[str, ...], what: str) -> None:
    """Refuse, before any work, an --out that is a file, or one that already holds `written` files (an
    earlier result) unless `force`; a missing folder is created later."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        _fail(f"--out {out} is a file; expected a folder for the {what}")
    found = [name for name in written if (out / name).exists()]
    if found and not force:
        _fail(f"--out {out} already holds a {what} ({found[0]}); pass --force to replace it, or pick another")


def train_command(force: bool = False, **kwargs) -> None:
    """Train one model; a bad data file or flag ends with one `error:` line and exit code 2."""
    from seqserve.training.datasets import DataError
    from seqserve.training.loop import CHECKPOINT_FILE, METRICS_FILE, TrainConfig, train

    check_out(kwargs["out"], force, (CHECKPOINT_FILE, METRICS_FILE), "run")
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


def vanishing_command(out: Path, lengths: str, seed: int, quick: bool, force: bool = False) -> None:
    """Run the vanishing/exploding-gradient study and print its accuracy table."""
    from seqserve.console import steps
    from seqserve.training.vanishing import RESULTS_FILE, StudyConfig, run_study, study_steps

    check_out(out, force, (RESULTS_FILE,), "study's results")
    config = StudyConfig(out=Path(out), lengths=_lengths(lengths), seed=seed, quick=quick)
    with steps("vanishing study", study_steps(config)) as progress:
        study = run_study(config, on_step=progress.advance)
    table = Table(title=f"Long-range task: test accuracy (chance {study.chance:.2f})")
    table.add_column("cell")
    for length in study.lengths:
        table.add_column(f"T={length}", justify="right")
    for cell, by_length in study.results.items():
        table.add_row(cell, *(f"{by_length[t]:.3f}" for t in study.lengths))
    console = make_console()
    console.print(table)
    for line in study.notes:
        console.print(line)
    console.print(f"results, plots and details in {out} ({study.seconds:.0f} s)")
