"""Character corpora and the char-rnn training loop: split by play, vocabulary, baselines, a tiny run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from seqserve.cli import app
from seqserve.training.datasets import DataError, data_dir, load_dataset
from seqserve.training.language_model import CharLanguageModel, LanguageModelConfig, greedy_text
from seqserve.training.model import load_checkpoint
from seqserve.training.text import SHAKESPEARE, load_text, next_token_pairs
from seqserve.training.text_loop import baselines, evaluate_text, streams


def test_shakespeare_is_split_by_play_and_every_character_has_a_token() -> None:
    corpus = load_text(data_dir(), SHAKESPEARE)
    folder = data_dir() / "shakespeare"
    plays = {
        split: sorted(p.stem for p in (folder / split).glob("*.txt"))
        for split in ("train", "validation", "test")
    }
    assert plays == {
        "train": ["hamlet", "julius_caesar", "lear", "macbeth", "othello", "romeo_and_juliet"],
        "validation": ["twelfth_night"],
        "test": ["much_ado_about_nothing"],
    }
    assert 0.9e6 < len(corpus.train) + len(corpus.validation) + len(corpus.test) < 1.2e6
    assert corpus.vocabulary == sorted(set(corpus.train + corpus.validation + corpus.test))
    assert "Gutenberg" not in corpus.train + corpus.validation + corpus.test
    tokens = corpus.encode(corpus.validation)
    assert "".join(corpus.vocabulary[t] for t in tokens[:500]) == corpus.validation[:500]


def test_encode_names_a_character_outside_the_vocabulary() -> None:
    corpus = load_text(data_dir(), SHAKESPEARE)
    with pytest.raises(DataError, match=r"character '€' at position 3 is not in the vocabulary"):
        corpus.encode("abc€")


def test_user_text_splits_by_position(tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("".join(chr(97 + i % 7) for i in range(1000)))
    corpus = load_text(data_dir(), data_file=tmp_path / "mine.txt")
    assert (len(corpus.train), len(corpus.validation), len(corpus.test)) == (900, 50, 50)
    (tmp_path / "short.txt").write_text("abc")
    with pytest.raises(DataError, match="too few"):
        load_text(data_dir(), data_file=tmp_path / "short.txt")


def test_dataset_splits_pair_each_token_with_the_next() -> None:
    inputs, targets = next_token_pairs(np.arange(10), 4)
    assert [i.tolist() for i in inputs] == [[0, 1, 2, 3], [4, 5, 6, 7], [8]]
    assert [t.tolist() for t in targets] == [[1, 2, 3, 4], [5, 6, 7, 8], [9]]
    splits = load_dataset("shakespeare_chars")
    assert (splits.task, splits.features, len(splits.labels)) == ("language_model", 1, 75)


def test_baselines_are_exact_on_a_known_text() -> None:
    train = np.array([0, 1, 0, 1, 0, 1])
    scores = baselines(train, np.array([0, 1, 0]), 2)
    # unigram (add-one): p(0) = p(1) = 4/8, so every character costs ln 2
    assert scores["unigram"] == pytest.approx(math.log(2))
    # bigram counts 0->1: 3, 1->0: 2; smoothed towards the unigram with strength 2
    assert scores["bigram"] == pytest.approx(-(math.log((3 + 1) / (3 + 2)) + math.log((2 + 1) / (2 + 2))) / 2)


def test_evaluation_carries_state_through_the_text() -> None:
    torch.manual_seed(0)
    model = CharLanguageModel(LanguageModelConfig("gru", vocabulary=5, embedding=3, hidden=4)).eval()
    tokens = np.random.default_rng(0).integers(0, 5, size=64)
    data = streams(tokens, 1)
    with torch.no_grad():
        logits, _ = model(data[:, :-1], torch.tensor([63]))
        whole = torch.nn.functional.cross_entropy(logits[0], data[0, 1:]).item()
    assert evaluate_text(model, tokens[: 2 * 32]) > 0
    from seqserve.training import text_loop

    text_loop.EVAL_STREAMS, saved = 1, text_loop.EVAL_STREAMS
    try:
        assert evaluate_text(model, tokens) == pytest.approx(whole, abs=1e-6)
    finally:
        text_loop.EVAL_STREAMS = saved


def test_train_text_cli_writes_a_language_model_run(tmp_path: Path) -> None:
    (tmp_path / "poem.txt").write_text("the cat sat on the mat.\n" * 80)
    out = tmp_path / "run"
    args = ["train", "--out", str(out), "--data", str(tmp_path / "poem.txt"), "--hidden", "16",
            "--embedding", "4", "--batch-size", "4", "--bptt", "16", "--max-steps", "40", "--threads", "1",
            "--lr", "0.02"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "language model: validation" in result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 40 and (out / "curves.png").is_file()
    # 40 steps on a repeated line already beat character frequencies.
    assert (
        metrics["validation"]["nats_per_char"]
        < metrics["baselines"]["validation"]["unigram"]["nats_per_char"]
    )
    assert metrics["test"]["bits_per_char"] == pytest.approx(
        metrics["test"]["nats_per_char"] / math.log(2), abs=1e-3
    )
    model, payload = load_checkpoint(str(out / "checkpoint.pt"))
    assert isinstance(model, CharLanguageModel) and payload["vocabulary"] == sorted(
        set("the cat sat on the mat.\n")
    )
    assert len(greedy_text(model, payload["vocabulary"], "the ", 10)) == 10


def test_classifier_flags_are_refused_for_a_language_model(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["train", "--out", str(tmp_path / "r"), "--dataset", "shakespeare_chars",
                                      "--bidirectional"])  # fmt: skip
    assert result.exit_code == 2 and "--bidirectional does not apply" in result.output
    result = CliRunner().invoke(app, ["train", "--out", str(tmp_path / "r"), "--dataset", "japanese_vowels",
                                      "--bptt", "8"])  # fmt: skip
    assert result.exit_code == 2 and "--bptt apply to language models only" in result.output
