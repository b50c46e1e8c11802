"""The named-tensors kind: any declared graph's answer is its outputs, each row's slice by name, sliced to
the row's valid steps along an output's time axis. A frame model's chunk of n frames is answered with
each output stacked over the frames (a new leading axis of n).

An output declared with labels holds class scores (logits) on its last axis: `classified` reads it as the
classifier kind's answer (the label of each step, softmax probabilities), which front doors render beside
the tensors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from seqserve.declaration import Declaration, StreamInputDecl
from seqserve.service.engine.errors import InvalidChunk, LimitExceeded
from seqserve.service.engine.kind import KeptAnswer, States
from seqserve.service.kinds.classifier import RowResult


@dataclass(slots=True)
class TensorAnswer:
    tensors: dict[str, np.ndarray]  # the row's outputs, batch axis removed
    states: States


class Tensors:
    name = "tensors"
    answers_every_step = True
    keeps_answer = False
    kept_size = 0

    def __init__(self, declaration: Declaration) -> None:
        # (name, batch axis, time axis after the batch axis is taken out, or None)
        self._outputs = [
            (
                o.name,
                o.batch_axis,
                None if o.time_axis is None else o.time_axis - (o.time_axis > o.batch_axis),
            )
            for o in declaration.outputs
        ]
        self._sliced = declaration.lengths is not None
        # (name, labels) of the outputs that hold class scores
        self.scored = tuple((o.name, list(o.labels)) for o in declaration.outputs if o.labels)
        self._frames = declaration.frame_model

    def answer_one(self, outputs: dict[str, np.ndarray], states: States) -> TensorAnswer:
        if self._frames:  # one frame's answer keeps a leading axis of 1: the chunk's frames
            return self.answer_rows(outputs, [1], [states])[0]
        # Ellipsis: a row of a [batch] output stays a 0-d array, not a numpy scalar.
        return TensorAnswer(
            {name: outputs[name][(slice(None),) * axis + (0, Ellipsis)] for name, axis, _ in self._outputs},
            states,
        )

    def answer_rows(
        self, outputs: dict[str, np.ndarray], lengths: list[int], states: list[States]
    ) -> list[TensorAnswer]:
        answers = []
        for index, (steps, row_states) in enumerate(zip(lengths, states, strict=True)):
            pick = index if not self._frames else slice(index, index + 1)
            tensors = {}
            for name, axis, time_axis in self._outputs:
                row = outputs[name][(slice(None),) * axis + (pick, Ellipsis)]
                if self._frames and axis:  # the frame axis first, as a chunk's frames are stacked
                    row = np.moveaxis(row, axis, 0)
                elif time_axis is not None and self._sliced:
                    row = row[(slice(None),) * time_axis + (slice(0, steps),)]
                tensors[name] = row
            answers.append(TensorAnswer(tensors, row_states))
        return answers

    @staticmethod
    def frames(answers: list[TensorAnswer]) -> TensorAnswer:
        """A frame model's chunk of several frames: each output's frames one after another, and the state
        after the last (each frame's answer already has its leading axis of 1)."""
        names = answers[0].tensors
        return TensorAnswer(
            {name: np.concatenate([a.tensors[name] for a in answers]) for name in names}, answers[-1].states
        )

    @staticmethod
    def classified(answer: TensorAnswer, name: str) -> RowResult:
        """Output `name`'s class scores as the classifier's answer: one label per step ([steps, classes],
        a frame model's [frames, classes]), or one ([classes])."""
        logits = answer.tensors[name]
        logits = logits.reshape(1, -1) if logits.ndim < 2 else logits.reshape(-1, logits.shape[-1])
        return RowResult(logits.argmax(axis=-1), None, answer.states, logits)

    def kept_answer(self, answer: TensorAnswer) -> KeptAnswer:
        raise NotImplementedError("named tensors are answered with every chunk; a checkpoint keeps none")

    def restored_answer(self, kept: KeptAnswer, states: States) -> TensorAnswer:
        raise NotImplementedError("named tensors are answered with every chunk; a checkpoint keeps none")


def check_inputs(
    declaration: Declaration, arrays: dict[str, np.ndarray], model: str, what: str, max_steps: int | None
) -> tuple[np.ndarray, ...]:
    """A chunk's named inputs in the declaration's order, each checked: every stream input given once,
    its dtype, shape [steps, *one step] with the same steps for all, finite values."""
    names = [spec.name for spec in declaration.inputs]
    unknown = sorted(set(arrays) - set(names))
    missing = [name for name in names if name not in arrays]
    if unknown or missing:
        raise InvalidChunk(
            f"{what} has input(s) {sorted(arrays) or 'none'}; model {model} takes "
            f"{', '.join(_expected(spec) for spec in declaration.inputs)}"
        )
    out = []
    steps = None
    for spec in declaration.inputs:
        x = arrays[spec.name]
        if x.ndim == 0 or x.dtype != spec.numpy_dtype or x.shape[1:] != spec.sent_shape:
            raise InvalidChunk(
                f"{what}: input {spec.name} is {x.dtype} {list(x.shape)}; model {model} expects "
                f"{_expected(spec)}"
            )
        if steps is None:
            steps = x.shape[0]
        if x.shape[0] != steps:
            raise InvalidChunk(f"{what}: input {spec.name} has {x.shape[0]} steps, {names[0]} has {steps}")
        out.append(x)
    if not steps:
        raise InvalidChunk(f"{what} is empty (0 steps); expected at least 1")
    if max_steps is not None and steps > max_steps:
        raise LimitExceeded(f"{what} has {steps} steps, the server's limit per chunk is {max_steps}")
    for spec, x in zip(declaration.inputs, out, strict=True):
        # One reduction on the common path: a sum is finite when every value is (unless finite values
        # overflow it, and then the exact check decides).
        if x.dtype.kind == "f" and not (math.isfinite(np.add.reduce(x, axis=None)) or np.isfinite(x).all()):
            where = np.argwhere(~np.isfinite(x))[0].tolist()
            raise InvalidChunk(
                f"{what}: input {spec.name} has {x[tuple(where)]} at {where}; expected finite values"
            )
    return tuple(out)


def _expected(spec: StreamInputDecl) -> str:
    dims = ", ".join(str(d) for d in spec.sent_shape)
    unit = "frames" if spec.time_axis is None else "steps"
    return f"{spec.name} {spec.dtype} [{unit}{', ' if dims else ''}{dims}]"
