"""The named-tensors kind: any declared graph's answer is its outputs, each row's slice by name, sliced to
the row's valid steps along an output's time axis. A frame model's chunk of n frames is answered with
each output stacked over the frames (a new leading axis of n).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from seqserve.declaration import Declaration, StreamInputDecl
from seqserve.service.engine.errors import InvalidChunk, LimitExceeded
from seqserve.service.engine.kind import KeptAnswer, States


@dataclass(slots=True)
class TensorAnswer:
    tensors: dict[str, np.ndarray]  # the row's outputs, batch axis removed
    states: States


class Tensors:
    name = "tensors"
    answers_every_step = True

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

    def answer_one(self, outputs: dict[str, np.ndarray], states: States) -> TensorAnswer:
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
            tensors = {}
            for name, axis, time_axis in self._outputs:
                row = outputs[name][(slice(None),) * axis + (index, Ellipsis)]
                if time_axis is not None and self._sliced:
                    row = row[(slice(None),) * time_axis + (slice(0, steps),)]
                tensors[name] = row
            answers.append(TensorAnswer(tensors, row_states))
        return answers

    @staticmethod
    def frames(answers: list[TensorAnswer]) -> TensorAnswer:
        """A frame model's chunk: each output stacked over its frames, and the state after the last."""
        if len(answers) == 1:
            return TensorAnswer(
                {name: row[np.newaxis] for name, row in answers[0].tensors.items()}, answers[0].states
            )
        names = answers[0].tensors
        return TensorAnswer(
            {name: np.stack([a.tensors[name] for a in answers]) for name in names}, answers[-1].states
        )

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
        if (
            x.dtype != np.dtype(spec.dtype)
            or x.ndim != 1 + len(spec.sent_shape)
            or x.shape[1:] != spec.sent_shape
        ):
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
        if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
            where = np.argwhere(~np.isfinite(x))[0].tolist()
            raise InvalidChunk(
                f"{what}: input {spec.name} has {x[tuple(where)]} at {where}; expected finite values"
            )
    return tuple(out)


def _expected(spec: StreamInputDecl) -> str:
    dims = ", ".join(str(d) for d in spec.sent_shape)
    unit = "frames" if spec.time_axis is None else "steps"
    return f"{spec.name} {spec.dtype} [{unit}{', ' if dims else ''}{dims}]"
