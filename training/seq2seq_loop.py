"""Training a grapheme-to-phoneme Seq2Seq and writing its run folder.

Batches: every (word, pronunciation) pair of the training split, shuffled each epoch and then stably sorted
by the word's length, cut into batches of `batch_size` and taken in a shuffled order: little padding, and
different neighbours every epoch. Teacher forcing: the decoder reads the start token and the reference,
the loss is the mean cross-entropy against the reference's phonemes and the end token, label-smoothed (a
tenth of each target's probability spread over the vocabulary: a confident model is penalised for
memorising the training words, where dropout slowed a step more than it saved). AdamW (its decoupled
weight decay the other brake on memorising), gradient clipping, the learning rate falling from `lr` to
lr / 100 along a cosine over the budget (`epochs`, or `minutes` of training when that comes first: the
last epoch may be cut short). The steps run under bfloat16 autocast where the CPU has bfloat16
instructions (the weights stay float32); a moving average of the weights (`ema`) is what validation
judges, early stopping on validation WER (greedy decoding) keeps the best epoch's, and export reads. Then
the test split, greedy and beam.

CPU time (the process's, user and system) and wall time are measured around training, with the load
average before and after: the machine is shared, and wall time says little without it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel

from seqserve.beam_search import SearchOptions
from seqserve.training.g2p_data import G2PSplits, Lexicon, load_g2p
from seqserve.training.g2p_metrics import error_rates
from seqserve.training.loop import CHECKPOINT_FILE, METRICS_FILE
from seqserve.training.seq2seq import Seq2Seq, Seq2SeqConfig, checkpoint_payload, parameter_count
from seqserve.training.seq2seq_decode import decode_words
from seqserve.vocabularies import Tokens

logger = logging.getLogger(__name__)
TEST_WORDS_FILE = "test_words.txt"
IGNORE = -100  # target of a padded step


@dataclass
class Seq2SeqTrainConfig:
    """Everything `seqserve train --task seq2seq` takes; the defaults are the budget README figures use."""

    out: Path
    dataset: str = "cmudict"
    cell: str = "lstm"  # CMUdict, 256 units: 29.5 % WER against the GRU's 34.4 % (training/README.md)
    embedding: int = 64
    # 512 / 256 each way, one encoder layer, no dropout: the best measured in the budget (training/README.md)
    encoder_hidden: int = 256  # per direction: the memory is 512 wide
    encoder_layers: int = 1
    hidden: int = 512  # the decoder's state
    dropout: float = 0.0
    batch_size: int = 256
    lr: float = 3e-3
    clip: float = 1.0
    # Regularisation that costs a step nothing, where dropout slowed it: with both, 24.42 % WER / 5.83 % PER
    # with beam 4; with neither, 25.30 % / 6.17 % (training/README.md)
    label_smoothing: float = 0.1  # share of each target's probability spread evenly over the vocabulary
    weight_decay: float = 0.05  # AdamW's decoupled decay
    epochs: int = 40  # at most; the time budget ends training first
    minutes: float | None = 28.0  # training time budget (None: `epochs` alone); the command takes under 30
    patience: int = 10
    # bfloat16 autocast for the training steps (weights, validation and export stay float32); None: where
    # the CPU has bfloat16 instructions (AVX512-BF16 or AMX), which make a step 1.7 to 1.9x faster here.
    bf16: bool | None = None
    ema: float = 0.999  # decay of a moving average of the weights, which validation and export use (0: off)
    beam: int = 4
    limit: int | None = None  # use this many words of the dictionary (quick runs, tests)
    seed: int = 0
    # Both cores of the 2-core machine the figures were measured on: 1.4x one thread's pairs/s alone,
    # less when other jobs share the machine (training/README.md).
    threads: int = 2

    def to_dict(self) -> dict:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}

    @property
    def autocast(self) -> bool:
        if self.bf16 is not None:
            return self.bf16
        return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


@dataclass
class Pairs:
    """A split's (word, pronunciation) pairs as token ids, padded once into arrays so that cutting a
    batch is a few NumPy slices (building it row by row in tensors was 7 % of a training step)."""

    letters: np.ndarray  # int64 [N, longest word], 0 past each word
    letter_lengths: np.ndarray  # [N]
    phonemes: np.ndarray  # int64 [N, longest pronunciation], 0 past each pronunciation
    phoneme_lengths: np.ndarray  # [N]

    @classmethod
    def of(cls, lexicon: Lexicon, tokens: Tokens) -> Pairs:
        pairs = [(w, p) for w, prons in lexicon.items() for p in prons]
        letters, letter_lengths = _padded([tokens.encode_input(w) for w, _ in pairs])
        phonemes, phoneme_lengths = _padded([tokens.encode_output(p) for _, p in pairs])
        return cls(letters, letter_lengths, phonemes, phoneme_lengths)

    def __len__(self) -> int:
        return len(self.letter_lengths)


def _padded(sequences: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.array([len(s) for s in sequences], dtype=np.int64)
    padded = np.zeros((len(sequences), int(lengths.max(initial=0))), dtype=np.int64)
    padded[np.arange(padded.shape[1]) < lengths[:, None]] = [token for s in sequences for token in s]
    return padded, lengths


def batch_tensors(
    pairs: Pairs, rows: np.ndarray, tokens: Tokens
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """letters [B, Tx], lengths [B], decoder input [B, Ty] (start, reference; padded with start) and
    targets [B, Ty] (reference, end; padded with IGNORE)."""
    lengths = pairs.letter_lengths[rows]
    letters = pairs.letters[rows, : lengths.max()]
    spoken = pairs.phoneme_lengths[rows]
    phonemes = pairs.phonemes[rows, : spoken.max()]
    steps = phonemes.shape[1] + 1
    within = np.arange(steps - 1) < spoken[:, None]
    previous = np.full((len(rows), steps), tokens.start, dtype=np.int64)
    previous[:, 1:] = np.where(within, phonemes, tokens.start)
    target = np.full((len(rows), steps), IGNORE, dtype=np.int64)
    target[:, :-1] = np.where(within, phonemes, IGNORE)
    target[np.arange(len(rows)), spoken] = tokens.end
    return tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in (letters, lengths, previous, target))


def sequence_loss(log_probs: torch.Tensor, target: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
    """Mean over the steps with a target (IGNORE: none) of the cross-entropy of log_probs [B, T, V] against
    the reference with `smoothing` of its probability spread evenly over the V tokens: (1 - e) times
    -log p(reference) plus e times the mean of -log p over the vocabulary."""
    # The log-probabilities are normalised already, so cross_entropy's log_softmax leaves them as they are.
    return torch.nn.functional.cross_entropy(
        log_probs.reshape(-1, log_probs.shape[-1]),
        target.reshape(-1),
        ignore_index=IGNORE,
        label_smoothing=smoothing,
    )


def epoch_batches(pairs: Pairs, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    shuffled = rng.permutation(len(pairs))
    by_length = shuffled[np.argsort(pairs.letter_lengths[shuffled], kind="stable")]
    batches = [by_length[i : i + batch_size] for i in range(0, len(by_length), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


class Budget:
    """The learning rate along a cosine from lr to lr / 100 over the budget: `epochs` of steps or, with a
    time budget, `minutes` of wall time, whichever is spent first. A fixed time then ends on small steps
    however loaded the machine is; how many epochs that was is in the run's metrics."""

    def __init__(self, optimiser: torch.optim.Optimizer, config: Seq2SeqTrainConfig, steps: int) -> None:
        self.optimiser, self.lr, self.total_steps = optimiser, config.lr, steps
        self.seconds = 60 * config.minutes if config.minutes else math.inf
        self.started = time.perf_counter()
        self.steps = 0

    @property
    def progress(self) -> float:
        elapsed = time.perf_counter() - self.started
        return min(1.0, max(self.steps / self.total_steps, elapsed / self.seconds))

    @property
    def spent(self) -> bool:
        return self.progress >= 1.0

    def step(self) -> None:
        self.steps += 1
        lr = self.lr / 100 + (self.lr - self.lr / 100) * 0.5 * (1 + math.cos(math.pi * self.progress))
        for group in self.optimiser.param_groups:
            group["lr"] = lr


