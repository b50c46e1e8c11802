"""Triton Python-backend model: onnxruntime on seqserve's exported model.onnx, state kept per sequence.

What a Triton user without the onnxruntime backend writes, given Triton's strongest fair setup for
streaming (config.pbtxt beside this file's version folder): `sequence_batching` with the `oldest`
strategy, so steps of different sequences arrive here together in one `execute`, and the control inputs
START / END / READY / CORRID. The recurrent state lives in this process keyed by correlation id (the
Python backend of Triton 2.x in nvidia-pytriton 0.7.0 has no implicit state). One onnxruntime call per
`execute`, rows padded to the longest chunk and told apart by `lengths`, as the model contract allows.
"""

from __future__ import annotations

import os
import sys

# The backend's stub runs its own interpreter without the caller's environment: bench/triton_peer.py
# writes the folders that hold numpy (<2: the stub reads numpy 1's arrays) and onnxruntime beside this file.
with open(os.path.join(os.path.dirname(__file__), "site_packages.txt")) as _site:
    sys.path[:0] = _site.read().split()

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(os.environ.get("SEQSERVE_TRITON_ORT_THREADS", "1"))
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        inputs = {i.name: i for i in self.session.get_inputs()}
        self.state_names = [name for name in ("h0", "c0") if name in inputs]
        self.output_names = ["logits", *(name.replace("0", "n") for name in self.state_names)]
        layers, _, hidden = inputs["h0"].shape
        self.zero = tuple(np.zeros((layers, hidden), np.float32) for _ in self.state_names)
        self.states: dict[int, tuple[np.ndarray, ...]] = {}

    def _control(self, request, name: str) -> int:
        return int(pb_utils.get_input_tensor_by_name(request, name).as_numpy().reshape(-1)[0])

    def execute(self, requests: list) -> list:
        rows = []
        for request in requests:
            if not self._control(request, "READY"):
                continue
            corrid = self._control(request, "CORRID")
            if self._control(request, "START") or corrid not in self.states:
                self.states[corrid] = self.zero
            x = pb_utils.get_input_tensor_by_name(request, "x").as_numpy()[0]  # [steps, features]
            rows.append((request, corrid, x, bool(self._control(request, "END"))))
        if not rows:
            return [pb_utils.InferenceResponse(output_tensors=[]) for _ in requests]
        lengths = np.array([x.shape[0] for _, _, x, _ in rows], np.int32)
        x = np.zeros((len(rows), int(lengths.max()), rows[0][2].shape[1]), np.float32)
        for index, (_, _, row, _) in enumerate(rows):
            x[index, : row.shape[0]] = row
        feeds = {"x": x, "lengths": lengths}
        for k, name in enumerate(self.state_names):
            feeds[name] = np.stack([self.states[corrid][k] for _, corrid, _, _ in rows], axis=1)
        logits, *new_states = self.session.run(self.output_names, feeds)
        scores = np.exp(logits - logits.max(axis=-1, keepdims=True))
        scores /= scores.sum(axis=-1, keepdims=True)
        labels = logits.argmax(axis=-1)
        answers = {}
        for index, (request, corrid, _, end) in enumerate(rows):
            if end:
                self.states.pop(corrid, None)
            else:
                self.states[corrid] = tuple(state[:, index].copy() for state in new_states)
            answers[id(request)] = pb_utils.InferenceResponse(
                output_tensors=[
                    # Each request is a batch of 1: its outputs keep that leading dimension.
                    pb_utils.Tensor("logits", logits[index : index + 1].copy()),
                    pb_utils.Tensor("label", labels[index : index + 1, np.newaxis].astype(np.int64)),
                    pb_utils.Tensor("scores", scores[index : index + 1].copy()),
                ]
            )
        return [answers.get(id(r), pb_utils.InferenceResponse(output_tensors=[])) for r in requests]
