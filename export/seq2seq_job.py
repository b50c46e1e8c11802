"""Exporting a seq2seq run: build its two graphs, prove parity with PyTorch, write one version.

Parity, on test words of the run's own split (`PARITY_WORDS` of them, in batches of mixed lengths): the
encoder's memory and first state; then every step of a teacher-forced decode (each backend fed the
reference's tokens and carrying its own state, each row up to the step that predicts its end token; later
steps of a batch's shorter rows read padding), comparing log-probabilities, state and attention weights;
then whole greedy decodes, which must give the same outputs word for word. Log-probabilities reach -30 and
below, where float32's spacing is ~2e-6, so they count relative to max(1, |reference|) as a language
model's logits do (docs/design.md section 2). Attention weights are a softmax of scores (W_a s) . m that
reach hundreds in a trained model (361 in the default CMUdict LSTM, where float32's spacing is 3e-5), so a
row's weights count relative to max(1, its largest |score| over its letters), the reference's, as
log-probabilities count relative to their own magnitude. States and memory are bounded by 1 and count
absolutely. Tolerance `contract.PARITY_TOLERANCE`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from seqserve import contract
from seqserve.contract import ModelInfo
from seqserve.export import repository as repo
from seqserve.export.graph import set_metadata
from seqserve.export.runs import checked_parity, checkpoint_kind, claim_version, read_metrics
from seqserve.export.seq2seq_decode import OnnxSeq2Seq
from seqserve.export.seq2seq_graph import build_decoder_step, build_encoder
from seqserve.training.g2p_data import Lexicon, load_g2p
from seqserve.training.loop import CHECKPOINT_FILE
from seqserve.training.seq2seq import SEQ2SEQ, Seq2Seq, from_payload
from seqserve.training.seq2seq_decode import decode_words
from seqserve.vocabularies import END, PAD, START, Tokens

log = logging.getLogger(__name__)
PARITY_WORDS = 512
PARITY_BATCH = 64


def _worst(got: np.ndarray, want: np.ndarray, scale: np.ndarray | float = 1.0) -> float:
    return float(np.max(np.abs(got - want) / scale)) if want.size else 0.0


def score_scale(
    model: Seq2Seq, state: tuple[torch.Tensor, ...], memory: torch.Tensor, lengths: torch.Tensor
) -> np.ndarray:
    """max(1, each row's largest |attention score| over its letters) for the decoder state a step returned
    (its output is the state's h): what the row's attention weights count relative to."""
    with torch.no_grad():
        scores = torch.einsum("bm,btm->bt", model.query(state[0][-1]), memory)
    padded = torch.arange(memory.shape[1])[None, :] >= lengths[:, None]
    return np.maximum(1.0, scores.abs().masked_fill(padded, 0.0).amax(dim=1).numpy())


def _teacher_forced(model: Seq2Seq, session: OnnxSeq2Seq, words: list[str], references: list[tuple]) -> dict:
    """Largest differences over the encoder and every teacher-forced decoder step of one batch."""
    tokens = session.tokens
    letters, lengths = tokens.input_batch(words)
    x, n = torch.from_numpy(letters), torch.from_numpy(lengths)
    with torch.no_grad():
        memory_t, state_t = model.encode(x, n)
    memory_o, state_o = session.encode(letters, lengths)
    worst = {
        "memory": _worst(memory_o, memory_t.numpy()),
        "state": max(_worst(o, t.numpy()) for o, t in zip(state_o, state_t, strict=True)),
        "log_probs": 0.0,
        "log_probs_absolute": 0.0,
        "attention": 0.0,
    }
    targets = [tokens.encode_output(r) for r in references]
    steps = max(len(t) for t in targets) + 1
    previous = np.full((len(words), steps), tokens.start, dtype=np.int64)
    for row, target in enumerate(targets):
        previous[row, 1 : len(target) + 1] = target
    for t in range(steps):
        with torch.no_grad():
            log_probs_t, state_t, attention_t = model.step(
                torch.from_numpy(previous[:, t]), state_t, memory_t, n
            )
        log_probs_o, state_o, attention_o = session.step(previous[:, t], state_o, memory_o, lengths)
        # Rows whose reference has ended (its end token was step len(target)) read padding: not compared.
        rows = np.array([t <= len(target) for target in targets])
        reference = log_probs_t.numpy()[rows]
        pairs = {
            "log_probs": (log_probs_o[rows], reference, np.maximum(1.0, np.abs(reference))),
            "log_probs_absolute": (log_probs_o[rows], reference, 1.0),
            "attention": (
                attention_o[rows],
                attention_t.numpy()[rows],
                score_scale(model, state_t, memory_t, n)[rows, None],
            ),
            "state": (state_o[0][:, rows], state_t[0].numpy()[:, rows], 1.0),
        }
        if len(state_o) > 1:
            worst["state"] = max(worst["state"], _worst(state_o[1][:, rows], state_t[1].numpy()[:, rows]))
        for key, (got, want, scale) in pairs.items():
            worst[key] = max(worst[key], _worst(got, want, scale))
    return worst


def _make_first_calls(model: Seq2Seq, tokens: Tokens, words: list[str]) -> None:
    """PyTorch's first encoder call and decoder step, made and not compared. The first encoder call in a
    process that has built onnxruntime sessions put one row 2e-5 off a float64 encoder in 1 of 6 processes
    (its later calls and onnxruntime: within 1.5e-6), and the export was refused for PyTorch's error."""
    letters, lengths = (torch.from_numpy(a) for a in tokens.input_batch(words))
    with torch.no_grad():
        memory, state = model.encode(letters, lengths)
        model.step(torch.full((len(words),), tokens.start), state, memory, lengths)


def check_seq2seq_parity(model: Seq2Seq, session: OnnxSeq2Seq, lexicon: Lexicon) -> dict:
    """Teacher-forced step parity and greedy-decode equality on the words of `lexicon` (its first
    pronunciation as the teacher). Returns {'max_abs_diff', 'tolerance', 'passed', ...}."""
    words = list(lexicon)
    _make_first_calls(model, session.tokens, words[:PARITY_BATCH])
    worst: dict[str, float] = {}
    for first in range(0, len(words), PARITY_BATCH):
        batch = words[first : first + PARITY_BATCH]
        found = _teacher_forced(model, session, batch, [lexicon[w][0] for w in batch])
        worst = {k: max(v, worst.get(k, 0.0)) for k, v in found.items()}
    torch_greedy = [found[0].output for found in decode_words(model, session.tokens, words)]
    onnx_greedy = [found[0].output for found in session.translate(words)]
    differing = sum(a != b for a, b in zip(torch_greedy, onnx_greedy, strict=True))
    gated = max(v for k, v in worst.items() if k != "log_probs_absolute")
    return {
        "max_abs_diff": gated,
        "tolerance": contract.PARITY_TOLERANCE,
        "passed": gated <= contract.PARITY_TOLERANCE and differing == 0,
        "words": len(words),
        "greedy_outputs_differing": differing,
        "log_probs_relative_to": "max(1, |reference|)",
        "attention_relative_to": "max(1, the row's largest |score|)",
        **worst,
    }


def seq2seq_info(model: Seq2Seq, name: str, version: int) -> ModelInfo:
    config = model.config
    return ModelInfo(
        name=name,
        version=version,
        task=contract.SEQ2SEQ,
        cell=config.cell,
        layers=1,
        hidden=config.hidden,
        bidirectional=True,
        features=1,
        labels=list(config.phonemes),
        vocabulary=list(config.letters),
        seq2seq={
            "encoder_hidden": config.encoder_hidden,
            "encoder_layers": config.encoder_layers,
            "memory": config.memory,
            "embedding": config.embedding,
            "attention": "multiplicative",
            "pad": PAD,
            "start": START,
            "end": END,
            "graphs": {"encoder": contract.ENCODER_FILE, "decoder_step": contract.DECODER_FILE},
        },
    )


def is_seq2seq_run(run_dir: Path) -> bool:
    return checkpoint_kind(run_dir) == SEQ2SEQ


def parity_words(payload: dict, limit: int = PARITY_WORDS) -> Lexicon:
    """The first `limit` test words of the run's own split (rebuilt from its data reference)."""
    reference = payload["data"]
    data, _ = load_g2p(reference["dataset"], reference["seed"], reference.get("limit"))
    return dict(list(data.test.items())[:limit])


def export_seq2seq(
    run_dir: Path, repository: Path, name: str | None = None, version: int | None = None, force: bool = False
) -> tuple[Path, ModelInfo]:
    """Build, check and write one seq2seq run as a version of `repository`: encoder.onnx,
    decoder_step.onnx and model.json."""
    run_dir = Path(run_dir)
    repository, name, version = claim_version(run_dir, repository, name, version, force)
    payload = torch.load(run_dir / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
    model = from_payload(payload)
    info = seq2seq_info(model, name, version)
    encoder, decoder = build_encoder(model, info), build_decoder_step(model, info)
    session = OnnxSeq2Seq(encoder.SerializeToString(), decoder.SerializeToString(), info)
    info.parity = checked_parity(
        run_dir,
        name,
        lambda: parity_words(payload),
        lambda words: check_seq2seq_parity(model, session, words),
    )
    info.test_metrics = read_metrics(run_dir).get("test", {})
    for graph in (encoder, decoder):
        set_metadata(graph, info)
    files = repo.VersionFiles(None, info, {contract.ENCODER_FILE: encoder, contract.DECODER_FILE: decoder})
    return repo.write_versions(repository, [files], force=force)[0]
