"""`basic_motions_stream`: BasicMotions recordings joined into long labelled streams, as a wearable sends.

BasicMotions holds 10 s recordings (100 steps at 10 Hz, 3-axis accelerometer + gyroscope) of four
activities. A stream is built by cutting a random-length segment out of a random recording, then another
from a recording of a different activity, and so on until the stream is long enough; every step carries
its segment's activity. Validation streams come from train recordings held out of the train streams, test
streams only from the test file's recordings, all drawn from one seeded generator. NumPy only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from seqserve.training.datasets import DatasetSplits, SequenceSet, class_names, encode, stratified_split
from seqserve.training.readers import read_ts

# Train and validation streams share one length, so their batches need no packing (several times faster
# on CPU); test streams vary, as real ones do, so mixed-length batches get exercised downstream.
TRAIN_STREAM_STEPS = (400, 400)  # inclusive range of a stream's length
TEST_STREAM_STEPS = (300, 500)
SEGMENT_STEPS = (25, 75)  # inclusive range of one activity segment's length
STREAMS = {"train": 96, "validation": 24, "test": 40}
VALIDATION_RECORDINGS = 0.2  # of the train file's recordings, per activity


def build_streams(
    recordings: SequenceSet, count: int, steps_range: tuple[int, int], rng: np.random.Generator
) -> SequenceSet:
    """`count` streams cut from `recordings` (many-to-one targets) with a per-step activity label."""
    classes = np.asarray([int(t) for t in recordings.targets])
    if len(np.unique(classes)) < 2:
        raise ValueError(
            f"streams need recordings of at least 2 activities, got classes {np.unique(classes)}"
        )
    sequences, targets = [], []
    for _ in range(count):
        length = int(rng.integers(steps_range[0], steps_range[1] + 1))
        pieces, labels, previous = [], [], -1
        while sum(len(p) for p in pieces) < length:
            choice = int(rng.choice(np.flatnonzero(classes != previous)))
            recording = recordings.sequences[choice]
            steps = min(int(rng.integers(SEGMENT_STEPS[0], SEGMENT_STEPS[1] + 1)), len(recording))
            start = int(rng.integers(0, len(recording) - steps + 1))
            pieces.append(recording[start : start + steps])
            labels.append(np.full(steps, classes[choice], dtype=np.int64))
            previous = classes[choice]
        sequences.append(np.concatenate(pieces)[:length].astype(np.float32))
        targets.append(np.concatenate(labels)[:length])
    return SequenceSet(sequences, targets)


def load_basic_motions_stream(folder: Path, seed: int) -> DatasetSplits:
    train_file = read_ts(folder / "BasicMotions_TRAIN.ts")
    test_file = read_ts(folder / "BasicMotions_TEST.ts")
    labels = class_names(train_file)
    recordings = encode(train_file, labels, "BasicMotions_TRAIN.ts")
    rng = np.random.default_rng(seed)
    keys = np.asarray([int(t) for t in recordings.targets])
    train_ids, validation_ids = stratified_split(keys, (VALIDATION_RECORDINGS,), rng)
    train = build_streams(recordings.subset(train_ids), STREAMS["train"], TRAIN_STREAM_STEPS, rng)
    validation = build_streams(
        recordings.subset(validation_ids), STREAMS["validation"], TRAIN_STREAM_STEPS, rng
    )
    test_recordings = encode(test_file, labels, "BasicMotions_TEST.ts")
    test = build_streams(test_recordings, STREAMS["test"], TEST_STREAM_STEPS, rng)
    features = train.sequences[0].shape[1]
    return DatasetSplits("basic_motions_stream", "many_to_many", labels, features, train, validation, test)
