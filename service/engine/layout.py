"""Rows in and out of a graph's layout: each stream's rows gathered along each tensor's own batch axis
(and padded along its time axis) for one call, and each row's state taken back out of the call's.

A row is a tensor less its batch axis: a state row is [*row_shape]; a stream input's row is
[steps, *step_shape] with a time axis, one frame [*step_shape] without one (a frame model).
"""

from __future__ import annotations

import numpy as np

from seqserve.declaration import StreamInputDecl

# A chunk: [steps, ...] of the graph's one stream input, or one such array per stream input.
Chunk = np.ndarray | tuple[np.ndarray, ...]


def chunk_steps(x: Chunk) -> int:
    return (x[0] if isinstance(x, tuple) else x).shape[0]


def stack_states(columns: list[tuple[np.ndarray, ...]], axes: tuple[int, ...]) -> tuple[np.ndarray, ...]:
    """The call's state tensors: state k of every row, stacked along state k's batch axis."""
    return tuple(
        np.stack(column, axis=axis) for column, axis in zip(zip(*columns, strict=True), axes, strict=True)
    )


# Indexers that insert a batch axis of 1 at axis k: a view, several times cheaper than np.expand_dims on
# the lone row's path, which every chunk of a lone stream takes.
_NEW_AXIS = tuple((slice(None),) * axis + (None,) for axis in range(8))


def one_state(states: tuple[np.ndarray, ...], axes: tuple[int, ...]) -> tuple[np.ndarray, ...]:
    """A lone row's state tensors: views with a batch axis of 1 (contiguous as the row was)."""
    return tuple([np.ascontiguousarray(s[_NEW_AXIS[axis]]) for s, axis in zip(states, axes, strict=True)])


def row_index(axis: int, index: int) -> tuple:
    """The indexer of row `index` along `axis`; the Ellipsis keeps a row of a [batch] tensor a 0-d array (a
    view), not a numpy scalar."""
    return (slice(None),) * axis + (index, Ellipsis)


def row_states(states: tuple[np.ndarray, ...], axes: tuple[int, ...], index: int) -> tuple[np.ndarray, ...]:
    """Row `index`'s state out of the call's (views)."""
    return tuple(s[row_index(axis, index)] for s, axis in zip(states, axes, strict=True))


def batch_input(spec: StreamInputDecl, rows: list[np.ndarray], steps: int) -> np.ndarray:
    """The call's tensor of one stream input: rows zero-padded to `steps` along time, batch and time axes
    where the graph has them. Frames of different shapes (only rows the server makes: a seq2seq decoder's
    memory, as long as each word) are zero-padded to the largest along each axis; such a graph masks by
    its own lengths input."""
    first = rows[0]
    if spec.time_axis is None:
        batch = np.stack(rows) if _same_shape(rows) else _padded_frames(rows)
        return batch if spec.batch_axis == 0 else np.moveaxis(batch, 0, spec.batch_axis)
    batch = np.zeros((len(rows), steps, *first.shape[1:]), dtype=first.dtype)
    for index, row in enumerate(rows):
        batch[index, : row.shape[0]] = row
    if (spec.batch_axis, spec.time_axis) == (0, 1):
        return batch
    return np.ascontiguousarray(np.moveaxis(batch, (0, 1), (spec.batch_axis, spec.time_axis)))


def _same_shape(rows: list[np.ndarray]) -> bool:
    shape = rows[0].shape
    return all(row.shape == shape for row in rows)


def _padded_frames(rows: list[np.ndarray]) -> np.ndarray:
    """[len(rows), *largest] with each row at the start of its slot along every axis, zeros elsewhere."""
    largest = np.max([row.shape for row in rows], axis=0)
    batch = np.zeros((len(rows), *largest), dtype=rows[0].dtype)
    for index, row in enumerate(rows):
        batch[(index, *(slice(0, n) for n in row.shape))] = row
    return batch


def one_input(spec: StreamInputDecl, row: np.ndarray) -> np.ndarray:
    """A lone row as the graph takes it: a view with a batch axis of 1."""
    if spec.time_axis is None:
        return row[_NEW_AXIS[spec.batch_axis]]
    if (spec.batch_axis, spec.time_axis) == (0, 1):
        return row[np.newaxis]
    return np.ascontiguousarray(np.moveaxis(row[np.newaxis], (0, 1), (spec.batch_axis, spec.time_axis)))
