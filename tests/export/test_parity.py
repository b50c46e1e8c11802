"""Parity: PyTorch vs ONNX whole, in random uneven chunks carrying the state, and in mixed-length batches."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from seqserve import contract
from seqserve.export import graph
from seqserve.export.graph import build_model
from seqserve.export.inference import OnnxClassifier, pad_batch
from seqserve.export.parity import check_parity, chunk_bounds
from seqserve.training.datasets import load_dataset

from .tiny_models import CASES, FEATURES, make_model


def random_sequences(count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [
        rng.normal(2.0, 3.0, size=(int(rng.integers(1, 40)), FEATURES)).astype(np.float32)
        for _ in range(count)
    ]


@pytest.mark.parametrize(("cell", "layers", "task"), CASES)
def test_parity_holds_whole_chunked_and_batched(cell: str, layers: int, task: str) -> None:
    model, info = make_model(cell, layers, task)
    session = OnnxClassifier(build_model(model, info).SerializeToString(), info)
    report = check_parity(model, session, random_sequences(12), batch_size=5)
    assert report.passed, report.describe()
    assert report.chunked is not None
    assert 0 < report.max_abs_diff <= contract.PARITY_TOLERANCE


@pytest.mark.parametrize("cell", contract.CELLS)
def test_bidirectional_parity_is_whole_and_batched_only(cell: str) -> None:
    model, info = make_model(cell, 2, "many_to_many", bidirectional=True)
    session = OnnxClassifier(build_model(model, info).SerializeToString(), info)
    report = check_parity(model, session, random_sequences(8), batch_size=3)
    assert report.passed, report.describe()
    assert report.chunked is None
    assert report.to_dict()["chunked"] is None


def test_a_wrong_gate_mapping_fails_parity(monkeypatch: pytest.MonkeyPatch) -> None:
    # PyTorch's GRU order taken as ONNX's: what the mapping exists to prevent.
    monkeypatch.setitem(graph._GATE_ORDER, "gru", [0, 1, 2])
    model, info = make_model("gru", 1, "many_to_one")
    session = OnnxClassifier(build_model(model, info).SerializeToString(), info)
    report = check_parity(model, session, random_sequences(4))
    assert not report.passed
    assert report.max_abs_diff > 1e-3


def test_chunk_bounds_tile_the_sequence_in_uneven_random_chunks() -> None:
    rng = np.random.default_rng(0)
    sizes_seen = set()
    for steps in (1, 2, 7, 29, 400):
        for _ in range(20):
            bounds = chunk_bounds(steps, rng)
            assert bounds[0][0] == 0 and bounds[-1][1] == steps
            assert all(end > start for start, end in bounds)
            assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:], strict=False))
            sizes_seen.add(tuple(end - start for start, end in bounds))
    assert len(sizes_seen) > 50


def test_exported_models_record_passing_parity(model_repository) -> None:
    for name in contract.list_models(model_repository):
        info = contract.read_model_info(contract.version_dir(model_repository, name, 1))
        assert info.parity["passed"] is True
        assert info.parity["max_abs_diff"] <= contract.PARITY_TOLERANCE
        assert info.parity["sequences"] >= 40
        assert (info.parity["chunked"] is None) == info.bidirectional


@pytest.mark.parametrize("name", ["jv-gru", "jv-lstm", "bms-gru"])
def test_exported_model_is_chunk_invariant_on_real_sequences(model_repository, name: str) -> None:
    path = contract.version_dir(model_repository, name, 1)
    info = contract.read_model_info(path)
    session = OnnxClassifier((path / contract.MODEL_FILE).read_bytes(), info)
    splits = load_dataset("basic_motions_stream" if name.startswith("bms") else "japanese_vowels")
    rng = np.random.default_rng(7)
    for sequence in splits.test.sequences[:10]:
        whole, whole_state = session.run(sequence[None], np.array([len(sequence)], np.int32))
        state, pieces = session.initial_state(1), []
        for start, end in chunk_bounds(len(sequence), rng):
            logits, state = session.run(sequence[None, start:end], np.array([end - start], np.int32), state)
            pieces.append(logits)
        chunked = np.concatenate(pieces, axis=1) if info.task == "many_to_many" else pieces[-1]
        np.testing.assert_allclose(chunked, whole, atol=contract.PARITY_TOLERANCE, rtol=0)
        for got, want in zip(state, whole_state, strict=True):
            np.testing.assert_allclose(got, want, atol=contract.PARITY_TOLERANCE, rtol=0)


@pytest.mark.parametrize("name", ["jv-bigru", "bms-gru"])
def test_exported_model_is_batch_invariant_on_real_sequences(model_repository, name: str) -> None:
    path = contract.version_dir(model_repository, name, 1)
    info = contract.read_model_info(path)
    session = OnnxClassifier((path / contract.MODEL_FILE).read_bytes(), info)
    splits = load_dataset("basic_motions_stream" if name.startswith("bms") else "japanese_vowels")
    sequences = splits.test.sequences[:9]
    assert len({len(s) for s in sequences}) > 3
    x, lengths = pad_batch(sequences, pad_value=-50.0)
    batched, batched_state = session.run(x, lengths)
    for row, sequence in enumerate(sequences):
        alone, alone_state = session.run(sequence[None], lengths[row : row + 1])
        got = batched[row, : lengths[row]] if info.task == "many_to_many" else batched[row]
        np.testing.assert_allclose(got, alone[0], atol=contract.PARITY_TOLERANCE, rtol=0)
        for got_state, want_state in zip(batched_state, alone_state, strict=True):
            np.testing.assert_allclose(
                got_state[:, row], want_state[:, 0], atol=contract.PARITY_TOLERANCE, rtol=0
            )


def test_model_json_and_metadata_props_agree(model_repository) -> None:
    for name in contract.list_models(model_repository):
        path = contract.version_dir(model_repository, name, 1)
        props = {p.key: p.value for p in onnx.load(path / contract.MODEL_FILE).metadata_props}
        from_props = contract.ModelInfo.from_metadata_props(props)
        on_disk = json.loads((path / contract.METADATA_FILE).read_text())
        assert from_props.to_dict() == {**on_disk, "sha256": ""}
