"""`seqserve stream` and `seqserve classify` as users run them: the accuracy printed is the offline one."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest

from seqserve.service.server.launch import ServerThread
from seqserve.training.datasets import load_dataset

from .reference import Offline

LIMIT = 120


def _printed(args: list[str]) -> dict[str, str]:
    done = subprocess.run(
        [sys.executable, "-m", "seqserve.cli", *args], capture_output=True, text=True, timeout=120, check=True
    )
    return dict(re.findall(r"(\w+)\s+\W\s+(\S+)\s+\W", done.stdout))


def _offline_accuracy(offline: Offline, model: str, dataset: str, limit: int = LIMIT) -> float:
    test = load_dataset(dataset=dataset).test
    right = total = 0
    for x, target in zip(test.sequences[:limit], test.targets[:limit], strict=True):
        labels = offline.scores(model, x).argmax(axis=-1)
        right += int((labels == np.atleast_1d(target)).sum())
        total += np.atleast_1d(target).size
    return right / total


@pytest.mark.parametrize(
    ("model", "dataset"), [("jv-gru", "japanese_vowels"), ("bms-gru", "basic_motions_stream")]
)
def test_stream_prints_the_offline_accuracy(
    server: ServerThread, offline: Offline, model: str, dataset: str
) -> None:
    args = ["--target", server.target, "--model", model, "--dataset", dataset]
    shown = _printed(["stream", *args, "--chunk", "5", "--concurrency", "8", "--limit", str(LIMIT)])
    assert float(shown["accuracy"]) == pytest.approx(_offline_accuracy(offline, model, dataset), abs=1e-4)
    assert float(shown["steps_per_s"]) > 0 and float(shown["p99_ms"]) >= float(shown["p50_ms"]) > 0


def test_stream_paces_its_chunks_when_asked(server: ServerThread, offline: Offline) -> None:
    # 8 sequences of 29 steps or fewer in chunks of 5: 6 chunks each, the last sent >= 5 intervals in
    args = ["--target", server.target, "--model", "jv-gru", "--dataset", "japanese_vowels", "--limit", "8"]
    paced = _printed(["stream", *args, "--chunk", "5", "--concurrency", "8", "--chunk-interval-ms", "100"])
    lengths = [len(x) for x in load_dataset(dataset="japanese_vowels").test.sequences[:8]]
    seconds = sum(lengths) / float(paced["steps_per_s"])
    assert seconds >= (-(-max(lengths) // 5) - 1) * 0.1
    assert float(paced["accuracy"]) == pytest.approx(
        _offline_accuracy(offline, "jv-gru", "japanese_vowels", 8), abs=1e-4
    )


def test_classify_prints_the_offline_accuracy(server: ServerThread, offline: Offline) -> None:
    shown = _printed(
        ["classify", "--target", server.target, "--model", "jv-bigru", "--dataset", "japanese_vowels"]
    )
    test = load_dataset(dataset="japanese_vowels").test
    expected = np.mean(
        [
            offline.scores("jv-bigru", x).argmax() == t
            for x, t in zip(test.sequences, test.targets, strict=True)
        ]
    )
    assert float(shown["accuracy"]) == pytest.approx(expected, abs=1e-4)
    assert int(shown["sequences"]) == len(test)


def test_stream_names_an_unknown_model_and_fails(server: ServerThread) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "seqserve.cli", "stream", "--target", server.target, "--model", "nope",
         "--dataset", "japanese_vowels"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert "NOT_FOUND: model 'nope' is not served" in done.stderr
