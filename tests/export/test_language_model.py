"""A language model under the contract: int64 `tokens` in, the vocabulary in model.json and metadata_props,
parity whole / chunked / mixed-length, and every other model's model.json exactly as before."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from seqserve import contract
from seqserve.contract import ContractError, ModelInfo
from seqserve.export.graph import build_model
from seqserve.export.inference import OnnxClassifier
from seqserve.export.job import export_run
from seqserve.export.parity import check_parity

from .tiny_models import VOCABULARY, make_language_model, make_model


def token_sequences(count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, len(VOCABULARY), size=int(rng.integers(1, 40))) for _ in range(count)]


@pytest.mark.parametrize(
    ("cell", "layers", "layer_norm"), [("gru", 1, False), ("lstm", 2, True), ("rnn", 1, False)]
)
def test_language_model_parity_whole_chunked_and_batched(cell: str, layers: int, layer_norm: bool) -> None:
    model, info = make_language_model(cell, layers, layer_norm=layer_norm)
    session = OnnxClassifier(build_model(model, info).SerializeToString(), info)
    report = check_parity(model, session, token_sequences(12), batch_size=5)
    assert report.passed, report.describe()
    assert report.chunked is not None and 0 < report.max_abs_diff <= contract.PARITY_TOLERANCE


def test_language_model_graph_takes_int64_tokens_and_describes_itself() -> None:
    model, info = make_language_model("gru")
    onnx_model = build_model(model, info)
    inputs = {i.name: i.type.tensor_type for i in onnx_model.graph.input}
    assert list(inputs) == [contract.INPUT_TOKENS, contract.INPUT_H0, contract.INPUT_LENGTHS]
    assert inputs[contract.INPUT_TOKENS].elem_type == onnx.TensorProto.INT64
    assert [d.dim_param for d in inputs[contract.INPUT_TOKENS].shape.dim] == ["batch", "time"]
    logits = onnx_model.graph.output[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in logits] == ["batch", "time", len(VOCABULARY)]
    props = {p.key: p.value for p in onnx_model.metadata_props}
    assert json.loads(props["seqserve.vocabulary"]) == VOCABULARY
    assert ModelInfo.from_metadata_props(props).vocabulary == VOCABULARY
    assert json.loads(info.to_json())["task"] == "language_model"


def test_a_classifier_model_json_has_no_vocabulary_key() -> None:
    _, info = make_model("gru", 1, "many_to_many")
    assert "vocabulary" not in json.loads(info.to_json())
    assert not any(key.endswith("vocabulary") for key in info.metadata_props())
    assert ModelInfo.from_dict(json.loads(info.to_json())) == info


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"vocabulary": ["a", "b"]}, "labels are its vocabulary"),
        ({"labels": ["a", "a"], "vocabulary": ["a", "a"]}, "repeats an entry"),
        ({"features": 3}, "one token per step"),
        ({"task": "many_to_many"}, "takes features, not tokens"),
    ],
)
def test_model_info_refuses_an_inconsistent_language_model(changes: dict, message: str) -> None:
    _, info = make_language_model("gru")
    fields = {**info.to_dict(), **changes}
    fields.pop("streamable")
    with pytest.raises(ContractError, match=message):
        ModelInfo.from_dict(fields)


def test_a_trained_language_model_exports_with_parity(tmp_path: Path) -> None:
    from seqserve.training.text_loop import TextTrainConfig, train_text

    text = ("To be, or not to be: that is the question.\n" * 40).strip()
    (tmp_path / "corpus.txt").write_text(text)
    run_dir, metrics = train_text(
        TextTrainConfig(
            out=tmp_path / "run",
            data=tmp_path / "corpus.txt",
            hidden=8,
            embedding=4,
            batch_size=4,
            bptt=16,
            max_steps=3,
            eval_every=3,
            threads=1,
        )  # fmt: skip
    )
    [result] = export_run(run_dir, tmp_path / "repository")
    written = json.loads((result.path / contract.METADATA_FILE).read_text())
    assert written["task"] == "language_model" and written["parity"]["passed"]
    assert written["vocabulary"] == written["labels"] == sorted(set(text))
    assert written["test_metrics"]["test"] == metrics["test"]
    assert written["test_metrics"]["baselines"] == metrics["baselines"]