def train_epoch(
    model: Seq2Seq,
    optimiser: torch.optim.Optimizer,
    budget: Budget,
    pairs: Pairs,
    tokens: Tokens,
    config: Seq2SeqTrainConfig,
    rng: np.random.Generator,
    averaged: AveragedModel | None = None,
) -> dict[str, float]:
    model.train()
    max_norm = config.clip if config.clip > 0 else math.inf
    total, count, norms = 0.0, 0, []
    autocast = config.autocast
    for rows in epoch_batches(pairs, config.batch_size, rng):
        letters, lengths, previous, target = batch_tensors(pairs, rows, tokens)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            log_probs = model(letters, lengths, previous).float()
        loss = sequence_loss(log_probs, target, config.label_smoothing)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)))
        optimiser.step()
        if averaged is not None:
            averaged.update_parameters(model)
        budget.step()
        steps = int((target != IGNORE).sum())
        total += loss.item() * steps
        count += steps
        if budget.spent:
            break
    return {"train_loss": total / count, "grad_norm_mean": float(np.mean(norms))}


def evaluate(
    model: Seq2Seq, tokens: Tokens, lexicon: Lexicon, options: SearchOptions | None = None
) -> tuple[dict, list[tuple[str, ...]]]:
    """Error rates of greedy (options None) or beam decoding over a split, and the outputs."""
    words = list(lexicon)
    decoded = decode_words(model, tokens, words, options)
    outputs = [found[0].output for found in decoded]
    return error_rates(outputs, [lexicon[w] for w in words]).as_percent(), outputs


