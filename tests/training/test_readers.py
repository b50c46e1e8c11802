from pathlib import Path

import numpy as np
import pytest

from seqserve.training.datasets import data_dir
from seqserve.training.readers import DataError, read_csv, read_file, read_npz, read_ts

TS_HEADER = "@problemName toy\n@dimensions 2\n@classLabel true a b\n@data\n"


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_ts_reads_shipped_japanese_vowels() -> None:
    found = read_ts(data_dir() / "JapaneseVowels_TRAIN.ts")
    assert len(found.sequences) == 270
    assert found.class_names == [str(i) for i in range(1, 10)]
    assert {s.shape[1] for s in found.sequences} == {12}
    assert min(len(s) for s in found.sequences) >= 7 and max(len(s) for s in found.sequences) <= 29
    assert found.sequences[0].dtype == np.float32
    assert found.sequences[0][0, 0] == pytest.approx(1.860936)
    assert found.sequences[0][0, 1] == pytest.approx(-0.207383)


def test_ts_reads_shipped_basic_motions() -> None:
    found = read_ts(data_dir() / "BasicMotions_TEST.ts")
    assert len(found.sequences) == 40
    assert {s.shape for s in found.sequences} == {(100, 6)}
    assert found.class_names == ["Standing", "Running", "Walking", "Badminton"]
    assert sorted(set(found.labels)) == sorted(found.class_names)


def test_ts_small_file(tmp_path: Path) -> None:
    found = read_ts(write(tmp_path, "ok.ts", TS_HEADER + "1,2,3:4,5,6:b\n7,8:9,10:a\n"))
    np.testing.assert_array_equal(found.sequences[0], [[1, 4], [2, 5], [3, 6]])
    assert found.labels == ["b", "a"]
    assert not found.per_step


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("1,2,3:4,5:a\n", "line 5: ragged case, dimension 2 has 2 steps and dimension 1 has 3"),
        ("1,NaN:4,5:a\n", "line 5, dimension 1: NaN/Inf"),
        ("1,?:4,5:a\n", "line 5, dimension 1"),
        ("1,2:4,5:\n", "line 5: missing label"),
        ("1,2:4,5:c\n", "line 5: label 'c' is not one of @classLabel"),
        ("1,2:a\n", "line 5: 1 dimensions, the header declares @dimensions 2"),
        ("", "no cases after '@data'"),
    ],
)
def test_ts_bad_files_name_line_and_problem(tmp_path: Path, body: str, message: str) -> None:
    path = write(tmp_path, "bad.ts", TS_HEADER + body)
    with pytest.raises(DataError, match="bad.ts") as caught:
        read_ts(path)
    assert message in str(caught.value)


def test_ts_without_data_tag(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no '@data' line"):
        read_ts(write(tmp_path, "bad.ts", "@problemName toy\n@classLabel true a b\n"))


def test_npz_many_to_one_and_many_to_many(tmp_path: Path) -> None:
    x = np.arange(2 * 4 * 3, dtype=np.float64).reshape(2, 4, 3)
    np.savez(tmp_path / "one.npz", x=x, lengths=np.array([4, 2]), y=np.array([1, 0]))
    found = read_npz(tmp_path / "one.npz")
    assert [s.shape for s in found.sequences] == [(4, 3), (2, 3)]
    np.testing.assert_array_equal(found.sequences[1], x[1, :2])
    assert found.labels == ["1", "0"] and found.class_names is None
    np.savez(tmp_path / "many.npz", x=x, lengths=np.array([4, 2]), y=np.array([[0, 0, 1, 1], [1, 1, 9, 9]]))
    many = read_npz(tmp_path / "many.npz")
    assert many.per_step
    assert many.labels[1].tolist() == ["1", "1"]


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"x": np.zeros((2, 3, 1)), "lengths": np.array([3, 3])}, "missing array 'y'"),
        (
            {"x": np.zeros((2, 3)), "lengths": np.array([3, 3]), "y": np.zeros(2)},
            "array 'x' has shape (2, 3)",
        ),
        ({"x": np.zeros((2, 3, 1)), "lengths": np.array([3, 4]), "y": np.zeros(2)}, "'lengths'[1] = 4"),
        (
            {"x": np.zeros((2, 3, 1)), "lengths": np.array([3, 3]), "y": np.zeros(3)},
            "array 'y' has shape (3,)",
        ),
        (
            {
                "x": np.array([[[0.0], [np.nan]], [[1.0], [1.0]]]),
                "lengths": np.array([2, 2]),
                "y": np.zeros(2),
            },
            "array 'x'[0, 1] holds NaN/Inf",
        ),
    ],
)
def test_npz_bad_arrays(tmp_path: Path, arrays: dict, message: str) -> None:
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match="bad.npz") as caught:
        read_npz(tmp_path / "bad.npz")
    assert message in str(caught.value)


