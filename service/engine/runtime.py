"""One onnxruntime session per served model version, on the CPU or the CUDA execution provider.

`run` is called from the batcher's executor thread: onnxruntime releases the GIL while it computes, so the
event loop keeps serving while a batch runs.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort

from seqserve.contract import (
    INPUT_LENGTHS,
    ContractError,
    ModelInfo,
    input_names,
    output_names,
    sequence_input,
    state_inputs,
)

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


@functools.cache
def _warn_no_cuda() -> None:
    """Once per process, not once per model version: it is one condition."""
    log.warning("--device cuda asked for, but onnxruntime has no %s here: serving on %s", CUDA, CPU)


def providers_for(device: str) -> list[str]:
    """The providers to ask for; CUDA asked for but absent falls back to CPU with a warning."""
    if device != "cuda":
        return [CPU]
    if CUDA in ort.get_available_providers():
        return [CUDA, CPU]
    _warn_no_cuda()
    return [CPU]


class ModelRuntime:
    """A loaded version: its contract metadata, its session, and zero state rows to start streams from."""

    def __init__(self, info: ModelInfo, model_path: Path, device: str, threads: int) -> None:
        self.info = info
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.session = ort.InferenceSession(str(model_path), options, providers=providers_for(device))
        self.provider = self.session.get_providers()[0]
        self._check_signature(model_path)
        self.state_names = state_inputs(info.cell)
        self.sequence_input = sequence_input(info.task)  # x, or a language model's tokens
        self.output_names = list(output_names(info.cell))
        # One [layers * directions, hidden] row per state tensor, shared read-only by every new stream.
        rows, _, hidden = info.state_shape(1)
        self.zero_state: tuple[np.ndarray, ...] = tuple(
            np.zeros((rows, hidden), dtype=np.float32) for _ in self.state_names
        )
        for row in self.zero_state:
            row.flags.writeable = False
        self.state_nbytes = sum(s.nbytes for s in self.zero_state)

    def _check_signature(self, model_path: Path) -> None:
        got_in = tuple(i.name for i in self.session.get_inputs())
        got_out = tuple(o.name for o in self.session.get_outputs())
        want_in, want_out = input_names(self.info.cell, self.info.task), output_names(self.info.cell)
        if sorted(got_in) != sorted(want_in) or sorted(got_out) != sorted(want_out):
            raise ContractError(
                f"{model_path}: inputs {got_in} / outputs {got_out}, the contract for a {self.info.cell} "
                f"model expects {want_in} / {want_out}"
            )
        props = self.session.get_modelmeta().custom_metadata_map
        if props:
            embedded = ModelInfo.from_metadata_props(props, source=str(model_path))
            keys = (
                "name",
                "task",
                "cell",
                "features",
                "labels",
                "bidirectional",
                "hidden",
                "layers",
                "vocabulary",
            )
            for key in keys:
                if getattr(embedded, key) != getattr(self.info, key):
                    raise ContractError(
                        f"{model_path}: metadata {key}={getattr(embedded, key)!r} disagrees with "
                        f"model.json {key}={getattr(self.info, key)!r}"
                    )

    def run(
        self, x: np.ndarray, states: tuple[np.ndarray, ...], lengths: np.ndarray
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
        """x [B, T, F] float32 (a language model: int64 tokens [B, T]), states each [rows, B, hidden],
        lengths [B] int32 -> logits, new states."""
        feeds = {
            self.sequence_input: x,
            INPUT_LENGTHS: lengths,
            **dict(zip(self.state_names, states, strict=True)),
        }
        logits, *new_states = self.session.run(self.output_names, feeds)
        return logits, tuple(new_states)
