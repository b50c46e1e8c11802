"""`seqserve train` and `seqserve experiment vanishing` / `horizon`: flags in, a run folder and a summary out.

Only the standard library, typer and rich at module top: `seqserve serve` must not pay for torch.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from seqserve.console import make_console


def _fail(message: str) -> None:
    """Raises typer.Exit(2) after one `error:` line (seqserve.console.fail)."""
    from seqserve.console import fail

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


# Flags only a language model reads, and flags only a classifier reads.
_TEXT_ONLY = ("bptt", "embedding", "max_steps")
_CLASSIFIER_ONLY = ("task", "patience", "chrono")


def train_command(force: bool = False, **kwargs) -> None:
    """Train one model; a bad data file or flag ends with one `error:` line and exit code 2.
    Flags left at None take the defaults of what is trained (a classifier's or a language model's)."""
    from seqserve.training.loop import CHECKPOINT_FILE, METRICS_FILE
    from seqserve.training.text import is_text

    check_out(kwargs["out"], force, (CHECKPOINT_FILE, METRICS_FILE), "run")
    given = {key: value for key, value in kwargs.items() if value is not None}
    if given.get("task") == "forecast":
        _train_forecaster(given)
        return
    if given.get("task") == "seq2seq" or (given.get("dataset") == "cmudict" and "task" not in given):
        _train_seq2seq(given)
        return
    if "horizon" in given:
        _fail("--horizon applies to forecasters only (--task forecast)")
    for key in ("beam", "minutes", "label_smoothing", "weight_decay"):
        if key in given:
            _fail(f"--{key.replace('_', '-')} applies to seq2seq models only (--task seq2seq)")
    if is_text(kwargs.get("dataset"), kwargs.get("data")):
        _train_language_model(given)
        return
    from seqserve.training.datasets import DataError
    from seqserve.training.loop import TrainConfig, train

    stray = [f"--{key.replace('_', '-')}" for key in _TEXT_ONLY if key in given]
    if stray:
        _fail(
            f"{', '.join(stray)} apply to language models only (--dataset shakespeare_chars or a .txt file)"
        )
    try:
        config = TrainConfig(**given)
        result = train(config, progress=True)
    except (DataError, ValueError) as exc:  # bad data or flag values (ModelConfig, task) from the user
        _fail(str(exc))
    metrics = result.metrics
    unit = "per step" if metrics["task"] == "many_to_many" else "per sequence"
    typer.echo(
        f"{metrics['dataset']} {config.cell}: test accuracy {metrics['test_accuracy']:.4f} ({unit}), "
        f"{metrics['epochs']} epochs (best {metrics['best_epoch']}) in {metrics['train_seconds']:.1f} s, "
        f"{metrics['parameters']} parameters -> {result.run_dir}"
    )


# What a forecaster takes of `seqserve train`'s flags; the others are refused when given.
_FORECAST_FLAGS = (
    "out", "dataset", "data", "horizon", "cell", "layers", "hidden", "dropout", "clip", "epochs",
    "batch_size", "lr", "patience", "seed", "threads",
)  # fmt: skip


_CLASSIFIER_LR = 3e-3  # `seqserve train --lr`'s default


def _train_forecaster(given: dict) -> None:
    from seqserve.training.datasets import DataError
    from seqserve.training.forecast_loop import ForecastTrainConfig, train_forecaster

    given.pop("task")
    if given.get("lr") == _CLASSIFIER_LR:  # the command's default is the classifiers': take the forecaster's
        given.pop("lr")
    # Flags with a default count as given only when they differ from it.
    defaults = {"bidirectional": False, "chrono": 0}
    stray = [key for key in given if key not in _FORECAST_FLAGS and given[key] != defaults.get(key)]
    if stray:
        _fail(f"{', '.join('--' + key.replace('_', '-') for key in stray)} do not apply to a forecaster")
    try:
        metrics = train_forecaster(
            ForecastTrainConfig(**{k: v for k, v in given.items() if k in _FORECAST_FLAGS})
        )
    except (DataError, ValueError) as exc:
        _fail(str(exc))
    test = metrics["test"]
    model, naive = test["model"], test["seasonal_naive"]
    typer.echo(
        f"{metrics['dataset']} {given.get('cell', 'gru')} forecaster, {metrics['test_origins']} test "
        f"forecasts of {metrics['horizon']} steps: MAPE {model['mape']:.2f} % "
        f"(seasonal naive {naive['mape']:.2f} %), "
        f"MASE {model['mase']:.3f} ({naive['mase']:.3f}), weighted quantile loss "
        f"{model['weighted_quantile_loss']:.4f} ({naive['weighted_quantile_loss']:.4f}), 80 % coverage "
        f"{model['coverage_80']:.3f} ({naive['coverage_80']:.3f}); {metrics['epochs']} epochs (best "
        f"{metrics['best_epoch']}), {metrics['train_cpu_seconds']:.0f} s CPU, "
        f"{metrics['train_wall_seconds']:.0f} s wall -> {given['out']}"
    )


# What a seq2seq model takes of `seqserve train`'s flags; the others are refused when given.
_SEQ2SEQ_FLAGS = (
    "out", "dataset", "cell", "layers", "hidden", "embedding", "dropout", "clip", "epochs", "batch_size",
    "lr", "patience", "beam", "minutes", "label_smoothing", "weight_decay", "seed", "threads",
)  # fmt: skip


def _train_seq2seq(given: dict) -> None:
    from seqserve.training.datasets import DataError
    from seqserve.training.seq2seq_loop import Seq2SeqTrainConfig, train_seq2seq

    given.pop("task", None)
    given.pop("bidirectional", None)  # the encoder always reads both ways; the flag's default is False
    # Flags with a default count as given only when they differ from it.
    defaults = {"chrono": 0}
    stray = [key for key in given if key not in _SEQ2SEQ_FLAGS and given[key] != defaults.get(key)]
    if stray:
        _fail(f"{', '.join('--' + key.replace('_', '-') for key in stray)} do not apply to a seq2seq model")
    options = {key: value for key, value in given.items() if key in _SEQ2SEQ_FLAGS}
    if "layers" in options:
        options["encoder_layers"] = options.pop("layers")
    if "hidden" in options:
        options["encoder_hidden"] = max(1, options["hidden"] // 2)
    if options.get("minutes") == 0:
        options["minutes"] = None
    try:
        metrics = train_seq2seq(Seq2SeqTrainConfig(**options))
    except (DataError, ValueError) as exc:
        _fail(str(exc))
    width, config = metrics["config"]["beam"], metrics["config"]
    greedy, beam = metrics["test"]["greedy"], metrics["test"][f"beam_{width}"]
    typer.echo(
        f"{metrics['dataset']} {config['cell']} seq2seq, {greedy['words']} test words: greedy WER "
        f"{greedy['wer_percent']:.2f} % PER {greedy['per_percent']:.2f} %, beam {width} WER "
        f"{beam['wer_percent']:.2f} % PER {beam['per_percent']:.2f} %; {metrics['epochs']} epochs (best "
        f"{metrics['best_epoch']}), {metrics['train_cpu_seconds']:.0f} s CPU, "
        f"{metrics['train_wall_seconds']:.0f} s wall, {metrics['parameters']} parameters -> {given['out']}"
    )


def _train_language_model(given: dict) -> None:
    from seqserve.training.datasets import DataError
    from seqserve.training.text_loop import TextTrainConfig, train_text

    if given.pop("bidirectional", False):
        _fail("a language model generates left to right: --bidirectional does not apply")
    # patience and chrono have defaults, so only a value other than the default counts as given.
    if "task" in given or given.get("chrono"):
        _fail("--task and --chrono apply to classifiers only, not to a language model")
    for key in _CLASSIFIER_ONLY:
        given.pop(key, None)
    try:
        run_dir, metrics = train_text(TextTrainConfig(**given))
    except (DataError, ValueError) as exc:
        _fail(str(exc))
    baselines = metrics["baselines"]["validation"]
    validation, test = metrics["validation"], metrics["test"]
    typer.echo(
        f"{metrics['dataset']} {given.get('cell', 'gru')} language model: validation "
        f"{validation['nats_per_char']:.4f} nats/char ({validation['bits_per_char']:.3f} bits), test "
        f"{test['nats_per_char']:.4f} nats/char; baselines on validation: unigram "
        f"{baselines['unigram']['nats_per_char']:.4f}, bigram {baselines['bigram']['nats_per_char']:.4f}; "
        f"{metrics['steps']} steps in {metrics['train_seconds']:.0f} s wall, "
        f"{metrics['train_cpu_seconds']:.0f} s CPU, {metrics['parameters']} parameters -> {run_dir}"
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


def horizon_command(out: Path, run: Path | None, max_horizon: int, force: bool = False) -> None:
    """Run the horizon study of a forecaster run (without --run: a Taylor GRU trained first, at the default
    budget, into out/run) and print its table."""
    from seqserve.training.forecast_loop import ForecastTrainConfig, train_forecaster
    from seqserve.training.horizon import PLOT_FILE, RESULTS_FILE, run_horizon_study
    from seqserve.training.loop import CHECKPOINT_FILE

    check_out(out, force, (RESULTS_FILE,), "study's results")
    if run is None:
        run = Path(out) / "run"
        typer.echo(f"training a Taylor GRU forecaster at the default budget into {run}")
        train_forecaster(ForecastTrainConfig(out=run, dataset="taylor"))
    elif not (Path(run) / CHECKPOINT_FILE).is_file():
        _fail(f"--run {run} holds no {CHECKPOINT_FILE}; expected a forecaster's run folder")
    try:
        study = run_horizon_study(Path(run), Path(out), max_horizon)
    except ValueError as exc:
        _fail(str(exc))
    table = Table(title=f"Error and 80 % interval against horizon ({study.origins} origins)")
    for column in ("horizon", "rollout MAE", "one-step MAE", "naive MAE", "80 % width", "coverage"):
        table.add_column(column, justify="right")
    for k in sorted({1, 2, 4, 8, 16, 24, 48, 96, 168, 336, max_horizon} & set(range(1, max_horizon + 1))):
        table.add_row(
            str(k),
            f"{study.rollout_mae[k - 1]:.0f}",
            f"{study.one_step_mae[k - 1]:.0f}",
            f"{study.naive_mae[k - 1]:.0f}",
            f"{study.width_80[k - 1]:.0f}",
            f"{study.coverage_80[k - 1]:.2f}",
        )
    console = make_console()
    console.print(table)
    console.print(f"{RESULTS_FILE} and {PLOT_FILE} in {out}")