def _warmed_ema(decay: float) -> Callable[[list[torch.Tensor], list[torch.Tensor], torch.Tensor], None]:
    """An exponential moving average that is the plain mean of the steps so far until there are
    1 / (1 - decay) of them: a short run is not an average of its first steps' weights."""

    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], count: torch.Tensor) -> None:
        steps = float(count)
        torch._foreach_lerp_(averaged, current, 1 - min(decay, steps / (steps + 1)))

    return update


def fit(model: Seq2Seq, data: G2PSplits, tokens: Tokens, config: Seq2SeqTrainConfig) -> dict:
    # fused: one kernel for every parameter's update (measured 1.1x a step on one thread, the same on two)
    optimiser = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=True
    )
    rng = np.random.default_rng(config.seed)
    pairs = Pairs.of(data.train, tokens)
    budget = Budget(optimiser, config, config.epochs * math.ceil(len(pairs) / config.batch_size))
    averaged = AveragedModel(model, multi_avg_fn=_warmed_ema(config.ema)) if config.ema else None
    judged = averaged.module if averaged is not None else model
    history, best_wer, best_state, best_epoch = [], math.inf, None, 0
    for epoch in range(1, config.epochs + 1):
        started = time.perf_counter()
        record = {"epoch": epoch, "lr": optimiser.param_groups[0]["lr"]}
        record |= train_epoch(model, optimiser, budget, pairs, tokens, config, rng, averaged)
        validation, _ = evaluate(judged, tokens, data.validation)
        record |= {
            "validation_wer_percent": validation["wer_percent"],
            "validation_per_percent": validation["per_percent"],
            "seconds": round(time.perf_counter() - started, 1),
        }
        history.append(record)
        logger.info(
            "epoch %d: loss %.4f, validation WER %.2f %% PER %.2f %% (%.0f s)", epoch, record["train_loss"],
            validation["wer_percent"], validation["per_percent"], record["seconds"],
        )  # fmt: skip
        if validation["wer_percent"] < best_wer:
            best_wer, best_epoch = validation["wer_percent"], epoch
            best_state = {k: v.detach().clone() for k, v in judged.state_dict().items()}
        elif epoch - best_epoch >= config.patience:
            break
        if budget.spent:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    return {"history": history, "best_epoch": best_epoch, "epochs": len(history)}


