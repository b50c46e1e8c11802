"""Training a character language model (char-rnn style) and writing its run folder.

Truncated backpropagation through time: the training text is cut into `batch_size` contiguous streams
side by side; each optimiser step reads the next `bptt` characters of every stream, and the hidden state
the step ends with starts the next step (detached, so gradients stop at the window's edge). Every epoch
starts the streams from their beginnings with zero state. Validation and test run the same way, state
carried through each held-out text, and every predicted character counts once.

Losses are in nats per character (natural log; bits = nats / ln 2), beside two baselines fitted on the
training text and scored on the same held-out text: unigram character frequencies (add-one smoothed) and
bigram frequencies (each row smoothed towards the unigram with a Dirichlet prior of strength `vocabulary`).
Seeded and deterministic on CPU: the same config gives the same weights.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional

from seqserve.training.datasets import data_dir
from seqserve.training.language_model import (
    CharLanguageModel,
    LanguageModelConfig,
    checkpoint_payload,
)
from seqserve.training.loop import CHECKPOINT_FILE, METRICS_FILE
from seqserve.training.model import State, parameter_count
from seqserve.training.text import TextSplits, load_text

logger = logging.getLogger(__name__)

LN2 = math.log(2.0)
EVAL_STREAMS = 16  # held-out text is read as this many streams side by side, state carried in each
EVAL_WINDOW = 512  # characters per evaluation call
WEIGHT_DECAY = 1e-2
FINAL_LR_FRACTION = 0.1  # cosine decay from lr to lr * this over the run


@dataclass
class TextTrainConfig:
    """Everything `seqserve train --dataset shakespeare_chars` (or `--data my.txt`) takes.

    The defaults are the budget the README's figures come from: about 600 optimiser steps of 64 x 128
    characters (six passes over the training plays)."""

    out: Path
    dataset: str | None = None
    data: Path | None = None
    cell: str = "gru"
    layers: int = 1
    hidden: int = 384
    embedding: int = 64
    dropout: float = 0.0
    layer_norm: bool = False
    clip: float = 1.0  # max gradient norm; 0 disables clipping
    epochs: int = 6
    batch_size: int = 64  # parallel streams
    bptt: int = 128  # characters per truncated-BPTT window
    lr: float = 3e-3
    eval_every: int = 50  # optimiser steps between validation passes (and at the end)
    max_steps: int = 0  # stop after this many steps (0: the epochs decide); tests use a few
    seed: int = 0
    threads: int = 2

    def to_dict(self) -> dict:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}


@dataclass
class CurvePoint:
    step: int
    epoch: float  # passes over the training text so far
    train_loss: float  # nats/char, mean over the steps since the previous point
    validation_loss: float  # nats/char
    seconds: float  # wall time since training started


@dataclass
class TextFitResult:
    curve: list[CurvePoint]
    best_step: int  # the model holds this step's weights (lowest validation loss)
    steps: int
    wall_seconds: float
    cpu_seconds: float  # process CPU time: wall time inflated by other work on the machine does not count
    step_grad_norms: list[float] = field(default_factory=list)


def streams(tokens: np.ndarray, count: int) -> torch.Tensor:
    """The text as `count` contiguous streams side by side: int64 [count, len // count]."""
    length = len(tokens) // count
    if length < 2:
        raise ValueError(f"{len(tokens)} tokens are too few for {count} streams of at least 2")
    return torch.from_numpy(tokens[: count * length].reshape(count, length).copy())


def _detach(state: State) -> State:
    return tuple(s.detach() for s in state)


def window_loss(model: CharLanguageModel, data: torch.Tensor, start: int, steps: int, state: State | None):
    """Mean cross-entropy over data[:, start+1 : start+steps+1] given data[:, start : start+steps]."""
    x = data[:, start : start + steps]
    y = data[:, start + 1 : start + steps + 1]
    x = x[:, : y.shape[1]]
    logits, new_state = model(x, torch.full((x.shape[0],), x.shape[1]), state)
    loss = functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
    return loss, y.numel(), new_state


@torch.no_grad()
def evaluate_text(model: CharLanguageModel, tokens: np.ndarray) -> float:
    """Nats per character over the text, read as EVAL_STREAMS streams with state carried."""
    model.eval()
    data = streams(tokens, min(EVAL_STREAMS, len(tokens) // 2))
    total, count, state = 0.0, 0, None
    for start in range(0, data.shape[1] - 1, EVAL_WINDOW):
        loss, counted, state = window_loss(model, data, start, EVAL_WINDOW, state)
        total, count = total + float(loss) * counted, count + counted
    return total / count


def baselines(train: np.ndarray, held_out: np.ndarray, vocabulary: int) -> dict[str, float]:
    """Nats per character of the unigram and bigram models fitted on `train`, scored on `held_out`."""
    unigram_counts = np.bincount(train, minlength=vocabulary).astype(np.float64)
    unigram = (unigram_counts + 1.0) / (unigram_counts.sum() + vocabulary)
    pairs = np.zeros((vocabulary, vocabulary))
    np.add.at(pairs, (train[:-1], train[1:]), 1.0)
    bigram = (pairs + vocabulary * unigram) / (pairs.sum(axis=1, keepdims=True) + vocabulary)
    return {
        "unigram": float(-np.log(unigram[held_out[1:]]).mean()),
        "bigram": float(-np.log(bigram[held_out[:-1], held_out[1:]]).mean()),
    }


def _lr_at(config: TextTrainConfig, step: int, total: int) -> float:
    progress = min(step / max(total, 1), 1.0)
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return config.lr * (FINAL_LR_FRACTION + (1.0 - FINAL_LR_FRACTION) * cosine)


def fit_text(model: CharLanguageModel, train: np.ndarray, validation: np.ndarray, config: TextTrainConfig):
    """Train in place; keep the weights of the lowest validation loss seen at the evaluation points."""
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=WEIGHT_DECAY)
    data = streams(train, config.batch_size)
    per_epoch = math.ceil((data.shape[1] - 1) / config.bptt)
    total = per_epoch * config.epochs
    if config.max_steps:
        total = min(total, config.max_steps)
    max_norm = config.clip if config.clip > 0 else math.inf
    curve: list[CurvePoint] = []
    norms: list[float] = []
    best, best_state, best_step = math.inf, None, 0
    wall, cpu = time.perf_counter(), time.process_time()
    step, since_sum, since_count = 0, 0.0, 0
    while step < total:
        state = None  # each epoch reads the streams from their start
        for start in range(0, data.shape[1] - 1, config.bptt):
            model.train()
            for group in optimiser.param_groups:
                group["lr"] = _lr_at(config, step, total)
            loss, _, state = window_loss(model, data, start, config.bptt, state)
            state = _detach(state)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)))
            optimiser.step()
            step += 1
            since_sum, since_count = since_sum + loss.item(), since_count + 1
            if step % config.eval_every == 0 or step == total:
                validation_loss = evaluate_text(model, validation)
                curve.append(
                    CurvePoint(
                        step,
                        step / per_epoch,
                        since_sum / since_count,
                        validation_loss,
                        time.perf_counter() - wall,
                    )  # fmt: skip
                )
                since_sum, since_count = 0.0, 0
                logger.info("step %d/%d: train %.4f, validation %.4f nats/char", step, total,
                            curve[-1].train_loss, validation_loss)  # fmt: skip
                if validation_loss < best:
                    best, best_step = validation_loss, step
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            if step >= total:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    return TextFitResult(curve, best_step, step, time.perf_counter() - wall, time.process_time() - cpu, norms)


