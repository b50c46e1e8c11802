"""Readers for sequence files: `.ts` (sktime/aeon format), `.npz` and long-format `.csv`. NumPy only.

Each reader returns a `LabelledFile`: raw float32 sequences [T_i, F] with their labels as strings (one per
sequence, or one per step). Mapping labels to indices and splitting is `datasets.py`'s job. A file that
cannot be read raises `DataError` naming the file, the line or array, what was wrong and what was expected.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SUFFIXES: tuple[str, ...] = (".ts", ".npz", ".csv")


class DataError(ValueError):
    """A data file or data set is unusable; the message names the file, where, and what was expected."""


@dataclass
class LabelledFile:
    """As read: `labels[i]` is one string (many-to-one) or an array of T_i strings (many-to-many)."""

    sequences: list[np.ndarray]
    labels: list[str | np.ndarray]
    class_names: list[str] | None = None  # an order the file declares (.ts @classLabel, .npz `labels`)

    @property
    def per_step(self) -> bool:
        return bool(self.labels) and isinstance(self.labels[0], np.ndarray)


def read_file(path: Path | str) -> LabelledFile:
    """Read a `.ts`, `.npz` or `.csv` file by its suffix."""
    path = Path(path)
    readers = {".ts": read_ts, ".npz": read_npz, ".csv": read_csv}
    if path.suffix.lower() not in readers:
        raise DataError(f"{path}: unknown format {path.suffix!r}; expected one of {', '.join(SUFFIXES)}")
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    return readers[path.suffix.lower()](path)


# --- .ts ---------------------------------------------------------------------------------------------


def _ts_header(path: Path, lines: list[str]) -> tuple[dict[str, str], list[str] | None, int]:
    """Header tags, declared class labels, and the index of the first data line."""
    tags: dict[str, str] = {}
    class_names: list[str] | None = None
    for number, line in enumerate(lines):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        if not text.startswith("@"):
            raise DataError(
                f"{path}, line {number + 1}: data before '@data'; expected a header tag or '@data'"
            )
        key, _, value = text[1:].partition(" ")
        key = key.lower()
        if key == "data":
            return tags, class_names, number + 1
        if key == "classlabel":
            words = value.split()
            if words and words[0].lower() == "true":
                class_names = words[1:]
        tags[key] = value.strip().lower()
    raise DataError(f"{path}: no '@data' line; expected a .ts header ending in '@data'")


def _ts_case(path: Path, number: int, line: str, dimensions: int | None) -> tuple[np.ndarray, str]:
    where = f"{path}, line {number}"
    if "(" in line:
        raise DataError(f"{where}: timestamped values '(t,v)' are not supported; expected plain comma lists")
    *fields, label = line.split(":")
    label = label.strip()
    if not fields or not label:
        raise DataError(f"{where}: missing label; expected dimensions separated by ':' then a class label")
    if dimensions is not None and len(fields) != dimensions:
        raise DataError(f"{where}: {len(fields)} dimensions, the header declares @dimensions {dimensions}")
    columns = []
    for index, field in enumerate(fields):
        try:
            values = [float(v) for v in field.split(",")]
        except ValueError as exc:
            raise DataError(
                f"{where}, dimension {index + 1}: {exc}; expected comma-separated numbers"
            ) from exc
        if any(math.isnan(v) or math.isinf(v) for v in values):
            raise DataError(
                f"{where}, dimension {index + 1}: NaN/Inf or missing value; expected finite numbers"
            )
        if columns and len(values) != len(columns[0]):
            raise DataError(
                f"{where}: ragged case, dimension {index + 1} has {len(values)} steps and dimension 1 has "
                f"{len(columns[0])}; expected every dimension of a case to have the same length"
            )
        columns.append(values)
    return np.asarray(columns, dtype=np.float32).T.copy(), label


def read_ts(path: Path | str) -> LabelledFile:
    """One case per line after '@data': dimensions separated by ':', values by ',', the label last."""
    path = Path(path)
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    tags, class_names, first = _ts_header(path, lines)
    if tags.get("timestamps") == "true":
        raise DataError(f"{path}: '@timeStamps true' is not supported; expected '@timeStamps false'")
    if class_names is None:
        raise DataError(f"{path}: no '@classLabel true ...' header; expected a labelled classification file")
    dimensions = int(tags["dimensions"]) if tags.get("dimensions", "").isdigit() else None
    sequences, labels = [], []
    for number, line in enumerate(lines[first:], start=first + 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        sequence, label = _ts_case(path, number, line.strip(), dimensions)
        if label not in class_names:
            raise DataError(f"{path}, line {number}: label {label!r} is not one of @classLabel {class_names}")
        if sequences and sequence.shape[1] != sequences[0].shape[1]:
            raise DataError(
                f"{path}, line {number}: {sequence.shape[1]} dimensions, "
                f"earlier cases have {sequences[0].shape[1]}"
            )
        sequences.append(sequence)
        labels.append(label)
    if not sequences:
        raise DataError(f"{path}: no cases after '@data'; expected at least one")
    return LabelledFile(sequences, labels, class_names)


# --- .npz --------------------------------------------------------------------------------------------


def _npz_array(path: Path, archive: np.lib.npyio.NpzFile, name: str) -> np.ndarray:
    if name not in archive.files:
        raise DataError(
            f"{path}: missing array {name!r}; expected arrays x [N,T,F], lengths [N], y [N] or [N,T]"
        )
    try:
        return archive[name]
    except ValueError as exc:  # object arrays need pickle, which a data file must not run
        raise DataError(f"{path}: array {name!r} is not numeric or text ({exc})") from exc


def read_npz(path: Path | str) -> LabelledFile:
    """Arrays `x` [N,T,F] float, `lengths` [N] int, `y` [N] or [N,T]; optional `labels` [C] class names."""
    path = Path(path)
    try:
        archive = np.load(path, allow_pickle=False)
    except ValueError as exc:
        # numpy's own message here suggests allow_pickle=True, which would run code from the file: never.
        raise DataError(
            f"{path}: not a .npz archive (numpy.savez writes one); expected arrays x, lengths, y"
        ) from exc
    except OSError as exc:
        raise DataError(f"{path}: not a readable .npz archive ({exc})") from exc
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataError(f"{path}: holds one array, not a .npz archive; expected arrays x, lengths, y")
    with archive:
        x = _npz_array(path, archive, "x")
        lengths = _npz_array(path, archive, "lengths")
        y = _npz_array(path, archive, "y")
        names = archive["labels"] if "labels" in archive.files else None
    if x.ndim != 3 or not np.issubdtype(x.dtype, np.number):
        raise DataError(f"{path}: array 'x' has shape {x.shape} dtype {x.dtype}; expected numbers [N, T, F]")
    n, steps = x.shape[:2]
    if lengths.shape != (n,) or not np.issubdtype(lengths.dtype, np.integer):
        raise DataError(
            f"{path}: array 'lengths' has shape {lengths.shape} dtype {lengths.dtype}; expected int [{n}]"
        )
    bad = np.flatnonzero((lengths < 1) | (lengths > steps))
    if bad.size:
        raise DataError(f"{path}: array 'lengths'[{bad[0]}] = {lengths[bad[0]]}; expected 1..{steps}")
    if y.shape not in ((n,), (n, steps)):
        raise DataError(f"{path}: array 'y' has shape {y.shape}; expected [{n}] or [{n}, {steps}]")
    class_names = [str(v) for v in names.tolist()] if names is not None else None
    if class_names is not None and np.issubdtype(y.dtype, np.integer):
        y = _label_names(path, y, lengths, class_names)
    sequences, labels = [], []
    for i, length in enumerate(lengths.tolist()):
        sequence = x[i, :length].astype(np.float32)
        if not np.isfinite(sequence).all():
            step = int(np.flatnonzero(~np.isfinite(sequence).all(axis=1))[0])
            raise DataError(f"{path}: array 'x'[{i}, {step}] holds NaN/Inf; expected finite numbers")
        sequences.append(sequence)
        labels.append(str(y[i]) if y.ndim == 1 else y[i, :length].astype(str))
    return LabelledFile(sequences, labels, class_names)


def _label_names(path: Path, y: np.ndarray, lengths: np.ndarray, class_names: list[str]) -> np.ndarray:
    """Integer `y` with a `labels` array: each value indexes the class names."""
    valid = y if y.ndim == 1 else np.concatenate([y[i, :n] for i, n in enumerate(lengths.tolist())])
    bad = np.flatnonzero((valid < 0) | (valid >= len(class_names)))
    if bad.size:
        raise DataError(
            f"{path}: array 'y' holds {valid[bad[0]]}; with 'labels' of {len(class_names)} class names, "
            f"expected integers 0..{len(class_names) - 1}"
        )
    return np.asarray(class_names, dtype=object)[np.clip(y, 0, len(class_names) - 1)]


# --- .csv --------------------------------------------------------------------------------------------


def _csv_number(path: Path, number: int, column: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError as exc:
        raise DataError(f"{path}, line {number}, column {column!r}: {text!r} is not a number") from exc
    if math.isnan(value) or math.isinf(value):
        raise DataError(f"{path}, line {number}, column {column!r}: {text!r}; expected a finite number")
    return value


def read_csv(path: Path | str) -> LabelledFile:
    """Long format with a header: sequence id, step, feature columns..., label (one row per time step).

    Rows of a sequence may come in any order; their steps must be 0..T-1 with none missing. When every
    sequence keeps one label the file is many-to-one, otherwise many-to-many.
    """
    path = Path(path)
    rows: dict[str, dict[int, tuple[list[float], str]]] = {}
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None or len(header) < 4:
            raise DataError(
                f"{path}, line 1: header {header!r}; expected at least 4 columns: sequence id, step, "
                "one or more features, label"
            )
        features = header[2:-1]
        for number, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != len(header):
                raise DataError(f"{path}, line {number}: {len(row)} columns, the header has {len(header)}")
            sequence_id, label = row[0].strip(), row[-1].strip()
            if not label:
                raise DataError(f"{path}, line {number}: missing label in column {header[-1]!r}")
            step = _csv_number(path, number, header[1], row[1])
            if step != int(step) or step < 0:
                raise DataError(f"{path}, line {number}: step {row[1]!r}; expected an integer >= 0")
            values = [
                _csv_number(path, number, name, text) for name, text in zip(features, row[2:-1], strict=True)
            ]
            steps = rows.setdefault(sequence_id, {})
            if int(step) in steps:
                raise DataError(f"{path}, line {number}: sequence {sequence_id!r} repeats step {int(step)}")
            steps[int(step)] = (values, label)
    if not rows:
        raise DataError(f"{path}: no data rows after the header")
    sequences, step_labels = [], []
    for sequence_id, steps in rows.items():
        if sorted(steps) != list(range(len(steps))):
            missing = sorted(set(range(max(steps) + 1)) - steps.keys())
            raise DataError(f"{path}: sequence {sequence_id!r} lacks step(s) {missing[:5]}; expected 0..T-1")
        ordered = [steps[t] for t in range(len(steps))]
        sequences.append(np.asarray([values for values, _ in ordered], dtype=np.float32))
        step_labels.append(np.asarray([label for _, label in ordered]))
    if all((labels == labels[0]).all() for labels in step_labels):
        return LabelledFile(sequences, [str(labels[0]) for labels in step_labels])
    return LabelledFile(sequences, step_labels)