def build_model(config: Seq2SeqTrainConfig, data: G2PSplits) -> Seq2Seq:
    return Seq2Seq(
        Seq2SeqConfig(
            letters=data.letters,
            phonemes=data.phonemes,
            cell=config.cell,
            embedding=config.embedding,
            encoder_hidden=config.encoder_hidden,
            encoder_layers=config.encoder_layers,
            hidden=config.hidden,
            dropout=config.dropout,
        )
    )


def sample_outputs(lexicon: Lexicon, greedy: list, beam: list, count: int = 20) -> list[dict]:
    """The first `count` test words (alphabetical, so the same for every run of a split)."""
    return [
        {
            "word": word,
            "references": [" ".join(p) for p in lexicon[word]],
            "greedy": " ".join(greedy[i]),
            "beam": " ".join(beam[i]),
        }
        for i, word in enumerate(list(lexicon)[:count])
    ]


def train_seq2seq(config: Seq2SeqTrainConfig) -> dict:
    """Train, test and write the run folder: checkpoint.pt, metrics.json, test_words.txt, curves.png,
    attention.png."""
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    data, report = load_g2p(config.dataset, config.seed, config.limit)
    tokens = Tokens(data.letters, data.phonemes)
    model = build_model(config, data)
    logger.info("training a %s seq2seq on %s: %s", config.cell, config.dataset, data.sizes())
    load_before = os.getloadavg()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    fitted = fit(model, data, tokens, config)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    load_after = os.getloadavg()
    greedy, greedy_out = evaluate(model, tokens, data.test)
    beam, beam_out = evaluate(model, tokens, data.test, SearchOptions(beam=config.beam))
    metrics = {
        "dataset": config.dataset,
        "task": "seq2seq",
        "sizes": data.sizes(),
        "read": {
            "lines": report.lines,
            "comments": report.comments,
            "dropped_words": len(report.dropped_words),
            "stress_duplicates": report.stress_duplicates,
            "words": report.words,
            "pronunciations": report.pronunciations,
        },
        "test": {"greedy": greedy, f"beam_{config.beam}": beam},
        "train_cpu_seconds": round(cpu, 1),
        "train_wall_seconds": round(wall, 1),
        "load_average_1min": {"before": round(load_before[0], 2), "after": round(load_after[0], 2)},
        "cpu_count": os.cpu_count(),
        "threads": config.threads,
        "bf16_autocast": config.autocast,
        "parameters": parameter_count(model),
        "config": config.to_dict(),
        "test_samples": sample_outputs(data.test, greedy_out, beam_out),
        **fitted,
    }
    write_run(Path(config.out), model, data, metrics, config)
    return metrics


def write_run(
    run_dir: Path, model: Seq2Seq, data: G2PSplits, metrics: dict, config: Seq2SeqTrainConfig
) -> None:
    from seqserve.training.seq2seq_plots import plot_attention, plot_curves

    run_dir.mkdir(parents=True, exist_ok=True)
    reference = {"dataset": config.dataset, "seed": config.seed, "limit": config.limit}
    training = {k: v for k, v in metrics.items() if k not in ("history", "test_samples")}
    torch.save(
        checkpoint_payload(model, {"data": reference, "training": training}), run_dir / CHECKPOINT_FILE
    )
    (run_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
    (run_dir / TEST_WORDS_FILE).write_text("".join(f"{word}\n" for word in data.test))
    plot_curves(metrics["history"], run_dir / "curves.png")
    tokens = Tokens(data.letters, data.phonemes)
    plot_attention(model, tokens, attention_words(data.test), run_dir / "attention.png")


def attention_words(lexicon: Lexicon, count: int = 4) -> list[str]:
    """A few test words of 6 to 10 letters, spread over the alphabet (the same for every run of a split)."""
    candidates = [w for w in lexicon if 6 <= len(w) <= 10 and w.isalpha()] or list(lexicon)
    step = max(1, len(candidates) // count)
    return candidates[::step][:count]
