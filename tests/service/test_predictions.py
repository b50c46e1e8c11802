"""Predictions a user takes away: `seqserve predict` offline, `classify`/`stream --output`, same answers."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from seqserve.cli import app
from seqserve.service.server.launch import ServerThread
from seqserve.training.datasets import load_dataset

from .reference import Offline

LIMIT = 40


@dataclass
class Done:
    returncode: int
    stdout: str
    stderr: str


def _seqserve(*args: str, check: bool = True) -> Done:
    """The command in this process (a subprocess would spend seconds importing the stack each time)."""
    result = CliRunner().invoke(app, list(args))
    done = Done(result.exit_code, result.stdout, result.stderr)
    if check:
        assert done.returncode == 0, (done.stdout, done.stderr, result.exception)
    return done


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_predict_offline_writes_one_record_per_sequence_with_the_offline_labels(
    service_repository: Path, offline: Offline, tmp_path: Path
) -> None:
    out = tmp_path / "jv.jsonl"
    done = _seqserve(
        "predict", "--repository", str(service_repository), "--model", "jv-gru",
        "--dataset", "japanese_vowels", "--split", "test", "--output", str(out),
    )  # fmt: skip
    assert "predicted 370 sequences, 370 records" in done.stdout
    rows = _jsonl(out)
    test = load_dataset(dataset="japanese_vowels")
    for row, x, target in zip(rows, test.test.sequences, test.test.targets, strict=True):
        probabilities = offline.scores("jv-gru", x)
        assert row["label"] == test.labels[int(probabilities.argmax())]
        assert row["true_label"] == test.labels[int(target)]
        assert sum(row["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
        assert row["probability"] == max(row["probabilities"].values())
    assert [row["sequence"] for row in rows] == list(range(370))


def test_predict_many_to_many_writes_one_csv_row_per_step(service_repository: Path, tmp_path: Path) -> None:
    out = tmp_path / "bms.csv"
    _seqserve(
        "predict", "--repository", str(service_repository), "--model", "bms-gru",
        "--dataset", "basic_motions_stream", "--split", "test", "--output", str(out),
    )  # fmt: skip
    with out.open() as handle:
        rows = list(csv.DictReader(handle))
    test = load_dataset(dataset="basic_motions_stream").test
    assert len(rows) == sum(len(s) for s in test.sequences)
    first = [row for row in rows if row["sequence"] == "0"]
    assert [int(row["step"]) for row in first] == list(range(len(test.sequences[0])))
    assert {f"p_{label}" for label in load_dataset(dataset="basic_motions_stream").labels} <= set(rows[0])


def test_predict_reads_a_users_whole_file_in_file_order(service_repository: Path, tmp_path: Path) -> None:
    """Split `all` of a --data file: every sequence, in the file's order, here written as .npz."""
    test = load_dataset(dataset="japanese_vowels")
    sequences = test.test.sequences[:5]
    x = np.zeros((5, max(len(s) for s in sequences), 12), dtype=np.float32)
    for i, s in enumerate(sequences):
        x[i, : len(s)] = s
    y = np.array([int(t) for t in test.test.targets[:5]])
    np.savez(tmp_path / "mine.npz", x=x, lengths=[len(s) for s in sequences], y=y, labels=test.labels)
    mine = str(tmp_path / "mine.npz")
    done = _seqserve("predict", "--repository", str(service_repository), "--model", "jv-gru", "--data", mine)
    rows = [json.loads(line) for line in done.stdout.splitlines()]  # no --output: JSON Lines on stdout
    assert [row["true_label"] for row in rows] == [test.labels[t] for t in y]
    assert "predicted 5 sequences" in done.stderr


@pytest.mark.parametrize(
    ("name", "existing", "message"),
    [
        ("p.txt", False, "unknown format '.txt'; expected a .jsonl or .csv file"),
        ("missing/p.csv", False, "does not exist"),
        ("p.csv", True, "already exists; pass --force to replace it"),
    ],
    ids=["format", "folder missing", "exists"],
)
def test_output_is_checked_before_anything_runs(
    service_repository: Path, tmp_path: Path, name: str, existing: bool, message: str
) -> None:
    out = tmp_path / name
    if existing:
        out.write_text("mine\n")
    # The server address is unreachable: the refusal must come first, from --output alone.
    for args in (
        ["classify", "--target", "127.0.0.1:1", "--model", "jv-gru", "--dataset", "japanese_vowels"],
        [
            "predict",
            "--repository",
            str(service_repository),
            "--model",
            "jv-gru",
            "--dataset",
            "japanese_vowels",
        ],
    ):
        done = _seqserve(*args, "--output", str(out), check=False)
        assert done.returncode == 2 and message in done.stderr, done.stderr
    if existing:
        assert out.read_text() == "mine\n"


def test_classify_and_stream_output_match_predict(
    server: ServerThread, service_repository: Path, tmp_path: Path
) -> None:
    common = ["--model", "jv-gru", "--dataset", "japanese_vowels", "--split", "test"]
    _seqserve(
        "predict", "--repository", str(service_repository), *common, "--output", str(tmp_path / "p.jsonl")
    )
    offline = {row["sequence"]: row for row in _jsonl(tmp_path / "p.jsonl")}
    _seqserve("classify", "--target", server.target, *common, "--output", str(tmp_path / "c.jsonl"))
    _seqserve(
        "stream", "--target", server.target, *common, "--chunk", "3", "--limit", str(LIMIT),
        "--output", str(tmp_path / "s.jsonl"),
    )  # fmt: skip
    for name, expected in (("c.jsonl", 370), ("s.jsonl", LIMIT)):
        rows = _jsonl(tmp_path / name)
        assert len(rows) == expected
        for row in rows:
            want = offline[row["sequence"]]
            assert (row["label"], row["true_label"]) == (want["label"], want["true_label"])
            assert row["probability"] == pytest.approx(want["probability"], abs=1e-4)
