"""A seq2seq decoder step built by onnx.helper (export/seq2seq_graph.py, what seqserve ships) against the
same step traced by torch.onnx.export (dynamo=False): both checked against PyTorch on the same rows, then
timed alternately in one process (onnxruntime, 1 intra-op thread, best of --repeats) at several row counts.

    python -m bench.experiments.seq2seq_step_export runs/g2p-gru --rows 1,64,256 --letters 10
"""

from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from seqserve import contract
from seqserve.export.seq2seq_graph import build_decoder_step
from seqserve.export.seq2seq_job import seq2seq_info
from seqserve.training.loop import CHECKPOINT_FILE
from seqserve.training.seq2seq import Seq2Seq, from_payload


class _Step(torch.nn.Module):
    """Seq2Seq.step with the contract's flat inputs and outputs, for tracing."""

    def __init__(self, model: Seq2Seq) -> None:
        super().__init__()
        self.model = model

    def forward(self, previous, *rest):  # type: ignore[no-untyped-def]
        *state, memory, lengths = rest
        log_probs, new, attention = self.model.step(previous, tuple(state), memory, lengths)
        return (log_probs, *new, attention)


def traced_step(model: Seq2Seq) -> bytes:
    names = contract.state_inputs(model.config.cell)
    rows, letters = 3, 5
    example = (
        torch.zeros(rows, dtype=torch.long),
        *(torch.zeros(1, rows, model.config.hidden) for _ in names),
        torch.zeros(rows, letters, model.config.memory),
        torch.full((rows,), letters, dtype=torch.int32),
    )
    finals = contract.state_outputs(model.config.cell)
    inputs = [contract.INPUT_PREVIOUS, *names, contract.INPUT_MEMORY, contract.INPUT_LENGTHS]
    outputs = [contract.OUTPUT_LOG_PROBS, *finals, contract.OUTPUT_ATTENTION]
    axes = {name: {0: "batch"} for name in inputs + outputs}
    for name in (*names, *finals):
        axes[name] = {1: "batch"}
    axes[contract.INPUT_MEMORY] = {0: "batch", 1: "time"}
    axes[contract.OUTPUT_ATTENTION] = {0: "batch", 1: "time"}
    buffer = io.BytesIO()
    torch.onnx.export(
        _Step(model).eval(), example, buffer, input_names=inputs, output_names=outputs, dynamic_axes=axes,
        opset_version=contract.DEFAULT_OPSET, dynamo=False,
    )  # fmt: skip
    return buffer.getvalue()


def _session(data: bytes) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def _feeds(model: Seq2Seq, rows: int, letters: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    feeds = {
        contract.INPUT_PREVIOUS: rng.integers(0, len(model.config.phonemes), rows).astype(np.int64),
        contract.INPUT_MEMORY: rng.normal(0, 0.3, (rows, letters, model.config.memory)).astype(np.float32),
        contract.INPUT_LENGTHS: rng.integers(1, letters + 1, rows).astype(np.int32),
    }
    for name in contract.state_inputs(model.config.cell):
        feeds[name] = np.tanh(rng.normal(0, 1, (1, rows, model.config.hidden))).astype(np.float32)
    return feeds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--rows", default="1,64,256")
    parser.add_argument("--letters", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = from_payload(torch.load(args.run / CHECKPOINT_FILE, map_location="cpu", weights_only=True))
    built = build_decoder_step(model, seq2seq_info(model, "bench", 1)).SerializeToString()
    sessions = {"onnx.helper": _session(built), "torch.onnx.export": _session(traced_step(model))}
    rng = np.random.default_rng(0)
    report: dict = {"letters": args.letters, "cell": model.config.cell, "rows": {}}
    for rows in [int(r) for r in args.rows.split(",")]:
        feeds = _feeds(model, rows, args.letters, rng)
        names = [contract.INPUT_PREVIOUS, *contract.state_inputs(model.config.cell)]
        names += [contract.INPUT_MEMORY, contract.INPUT_LENGTHS]
        with torch.no_grad():
            want = _Step(model).eval()(*(torch.from_numpy(feeds[n]) for n in names))
        entry = {}
        for label, session in sessions.items():
            got = session.run(None, feeds)
            diff = max(float(np.abs(g - w.numpy()).max()) for g, w in zip(got, want, strict=True))
            entry[label] = {"max_abs_diff_vs_pytorch": diff, "best_us": float("inf")}
        for _ in range(args.repeats):  # alternate, so drift on a shared machine hits both alike
            for label, session in sessions.items():
                started = time.perf_counter()
                session.run(None, feeds)
                entry[label]["best_us"] = min(entry[label]["best_us"], 1e6 * (time.perf_counter() - started))
        report["rows"][rows] = entry
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
