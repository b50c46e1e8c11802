import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from seqserve.training.basic_motions_stream import TEST_STREAM_STEPS, TRAIN_STREAM_STEPS
from seqserve.training.datasets import DataError, load_dataset, with_task
from seqserve.training.readers import read_ts


def same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_japanese_vowels_splits_are_seeded_and_stratified() -> None:
    splits = load_dataset("japanese_vowels", seed=3)
    assert (splits.task, splits.features, splits.labels) == (
        "many_to_one",
        12,
        [str(i) for i in range(1, 10)],
    )
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (234, 36, 370)
    assert np.bincount([int(t) for t in splits.validation.targets]).tolist() == [4] * 9
    again, other = load_dataset("japanese_vowels", seed=3), load_dataset("japanese_vowels", seed=4)
    assert same(splits.train.sequences, again.train.sequences)
    assert not same(splits.train.sequences, other.train.sequences)
    assert same(splits.test.sequences, other.test.sequences)  # the test file is the test split


def test_basic_motions_stream_builds_labelled_streams_from_the_right_recordings(tmp_path: Path) -> None:
    splits = load_dataset("basic_motions_stream", seed=0)
    assert (splits.task, splits.features, len(splits.labels)) == ("many_to_many", 6, 4)
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (96, 24, 40)
    assert {s.shape for s in splits.train.sequences + splits.validation.sequences} == {
        (TRAIN_STREAM_STEPS[0], 6)
    }
    lengths = [len(s) for s in splits.test.sequences]
    assert TEST_STREAM_STEPS[0] <= min(lengths) < max(lengths) <= TEST_STREAM_STEPS[1]
    assert [len(t) for t in splits.test.targets] == lengths
    changes = np.flatnonzero(np.diff(splits.test.targets[0]))
    assert len(changes) >= 4  # several activities per stream, never the same one twice in a row
    # The first segment of a test stream is a slice of one test recording, not of a train recording.
    test_file = read_ts(Path(__file__).parents[2] / "data" / "BasicMotions_TEST.ts")
    head = splits.test.sequences[0][:5]
    found = [
        r for r in test_file.sequences if any(np.array_equal(r[i : i + 5], head) for i in range(len(r) - 4))
    ]
    assert len(found) == 1
    assert same(splits.test.sequences, load_dataset("basic_motions_stream", seed=0).test.sequences)
    assert not same(splits.test.sequences, load_dataset("basic_motions_stream", seed=1).test.sequences)


def test_user_npz_is_split_70_15_15(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    np.savez(
        tmp_path / "mine.npz", x=rng.normal(size=(40, 6, 3)), lengths=np.full(40, 6), y=np.arange(40) % 2
    )
    splits = load_dataset(data_file=tmp_path / "mine.npz", seed=1)
    assert (splits.name, splits.task, splits.labels, splits.features) == (
        "mine",
        "many_to_one",
        ["0", "1"],
        3,
    )
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (28, 6, 6)
    assert same(
        splits.test.sequences, load_dataset(data_file=str(tmp_path / "mine.npz"), seed=1).test.sequences
    )


def test_user_file_too_small_or_one_class(tmp_path: Path) -> None:
    np.savez(tmp_path / "tiny.npz", x=np.zeros((2, 3, 1)), lengths=np.array([3, 3]), y=np.array([0, 1]))
    with pytest.raises(DataError, match="2 sequences are too few"):
        load_dataset(data_file=tmp_path / "tiny.npz")
    np.savez(tmp_path / "one.npz", x=np.zeros((9, 3, 1)), lengths=np.full(9, 3), y=np.zeros(9))
    with pytest.raises(DataError, match="only one class"):
        load_dataset(data_file=tmp_path / "one.npz")


def test_arguments_are_checked() -> None:
    with pytest.raises(DataError, match="give exactly one"):
        load_dataset()
    with pytest.raises(DataError, match="give exactly one"):
        load_dataset("japanese_vowels", data_file="x.csv")
    with pytest.raises(DataError, match="unknown data set 'mnist'"):
        load_dataset("mnist")


def test_with_task_spreads_and_collapses_labels() -> None:
    splits = load_dataset("japanese_vowels")
    spread = with_task(splits, "many_to_many")
    first = spread.train
    assert first.targets[0].shape == (len(first.sequences[0]),)
    assert (first.targets[0] == splits.train.targets[0]).all()
    assert int(with_task(spread, "many_to_one").test.targets[5]) == int(splits.test.targets[5])
    with pytest.raises(DataError, match="changes label over time"):
        with_task(load_dataset("basic_motions_stream"), "many_to_one")


def test_datasets_do_not_import_torch() -> None:
    code = (
        "import sys, seqserve.training.datasets as d; "
        "d.load_dataset('basic_motions_stream'); print('torch' in sys.modules)"
    )
    assert (
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout.strip()
        == "False"
    )