def test_npz_padding_beyond_length_may_hold_nan(tmp_path: Path) -> None:
    x = np.array([[[1.0], [np.nan]], [[2.0], [3.0]]])
    np.savez(tmp_path / "pad.npz", x=x, lengths=np.array([1, 2]), y=np.array([0, 1]))
    assert [len(s) for s in read_npz(tmp_path / "pad.npz").sequences] == [1, 2]


def test_csv_long_format_in_any_row_order(tmp_path: Path) -> None:
    text = "id,step,f1,f2,label\ns1,1,3,4,up\ns1,0,1,2,up\ns2,0,5,6,down\n"
    found = read_csv(write(tmp_path, "ok.csv", text))
    np.testing.assert_array_equal(found.sequences[0], [[1, 2], [3, 4]])
    assert found.labels == ["up", "down"]


def test_csv_changing_label_is_many_to_many(tmp_path: Path) -> None:
    found = read_csv(write(tmp_path, "ok.csv", "id,step,f,label\na,0,1,x\na,1,2,y\nb,0,3,x\n"))
    assert found.per_step
    assert found.labels[0].tolist() == ["x", "y"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("a,0,1,2\n", "line 2: 4 columns, the header has 5"),
        ("a,0,1,nan,x\n", "line 2, column 'f2': 'nan'; expected a finite number"),
        ("a,0,1,abc,x\n", "line 2, column 'f2': 'abc' is not a number"),
        ("a,0,1,2,\n", "line 2: missing label"),
        ("a,0,1,2,x\na,0,1,2,x\n", "line 3: sequence 'a' repeats step 0"),
        ("a,0,1,2,x\na,2,1,2,x\n", "sequence 'a' lacks step(s) [1]"),
        ("a,0.5,1,2,x\n", "line 2: step '0.5'"),
        ("", "no data rows"),
    ],
)
def test_csv_bad_files(tmp_path: Path, body: str, message: str) -> None:
    path = write(tmp_path, "bad.csv", "id,step,f1,f2,label\n" + body)
    with pytest.raises(DataError, match="bad.csv") as caught:
        read_csv(path)
    assert message in str(caught.value)


def test_unknown_format_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"unknown format '\.txt'"):
        read_file(write(tmp_path, "x.txt", "hello"))
    with pytest.raises(DataError, match="no such file"):
        read_file(tmp_path / "absent.csv")


def test_npz_that_is_not_an_archive(tmp_path: Path) -> None:
    write(tmp_path, "junk.npz", "not a zip")
    with pytest.raises(DataError) as caught:
        read_npz(tmp_path / "junk.npz")
    # numpy's own message suggests allow_pickle=True, which would run code from the file: never passed on.
    assert "junk.npz: not a .npz archive" in str(caught.value) and "pickle" not in str(caught.value)


def test_npz_integer_y_indexes_the_labels_array(tmp_path: Path) -> None:
    x = np.zeros((2, 3, 1))
    names = np.array(["walk", "run"])
    np.savez(tmp_path / "one.npz", x=x, lengths=np.array([3, 2]), y=np.array([1, 0]), labels=names)
    assert read_npz(tmp_path / "one.npz").labels == ["run", "walk"]
    y = np.array([[0, 1, 1], [1, 1, 7]])  # 7 lies past row 1's length: ignored
    np.savez(tmp_path / "many.npz", x=x, lengths=np.array([3, 2]), y=y, labels=names)
    assert read_npz(tmp_path / "many.npz").labels[0].tolist() == ["walk", "run", "run"]
    np.savez(tmp_path / "bad.npz", x=x, lengths=np.array([3, 2]), y=np.array([2, 0]), labels=names)
    with pytest.raises(
        DataError, match=r"'y' holds 2; with 'labels' of 2 class names, expected integers 0\.\.1"
    ):
        read_npz(tmp_path / "bad.npz")