def _figures(nats: float) -> dict[str, float]:
    return {"nats_per_char": round(nats, 4), "bits_per_char": round(nats / LN2, 4)}


def train_text(config: TextTrainConfig) -> tuple[Path, dict]:
    """Train, evaluate and write the run folder (checkpoint.pt, metrics.json, curves.png)."""
    from seqserve.training.plots import plot_language_model_curves

    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    corpus: TextSplits = load_text(data_dir(), config.dataset, config.data)
    model = CharLanguageModel(
        LanguageModelConfig(
            cell=config.cell,
            vocabulary=len(corpus.vocabulary),
            embedding=config.embedding,
            hidden=config.hidden,
            layers=config.layers,
            dropout=config.dropout,
            layer_norm=config.layer_norm,
        )
    )
    tokens = {split: corpus.encode(corpus.split(split)) for split in ("train", "validation", "test")}
    logger.info(
        "training a %s language model on %s: %d / %d / %d characters, vocabulary %d, %d parameters",
        config.cell, corpus.name, len(tokens["train"]), len(tokens["validation"]), len(tokens["test"]),
        len(corpus.vocabulary), parameter_count(model),
    )  # fmt: skip
    result = fit_text(model, tokens["train"], tokens["validation"], config)
    scores = {split: evaluate_text(model, tokens[split]) for split in ("validation", "test")}
    reference = {
        split: baselines(tokens["train"], tokens[split], len(corpus.vocabulary))
        for split in ("validation", "test")
    }
    metrics = {
        "dataset": corpus.name,
        "task": "language_model",
        "vocabulary": corpus.vocabulary,
        "validation": _figures(scores["validation"]),
        "test": _figures(scores["test"]),
        "baselines": {
            split: {name: _figures(value) for name, value in by_name.items()}
            for split, by_name in reference.items()
        },
        "test_nats_per_char": round(scores["test"], 4),
        "test_bits_per_char": round(scores["test"] / LN2, 4),
        "validation_nats_per_char": round(scores["validation"], 4),
        "characters": {split: int(len(t)) for split, t in tokens.items()},
        "steps": result.steps,
        "best_step": result.best_step,
        "train_seconds": round(result.wall_seconds, 1),
        "train_cpu_seconds": round(result.cpu_seconds, 1),
        "threads": config.threads,
        "parameters": parameter_count(model),
        "config": config.to_dict(),
        "curve": [asdict(point) for point in result.curve],
    }
    run_dir = Path(config.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    reference_data = {
        "dataset": config.dataset,
        "data_file": str(Path(config.data).resolve()) if config.data is not None else None,
        "seed": config.seed,
    }
    training = {k: v for k, v in metrics.items() if k not in ("curve", "vocabulary")}
    payload = checkpoint_payload(
        model, corpus.vocabulary, extra={"data": reference_data, "training": training}
    )
    torch.save(payload, run_dir / CHECKPOINT_FILE)
    (run_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=2))
    plot_language_model_curves(result.curve, metrics["baselines"]["validation"], run_dir / "curves.png")
    return run_dir, metrics
