"""The training loop: AdamW, clipping by norm, early stopping on validation, a run folder at the end.

`fit` trains any `SequenceClassifier` on two `SequenceSet`s (the vanishing-gradient study reuses it);
`train` is the whole `seqserve train`: data, model, fit, test metrics, checkpoint, metrics.json, plots.
Seeded and deterministic on CPU: the same config gives the same weights.
"""

from __future__ import annotations

import json
import logging
import math
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional

from seqserve.training.batches import IGNORE_INDEX, Batch, batch_count, batches, feature_statistics
from seqserve.training.datasets import DatasetSplits, SequenceSet, load_dataset, with_task
from seqserve.training.evaluation import classification_report
from seqserve.training.model import (
    ModelConfig,
    SequenceClassifier,
    checkpoint_payload,
    chrono_init,
    parameter_count,
)

logger = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"
METRICS_FILE = "metrics.json"
WEIGHT_DECAY = 1e-2  # AdamW's usual default, kept explicit since it is part of the recipe
EVAL_BATCH = 256


@dataclass
class TrainConfig:
    """Everything `seqserve train` takes; field names are its flags."""

    out: Path
    dataset: str | None = None
    data: Path | None = None
    task: str | None = None  # None: what the data holds
    cell: str = "gru"
    layers: int = 1
    hidden: int = 64
    bidirectional: bool = False
    dropout: float = 0.0
    layer_norm: bool = True
    clip: float = 1.0  # max gradient norm; 0 disables clipping
    epochs: int = 60
    batch_size: int = 32
    lr: float = 3e-3
    patience: int = 10
    chrono: int = 0  # chrono gate-bias init for ~N-step dependencies; 0 disables
    seed: int = 0
    threads: int = 1  # torch intra-op threads; small recurrent models run fastest and steadiest on one

    def to_dict(self) -> dict:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float
    train_accuracy: float
    validation_loss: float
    validation_accuracy: float
    grad_norm_mean: float  # gradient norm before clipping, averaged over the epoch's steps
    grad_norm_max: float


@dataclass
class FitResult:
    history: list[EpochRecord]
    best_epoch: int  # 1-based; the model holds this epoch's weights
    seconds: float
    step_grad_norms: list[float] = field(default_factory=list)  # before clipping, one per optimiser step


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict


def batch_loss(model: SequenceClassifier, batch: Batch) -> tuple[torch.Tensor, int, int]:
    """Mean cross-entropy, correct predictions and counted predictions (sequences or valid steps)."""
    logits, _ = model(batch.x, batch.lengths)
    logits = logits.reshape(-1, logits.shape[-1])
    targets = batch.targets.reshape(-1)
    loss = functional.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX)
    valid = targets != IGNORE_INDEX
    correct = int((logits.argmax(dim=-1)[valid] == targets[valid]).sum())
    return loss, correct, int(valid.sum())


@torch.no_grad()
def evaluate(model: SequenceClassifier, data: SequenceSet) -> tuple[float, float]:
    """Loss averaged over predictions, and accuracy (per sequence, or per step for many-to-many)."""
    model.eval()
    total_loss, correct, count = 0.0, 0, 0
    for batch in batches(data, EVAL_BATCH):
        loss, hits, counted = batch_loss(model, batch)
        total_loss += float(loss) * counted
        correct, count = correct + hits, count + counted
    return total_loss / max(count, 1), correct / max(count, 1)


@torch.no_grad()
def predict(model: SequenceClassifier, data: SequenceSet) -> tuple[np.ndarray, np.ndarray]:
    """Flat true and predicted classes: one per sequence, or one per valid step for many-to-many."""
    model.eval()
    truth, predicted = [], []
    for batch in batches(data, EVAL_BATCH):
        logits, _ = model(batch.x, batch.lengths)
        valid = batch.targets != IGNORE_INDEX
        truth.append(batch.targets[valid].numpy())
        predicted.append(logits.argmax(dim=-1)[valid].numpy())
    return np.concatenate(truth), np.concatenate(predicted)


def _progress(enabled: bool):
    if not enabled:
        return nullcontext(None)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}  val acc {task.fields[val]}"),
        TimeElapsedColumn(),
    )


