"""The vanishing-gradient study: RNN vs GRU vs LSTM on a long-range task at several lengths T.

Every model gets the same budget (hidden size, data, epochs, learning rate, clipping). Gated cells use
chrono initialisation (`training/model.py: chrono_init`, max dependency = T); the same runs with PyTorch's
default initialisation are the ablation that shows the initialisation decides whether they learn at long
T. The exploding side: a vanilla RNN whose recurrent weights are scaled up, trained with and without
gradient clipping. Outputs in the study folder: results.json ({cell: {T: test accuracy}}), details.json
(everything else measured), and PNG plots.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from seqserve.contract import CELLS
from seqserve.training.datasets import DatasetSplits
from seqserve.training.gradient_probe import hidden_gradient_norms
from seqserve.training.loop import TrainConfig, build_model, evaluate, fit
from seqserve.training.model import SequenceClassifier
from seqserve.training.plots import plot_accuracy_vs_length, plot_gradient_through_time, plot_step_traces
from seqserve.training.synthetic import LongRangeTask

logger = logging.getLogger(__name__)

GATED = ("gru", "lstm")
RESULTS_FILE = "results.json"
PROBE_SEQUENCES = 128
# Recurrent weights x2 (spectral radius above 1, so gradients can grow through time) on a length the RNN
# can learn, so clipping's effect shows in accuracy as well as in the gradient-norm trace.
EXPLODING_GAIN = 2.0
EXPLODING_LENGTH = 20


@dataclass(frozen=True)
class Budget:
    """What every model in the study gets."""

    hidden: int
    train: int
    validation: int
    test: int
    epochs: int
    batch_size: int
    lr: float
    patience: int
    clip: float = 1.0


FULL_BUDGET = Budget(
    hidden=32, train=2048, validation=256, test=1024, epochs=40, batch_size=64, lr=1e-2, patience=10
)
QUICK_BUDGET = Budget(
    hidden=8, train=64, validation=32, test=64, epochs=1, batch_size=32, lr=1e-2, patience=1
)


@dataclass
class StudyConfig:
    out: Path
    lengths: list[int] = field(default_factory=lambda: [50, 100, 200])
    seed: int = 0
    quick: bool = False


@dataclass
class Run:
    """One trained model of the study, with what was measured on it."""

    cell: str
    length: int
    chrono: int
    clip: float
    gain: float
    test_accuracy: float
    seconds: float
    epochs: int
    step_grad_norms: list[float]  # before clipping, one per optimiser step
    probe_initial: list[float]  # ||dloss/dh_t|| for t = 0..T-1 at initialisation
    probe_trained: list[float]  # the same after training

    @property
    def name(self) -> str:
        if self.gain != 1.0:
            return f"{self.cell} x{self.gain:g} recurrent weights, " + (
                f"clip {self.clip:g}" if self.clip else "no clip"
            )
        if self.cell in GATED and not self.chrono:
            return f"{self.cell} (default init)"
        return self.cell


@dataclass
class StudyResult:
    lengths: list[int]
    results: dict[str, dict[int, float]]  # the RNN and the chrono-initialised gated cells
    default_init: dict[str, dict[int, float]]  # gated cells with PyTorch's default initialisation
    chance: float
    seconds: float
    notes: list[str]


def _probe(model: SequenceClassifier, splits: DatasetSplits) -> list[float]:
    chosen = range(min(PROBE_SEQUENCES, len(splits.test)))
    x = torch.from_numpy(np.stack([splits.test.sequences[i] for i in chosen]))
    targets = torch.tensor([int(splits.test.targets[i]) for i in chosen])
    return hidden_gradient_norms(model, x, targets).tolist()


def _run(
    cell: str,
    splits: DatasetSplits,
    budget: Budget,
    seed: int,
    chrono: int = 0,
    clip: float | None = None,
    gain: float = 1.0,
) -> Run:
    config = TrainConfig(
        out=Path("."),
        cell=cell,
        hidden=budget.hidden,
        epochs=budget.epochs,
        batch_size=budget.batch_size,
        lr=budget.lr,
        patience=budget.patience,
        clip=budget.clip if clip is None else clip,
        chrono=chrono,
        seed=seed,
    )
    torch.manual_seed(seed)
    model = build_model(config, splits)
    with torch.no_grad():
        model.rnn.weight_hh_l0.mul_(gain)
    initial = _probe(model, splits)
    fitted = fit(model, splits.train, splits.validation, config)
    run = Run(
        cell=cell,
        length=len(splits.test.sequences[0]),
        chrono=chrono,
        clip=config.clip,
        gain=gain,
        test_accuracy=evaluate(model, splits.test)[1],
        seconds=round(fitted.seconds, 2),
        epochs=len(fitted.history),
        step_grad_norms=fitted.step_grad_norms,
        probe_initial=initial,
        probe_trained=_probe(model, splits),
    )
    logger.info("%s T=%d: test accuracy %.3f in %.1f s", run.name, run.length, run.test_accuracy, run.seconds)
    return run


def _table(runs: list[Run], keep) -> dict[str, dict[int, float]]:
    table: dict[str, dict[int, float]] = {}
    for run in runs:
        if keep(run):
            table.setdefault(run.cell, {})[run.length] = run.test_accuracy
    return table


def _notes(runs: list[Run], longest: int, exploding: list[Run]) -> list[str]:
    notes = []
    for run in runs:
        if run.length == longest and run.gain == 1.0:
            initial = run.probe_initial
            notes.append(
                f"{run.name} at T={longest}: |dL/dh_0| / |dL/dh_T| = {initial[0] / initial[-1]:.1e} "
                f"at initialisation, {run.probe_trained[0] / run.probe_trained[-1]:.1e} after training"
            )
    for run in exploding:
        norms = np.asarray(run.step_grad_norms)
        notes.append(
            f"{run.name} at T={run.length}: gradient norm median {np.median(norms):.2f}, "
            f"max {norms.max():.1f}; test accuracy {run.test_accuracy:.3f}"
        )
    return notes


def study_steps(config: StudyConfig) -> int:
    """How many models `run_study` trains: the length of its progress bar."""
    return len(config.lengths) * (len(CELLS) + len(GATED)) + 2


def _no_step(label: str) -> None:
    return None


def run_study(config: StudyConfig, on_step: Callable[[str], None] = _no_step) -> StudyResult:
    """Train every model, write results.json, details.json and the plots into `config.out`;
    `on_step(label)` after each of the `study_steps(config)` models."""
    torch.set_num_threads(1)  # small models: one thread is fastest and steadiest on a shared CPU
    started = time.perf_counter()
    budget = QUICK_BUDGET if config.quick else FULL_BUDGET
    sizes = (budget.train, budget.validation, budget.test)
    runs: list[Run] = []

    def step(run: Run, label: str) -> Run:
        on_step(label)
        return run

    for length in config.lengths:
        splits = LongRangeTask(length).splits(sizes, config.seed)
        runs += [
            step(
                _run(cell, splits, budget, config.seed, chrono=length if cell in GATED else 0),
                f"{cell} T={length}" + (" chrono init" if cell in GATED else ""),
            )
            for cell in CELLS
        ]
        runs += [step(_run(cell, splits, budget, config.seed), f"{cell} T={length}") for cell in GATED]
    shortest, longest = min(config.lengths), max(config.lengths)
    splits = LongRangeTask(EXPLODING_LENGTH).splits(sizes, config.seed)
    exploding = [
        step(
            _run("rnn", splits, budget, config.seed, clip=clip, gain=EXPLODING_GAIN),
            f"rnn exploding, clip {clip or 'off'}",
        )
        for clip in (budget.clip, 0.0)
    ]
    results = _table(runs, lambda run: run.cell == "rnn" or run.chrono > 0)
    default_init = _table(runs, lambda run: run.cell in GATED and run.chrono == 0)
    chance = LongRangeTask(shortest).chance
    study = StudyResult(
        config.lengths,
        results,
        default_init,
        chance,
        time.perf_counter() - started,
        _notes(runs, longest, exploding),
    )
    _write(config.out, study, runs, exploding, budget, longest)
    return study


def _write(
    out: Path, study: StudyResult, runs: list[Run], exploding: list[Run], budget: Budget, longest: int
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    as_json = {
        cell: {str(t): acc for t, acc in by_length.items()} for cell, by_length in study.results.items()
    }
    (out / RESULTS_FILE).write_text(json.dumps(as_json, indent=2))
    details = {
        "results": as_json,
        "default_init": {c: {str(t): a for t, a in by_t.items()} for c, by_t in study.default_init.items()},
        "chance": study.chance,
        "seconds": round(study.seconds, 1),
        "budget": asdict(budget),
        "task": asdict(LongRangeTask(longest)) | {"length": "T"},
        "exploding_gain": EXPLODING_GAIN,
        "notes": study.notes,
        "runs": [asdict(run) | {"name": run.name} for run in runs + exploding],
    }
    (out / "details.json").write_text(json.dumps(details, indent=2))
    named = {f"{cell} (default init)": by_t for cell, by_t in study.default_init.items()}
    plot_accuracy_vs_length(study.results | named, study.chance, out / "accuracy_vs_length.png")
    at_longest = [run for run in runs if run.length == longest]
    plot_gradient_through_time(
        {run.name: np.asarray(run.probe_initial) for run in at_longest},
        out / "gradient_through_time_init.png",
        f"Gradient reaching each step at initialisation, T={longest}",
    )
    plot_gradient_through_time(
        {run.name: np.asarray(run.probe_trained) for run in at_longest},
        out / "gradient_through_time_trained.png",
        f"Gradient reaching each step after training, T={longest}",
    )
    plot_step_traces(
        {run.name: run.step_grad_norms for run in exploding},
        out / "exploding_gradient_norms.png",
        f"Exploding gradients: RNN, T={exploding[0].length}",
        "gradient norm before clipping",
    )
