"""service/engine/layout.py: a call's tensor of one stream input, from rows."""

from __future__ import annotations

import numpy as np

from seqserve.declaration import StreamInputDecl
from seqserve.service.engine import layout


def frames(batch_axis: int = 0) -> StreamInputDecl:
    return StreamInputDecl("memory", "float32", batch_axis, None, (-1, 3))


def test_frames_of_one_shape_stack_along_the_batch_axis() -> None:
    rows = [np.full((2, 3), k, np.float32) for k in range(4)]
    assert np.array_equal(layout.batch_input(frames(), rows, 1), np.stack(rows))
    moved = layout.batch_input(frames(batch_axis=1), rows, 1)
    assert moved.shape == (2, 4, 3) and np.array_equal(moved[:, 2], rows[2])


def test_frames_of_different_shapes_are_zero_padded_to_the_largest_along_each_axis() -> None:
    rows = [np.ones((2, 3), np.float32), 2 * np.ones((5, 3), np.float32), 3 * np.ones((1, 3), np.float32)]
    batch = layout.batch_input(frames(), rows, 1)
    assert batch.shape == (3, 5, 3) and batch.dtype == np.float32
    for index, row in enumerate(rows):
        assert np.array_equal(batch[index, : len(row)], row)
        assert not batch[index, len(row) :].any()
    scalars = [np.array(7, np.int64), np.array(8, np.int64)]  # 0-d frames (a token, a length)
    spec = StreamInputDecl("previous", "int64", 0, None, ())
    assert layout.batch_input(spec, scalars, 1).tolist() == [7, 8]