def fit(
    model: SequenceClassifier,
    train: SequenceSet,
    validation: SequenceSet,
    config: TrainConfig,
    progress: bool = False,
) -> FitResult:
    """Train in place with AdamW; stop after `patience` epochs without a better validation result and
    restore the best epoch's weights. Better = lower validation loss (smoother than the accuracy of a
    small validation split), ties broken by higher accuracy."""
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=WEIGHT_DECAY)
    shuffle = torch.Generator().manual_seed(config.seed)
    max_norm = config.clip if config.clip > 0 else math.inf
    history: list[EpochRecord] = []
    step_norms: list[float] = []
    best = (-math.inf, -math.inf)  # (-validation loss, validation accuracy)
    best_state, best_epoch = None, 0
    started = time.perf_counter()
    with _progress(progress) as bars:
        for epoch in range(1, config.epochs + 1):
            bar = None
            if bars is not None:
                bar = bars.add_task(
                    f"epoch {epoch:3d}", total=batch_count(train, config.batch_size), loss=0.0, val="-"
                )
            model.train()
            loss_sum, correct, count, norms = 0.0, 0, 0, []
            for batch in batches(train, config.batch_size, shuffle):
                optimiser.zero_grad(set_to_none=True)
                loss, hits, counted = batch_loss(model, batch)
                loss.backward()
                norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)))
                optimiser.step()
                loss_sum, correct, count = loss_sum + loss.item() * counted, correct + hits, count + counted
                if bar is not None:
                    bars.update(bar, advance=1, loss=loss_sum / count)
            val_loss, val_accuracy = evaluate(model, validation)
            if bar is not None:
                bars.update(bar, val=f"{val_accuracy:.3f}")
            step_norms.extend(norms)
            history.append(
                EpochRecord(
                    epoch,
                    loss_sum / count,
                    correct / count,
                    val_loss,
                    val_accuracy,
                    float(np.mean(norms)),
                    max(norms),
                )
            )
            logger.debug("epoch %d: %s", epoch, history[-1])
            if (-val_loss, val_accuracy) > best:
                best, best_epoch = (-val_loss, val_accuracy), epoch
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            elif epoch - best_epoch >= config.patience:
                logger.info("early stop at epoch %d, best epoch %d", epoch, best_epoch)
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    return FitResult(history, best_epoch, time.perf_counter() - started, step_norms)


def build_model(config: TrainConfig, splits: DatasetSplits) -> SequenceClassifier:
    """A model sized for the data, standardised on the train split, chrono-initialised when asked."""
    model = SequenceClassifier(
        ModelConfig(
            cell=config.cell,
            features=splits.features,
            classes=len(splits.labels),
            task=splits.task,
            hidden=config.hidden,
            layers=config.layers,
            bidirectional=config.bidirectional,
            dropout=config.dropout,
            layer_norm=config.layer_norm,
        )
    )
    model.set_standardisation(*feature_statistics(splits.train))
    if config.chrono:
        chrono_init(model, config.chrono)
    return model


def data_reference(config: TrainConfig) -> dict:
    """What `load_dataset(**reference)` needs to rebuild the same splits (stored in the checkpoint)."""
    data_file = str(Path(config.data).resolve()) if config.data is not None else None
    return {"dataset": config.dataset, "data_file": data_file, "seed": config.seed}


def train(config: TrainConfig, progress: bool = True) -> RunResult:
    """Train, test and write the run folder (checkpoint.pt, metrics.json, plots)."""
    from seqserve.training.plots import plot_confusion, plot_curves, plot_gradient_norms

    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    reference = data_reference(config)
    splits = load_dataset(**reference)
    if config.task is not None:
        splits = with_task(splits, config.task)
    model = build_model(config, splits)
    logger.info(
        "training %s on %s: %d train / %d validation / %d test sequences, %d parameters",
        config.cell,
        splits.name,
        len(splits.train),
        len(splits.validation),
        len(splits.test),
        parameter_count(model),
    )
    result = fit(model, splits.train, splits.validation, config, progress)
    report = classification_report(*predict(model, splits.test), splits.labels)
    metrics = {
        "dataset": splits.name,
        "task": splits.task,
        "labels": splits.labels,
        "test_accuracy": report["accuracy"],
        "validation_accuracy": result.history[result.best_epoch - 1].validation_accuracy,
        "accuracy_unit": "step" if splits.task == "many_to_many" else "sequence",
        "per_class": report["per_class"],
        "confusion_matrix": report["confusion_matrix"],
        "train_seconds": round(result.seconds, 3),
        "epochs": len(result.history),
        "best_epoch": result.best_epoch,
        "parameters": parameter_count(model),
        "sizes": {"train": len(splits.train), "validation": len(splits.validation), "test": len(splits.test)},
        "config": config.to_dict(),
        "history": [asdict(record) for record in result.history],
    }
    run_dir = Path(config.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    training = {k: v for k, v in metrics.items() if k not in ("per_class", "confusion_matrix", "history")}
    payload = checkpoint_payload(model, splits.labels, extra={"data": reference, "training": training})
    torch.save(payload, run_dir / CHECKPOINT_FILE)
    (run_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=2))
    plot_curves(result.history, run_dir / "curves.png")
    plot_confusion(report["confusion_matrix"], splits.labels, run_dir / "confusion.png")
    plot_gradient_norms(result.history, run_dir / "gradient_norms.png")
    logger.info(
        "test accuracy %.4f after %d epochs (%.1f s)", report["accuracy"], len(result.history), result.seconds
    )
    return RunResult(run_dir, metrics)
