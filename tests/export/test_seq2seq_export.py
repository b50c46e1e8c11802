"""A seq2seq run exported as two graphs: their interfaces, parity with PyTorch, and the onnxruntime
decoder's searches (beam width 1 is greedy; a word's answer does not depend on its batch). Tiny models."""

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, numpy_helper

from seqserve import contract
from seqserve.beam_search import SearchOptions
from seqserve.export.errors import ExportError
from seqserve.export.seq2seq_decode import OnnxSeq2Seq
from seqserve.export.seq2seq_graph import build_decoder_step, build_encoder
from seqserve.export.seq2seq_job import (
    check_seq2seq_parity,
    export_seq2seq,
    is_seq2seq_run,
    parity_words,
    score_scale,
    seq2seq_info,
)
from seqserve.training.g2p_data import load_g2p
from seqserve.training.loop import CHECKPOINT_FILE
from seqserve.training.seq2seq import from_payload
from seqserve.training.seq2seq_decode import decode_words
from seqserve.training.seq2seq_loop import TEST_WORDS_FILE, Seq2SeqTrainConfig, train_seq2seq
from seqserve.vocabularies import Tokens


@pytest.fixture(scope="module", params=[("gru", 1), ("lstm", 2)], ids=["gru", "lstm-2-layer-encoder"])
def run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run of each cell (the LSTM's encoder stacked): 600 words, three epochs (it learns a little,
    so decodes are not ties)."""
    torch.set_num_threads(1)
    cell, encoder_layers = request.param
    out = tmp_path_factory.mktemp("seq2seq") / f"g2p-{cell}"
    config = Seq2SeqTrainConfig(
        out=out, cell=cell, encoder_layers=encoder_layers, limit=600, epochs=3, embedding=12,
        encoder_hidden=12, hidden=24, batch_size=64, lr=3e-2, threads=1,
    )  # fmt: skip
    train_seq2seq(config)
    return out


@pytest.fixture(scope="module")
def exported(run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path, _ = export_seq2seq(run, tmp_path_factory.mktemp("repository"))
    return path


def _io(model: onnx.ModelProto) -> tuple[dict, dict]:
    def describe(values):
        return {
            v.name: (
                TensorProto.DataType.Name(v.type.tensor_type.elem_type),
                [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim],
            )
            for v in values
        }

    return describe(model.graph.input), describe(model.graph.output)


def test_one_version_holds_both_graphs_with_the_contracts_names(run: Path, exported: Path) -> None:
    assert is_seq2seq_run(run)
    assert sorted(p.name for p in exported.iterdir()) == ["decoder_step.onnx", "encoder.onnx", "model.json"]
    info = contract.read_model_info(exported)
    cell = info.cell
    states = ["h0", "c0"] if cell == "lstm" else ["h0"]
    outputs = ["hn", "cn"] if cell == "lstm" else ["hn"]
    encoder_in, encoder_out = _io(onnx.load(exported / contract.ENCODER_FILE))
    assert encoder_in == {"tokens": ("INT64", ["batch", "time"]), "lengths": ("INT32", ["batch"])}
    assert encoder_out == {
        "memory": ("FLOAT", ["batch", "time", 24]),
        **{name: ("FLOAT", [1, "batch", 24]) for name in outputs},
    }
    decoder_in, decoder_out = _io(onnx.load(exported / contract.DECODER_FILE))
    assert decoder_in == {
        "previous": ("INT64", ["batch"]),
        **{name: ("FLOAT", [1, "batch", 24]) for name in states},
        "memory": ("FLOAT", ["batch", "time", 24]),
        "lengths": ("INT32", ["batch"]),
    }
    assert decoder_out == {
        "log_probs": ("FLOAT", ["batch", 41]),
        **{name: ("FLOAT", [1, "batch", 24]) for name in outputs},
        "attention": ("FLOAT", ["batch", "time"]),
    }
    data = json.loads((exported / "model.json").read_text())
    assert data["task"] == "seq2seq" and data["labels"][:2] == ["<s>", "</s>"] and len(data["labels"]) == 41
    assert data["vocabulary"][0] == "<pad>" and "a" in data["vocabulary"] and data["streamable"] is False
    assert data["seq2seq"]["graphs"] == {"encoder": "encoder.onnx", "decoder_step": "decoder_step.onnx"}
    assert data["parity"]["passed"] and data["parity"]["greedy_outputs_differing"] == 0
    assert data["parity"]["max_abs_diff"] <= 1e-5 and set(data["test_metrics"]) == {"greedy", "beam_4"}
    assert not (exported / "declaration.json").exists()
    # The encoder marks a version of two graphs: the repository lists (and the server loads) it.
    assert contract.list_versions(exported.parent.parent, exported.parent.name) == [int(exported.name)]


def test_teacher_forced_steps_and_greedy_decodes_match_pytorch(run: Path, exported: Path) -> None:
    payload = torch.load(run / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
    model = from_payload(payload)
    session = OnnxSeq2Seq.from_version(exported)
    words = parity_words(payload)
    assert list(words) == (run / TEST_WORDS_FILE).read_text().split()
    parity = check_seq2seq_parity(model, session, words)
    assert parity["passed"] and parity["log_probs"] <= 1e-5 and parity["state"] <= 1e-5
    torch_out = [f[0].output for f in decode_words(model, session.tokens, list(words))]
    onnx_out = [f[0].output for f in session.translate(list(words))]
    assert torch_out == onnx_out and any(torch_out)


def test_a_wrong_weight_fails_parity(run: Path) -> None:
    model = from_payload(torch.load(run / CHECKPOINT_FILE, map_location="cpu", weights_only=True))
    info = seq2seq_info(model, "broken", 1)
    decoder = build_decoder_step(model, info)
    for tensor in decoder.graph.initializer:
        if tensor.name == "combine_bias":
            tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor) + 1e-3, tensor.name))
    session = OnnxSeq2Seq(build_encoder(model, info).SerializeToString(), decoder.SerializeToString(), info)
    words = {"cat": [("K", "AE", "T")], "phoneme": [("F", "OW", "N", "IY", "M")]}
    parity = check_seq2seq_parity(model, session, words)
    assert not parity["passed"] and parity["log_probs"] > 1e-5


def test_parity_leaves_out_pytorchs_first_call_and_counts_every_later_one(
    run: Path, exported: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = from_payload(torch.load(run / CHECKPOINT_FILE, map_location="cpu", weights_only=True))
    session = OnnxSeq2Seq.from_version(exported)
    words = {"cat": [("K", "AE", "T")], "phoneme": [("F", "OW", "N", "IY", "M")]}
    encode, calls = model.encode, []

    def off_at(call: int):
        def encode_off(letters: torch.Tensor, lengths: torch.Tensor):
            calls.append(call)
            memory, state = encode(letters, lengths)
            return (memory + 1e-4 if len(calls) == call else memory), state

        return encode_off

    monkeypatch.setattr(model, "encode", off_at(1))
    assert check_seq2seq_parity(model, session, words)["passed"]
    calls.clear()
    monkeypatch.setattr(model, "encode", off_at(2))
    parity = check_seq2seq_parity(model, session, words)
    assert not parity["passed"] and parity["memory"] > 1e-5


def test_attention_counts_relative_to_its_scores_and_still_catches_a_wrong_query(run: Path) -> None:
    model = from_payload(torch.load(run / CHECKPOINT_FILE, map_location="cpu", weights_only=True))
    info = seq2seq_info(model, "broken", 1)
    words = {"cat": [("K", "AE", "T")], "phoneme": [("F", "OW", "N", "IY", "M")]}
    letters, lengths = map(
        torch.from_numpy, Tokens(model.config.letters, model.config.phonemes).input_batch(["cat"])
    )
    with torch.no_grad():
        memory, state = model.encode(letters, lengths)
        _, state, attention = model.step(torch.tensor([0]), state, memory, lengths)
        scores = (model.query(state[0][-1]) @ memory[0, :3].T)[0]
    # The weights are the softmax of these scores; a row counts relative to the largest |score|, at least 1.
    torch.testing.assert_close(attention[0, :3], torch.softmax(scores, dim=0))
    expected = max(1.0, float(scores.abs().max()))
    assert score_scale(model, state, memory, lengths)[0] == pytest.approx(expected, rel=1e-6)
    decoder = build_decoder_step(model, info)
    for tensor in decoder.graph.initializer:
        if tensor.name == "query_weight_t":
            tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor) * 1.01, tensor.name))
    session = OnnxSeq2Seq(build_encoder(model, info).SerializeToString(), decoder.SerializeToString(), info)
    parity = check_seq2seq_parity(model, session, words)
    assert not parity["passed"] and parity["attention"] > 1e-5


def test_export_refuses_a_model_whose_parity_fails(run: Path, tmp_path: Path, monkeypatch) -> None:
    from seqserve.export import seq2seq_job

    monkeypatch.setattr(seq2seq_job, "check_seq2seq_parity", lambda *a: {"passed": False})
    with pytest.raises(ExportError, match="parity"):
        export_seq2seq(run, tmp_path / "repo")
    assert not (tmp_path / "repo" / run.name / "1").exists()


def test_beam_width_one_is_greedy_and_nbest_is_ranked(exported: Path) -> None:
    session = OnnxSeq2Seq.from_version(exported)
    words = ["cat", "phoneme", "x-ray", "it's", "aardvark"]
    greedy = session.translate(words)
    beam_one = session.translate(words, SearchOptions(beam=1))
    assert [g[0].output for g in greedy] == [b[0].output for b in beam_one]
    np.testing.assert_allclose([g[0].score for g in greedy], [b[0].score for b in beam_one], atol=1e-5)
    three = session.translate(words, SearchOptions(beam=4, nbest=3, length_penalty=0.6))
    for found in three:
        assert len(found) == 3 and len({f.output for f in found}) == 3
        ranks = [f.score / ((5 + len(f.output) + f.finished) / 6) ** 0.6 for f in found]
        assert ranks == sorted(ranks, reverse=True)
    short = session.translate(["aardvark"], SearchOptions(beam=2, max_steps=2))[0][0]
    assert len(short.output) <= 2


def test_a_words_beam_is_the_same_alone_and_among_63_others(run: Path, exported: Path) -> None:
    session = OnnxSeq2Seq.from_version(exported)
    data, _ = load_g2p(limit=600)
    words = [*(run / TEST_WORDS_FILE).read_text().split(), "supercalifragilistic", "a", *data.train][:64]
    options = SearchOptions(beam=4, nbest=2)
    together = session.translate(words, options, batch_size=64)  # one encoder call, one decoder call a step
    for index in (0, 30, 31, 63):
        alone = session.translate([words[index]], options)[0]
        assert [a.output for a in alone] == [t.output for t in together[index]]
        np.testing.assert_allclose([a.score for a in alone], [t.score for t in together[index]], atol=1e-5)


def test_characters_outside_the_vocabulary_are_named(exported: Path) -> None:
    session = OnnxSeq2Seq.from_version(exported)
    with pytest.raises(ValueError, match=r"'7' at position 3 of 'abc7'"):
        session.translate(["abc7"])
