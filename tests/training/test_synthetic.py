import numpy as np
import pytest

from seqserve.training.synthetic import LongRangeTask


def test_label_is_decided_by_the_first_steps_only() -> None:
    task = LongRangeTask(length=30, classes=4, features=6, cue_steps=3, cue_scale=3.0)
    splits = task.splits((200, 10, 10), seed=5)
    x = np.stack(splits.train.sequences)
    labels = np.array([int(t) for t in splits.train.targets])
    assert x.shape == (200, 30, 6) and splits.features == 6 and task.chance == 0.25
    # The cue channel read over the first steps names the class (the task is solvable)...
    assert (x[:, :3, :4].sum(axis=1).argmax(axis=1) == labels).mean() > 0.95
    # ...and the rest of the sequence is label-free noise.
    assert abs(np.corrcoef(x[:, 3:, 0].mean(axis=1), labels == 0)[0, 1]) < 0.2
    again = task.splits((200, 10, 10), seed=5)
    assert all(np.array_equal(a, b) for a, b in zip(splits.test.sequences, again.test.sequences, strict=True))


def test_task_checks_its_shape() -> None:
    with pytest.raises(ValueError, match="5 classes need at least as many features, got 4"):
        LongRangeTask(length=10, classes=5, features=4)
    with pytest.raises(ValueError, match="cue_steps must be in"):
        LongRangeTask(length=3, cue_steps=3)
