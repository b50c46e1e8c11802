"""One onnxruntime session per served model version, on the CPU or the CUDA execution provider, and the
declaration (seqserve/declaration.py) that says which of its inputs and outputs are state.

Every graph is served through its declaration: a `declaration.json` beside it, the one the contract
derives from model.json for seqserve's own exports, or the one inferred from the graph's names. At load
the declaration is checked against the graph and probed: two different rows run together must equal the
two run alone (to the declaration's tolerance); a graph that fails, or cannot batch, runs one row per call
and says so (`batch_note`).

`run` is called from the batcher's executor thread: onnxruntime releases the GIL while it computes, so the
event loop keeps serving while a batch runs.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnxruntime as ort

from seqserve import declaration as declarations
from seqserve.contract import (
    DECLARED,
    SEQ2SEQ,
    ContractError,
    ModelInfo,
    declaration_for,
)
from seqserve.declaration import Declaration, GraphTensor
from seqserve.service.engine import layout

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


def graph_tensors(tensors: list) -> list[GraphTensor]:  # onnxruntime's NodeArg
    return [GraphTensor(t.name, declarations.ORT_TYPES.get(t.type, t.type), tuple(t.shape)) for t in tensors]


class ModelRuntime:
    """A loaded version: its metadata, its session, its declaration, and the zero state rows new streams
    start from. A state row is the state tensor less its batch axis; a stream input's row is
    [steps, *step_shape] (a frame model's: one frame, [*step_shape])."""

    def __init__(
        self, info: ModelInfo, model_path: Path, device: str, threads: int, declared: dict | None = None
    ) -> None:
        self.info = info
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.session = ort.InferenceSession(str(model_path), options, providers=providers_for(device))
        self.provider = self.session.get_providers()[0]
        if info.task != DECLARED:
            written = declaration_for(info, model_path.name)
            self._check_signature(model_path, written)
            declared = written if declared is None else declared
        graph_in, graph_out = (
            graph_tensors(self.session.get_inputs()),
            graph_tensors(self.session.get_outputs()),
        )
        # A seq2seq decoder's memory is as long as each word: its contract-made declaration leaves that free.
        self.declaration: Declaration = declarations.resolve(
            declared, graph_in, graph_out, str(model_path), free_frame_dims=info.task == SEQ2SEQ
        )
        if info.task == DECLARED and self.declaration.rendering != "tensors":
            raise declarations.DeclarationError(
                f"{model_path}: rendering {self.declaration.rendering!r} is for seqserve's own exports, "
                "whose model.json says what their outputs mean; a declared graph answers named tensors "
                "(declare labels on an output to have its class scores rendered as labels too)"
            )
        d = self.declaration
        self.state_names = tuple(s.input for s in d.states)
        self.input_names = tuple(i.name for i in d.inputs)
        self.answer_names = tuple(o.name for o in d.outputs)
        self.output_names = [*self.answer_names, *(s.output for s in d.states)]
        lengths = {t.name: t for t in graph_in}.get(d.lengths) if d.lengths else None
        self.lengths_dtype = None if lengths is None else np.dtype(lengths.dtype)
        self._lengths_name = d.lengths if lengths is not None else None
        self._lengths_int32 = self.lengths_dtype == np.int32  # the batcher's lengths are int32
        self._answers = len(self.answer_names)
        # One row per state tensor, shared read-only by every new stream.
        self.zero_state: tuple[np.ndarray, ...] = tuple(s.zero_row(model_path.parent) for s in d.states)
        self.state_nbytes = sum(s.nbytes for s in self.zero_state)
        carries = tuple(i.zero_carry() for i in d.inputs)
        self.zero_carry = carries if any(c is not None for c in carries) else None
        self._constant_feeds: dict[tuple, dict[str, np.ndarray]] = {}
        self.batch_note = "" if d.batchable else "the graph's batch axis is fixed at 1"

    def _check_signature(self, model_path: Path, written: dict) -> None:
        """The graph has the names seqserve's exporter writes for its task (`written`, the contract's
        declaration of it)."""
        got_in = tuple(i.name for i in self.session.get_inputs())
        got_out = tuple(o.name for o in self.session.get_outputs())
        want_in = (
            *(i["name"] for i in written["inputs"]),
            *(s["input"] for s in written.get("states", ())),
            *([written["lengths"]] if written.get("lengths") else []),
        )
        want_out = (
            *(o["name"] for o in written["outputs"]),
            *(s["output"] for s in written.get("states", ())),
        )
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

    def constants(self, key: tuple) -> dict[str, np.ndarray]:
        """The constant inputs of a call whose streams chose `key` (Declaration.constant_key)."""
        feeds = self._constant_feeds.get(key)
        if feeds is None:
            constants = self.declaration.constants
            feeds = {c.name: c.value(choice) for c, choice in zip(constants, key, strict=True)}
            self._constant_feeds[key] = feeds
        return feeds

    def run(
        self,
        inputs: tuple[np.ndarray, ...],
        states: tuple[np.ndarray, ...],
        lengths: np.ndarray | None = None,
        key: tuple = (),
    ) -> tuple[dict[str, np.ndarray], tuple[np.ndarray, ...]]:
        """One call: stream inputs and states in the graph's layout (batch and time on their declared
        axes), `lengths` [B] when the graph takes them, `key` the rows' constants -> the answer outputs by
        name, and the new states."""
        # Plain loops and no dtype comparison: a lone stream's every chunk passes here.
        feeds = {}
        for name, value in zip(self.input_names, inputs, strict=False):
            feeds[name] = value
        for name, value in zip(self.state_names, states, strict=False):
            feeds[name] = value
        if self._lengths_name is not None:
            feeds[self._lengths_name] = lengths if self._lengths_int32 else lengths.astype(self.lengths_dtype)
        if key:
            feeds.update(self.constants(key))
        results = self.session.run(self.output_names, feeds)
        answers = self._answers
        if answers == 1:
            return {self.answer_names[0]: results[0]}, tuple(results[1:])
        return dict(zip(self.answer_names, results[:answers], strict=False)), tuple(results[answers:])

    def probe(self) -> None:
        """Two different rows run together must equal each run alone; if not (or the graph cannot run
        them together at all), this version runs one row per call from now on and says why."""
        try:
            mismatch = self._probe_mismatch()
        except Exception as error:  # noqa: BLE001 - any failure to batch means: do not batch
            mismatch = f"a call of 2 rows failed ({type(error).__name__}: {str(error)[:200]})"
        if mismatch:
            self.declaration = replace(self.declaration, batchable=False)
            self.batch_note = f"failed the batching probe: {mismatch}"
            log.warning("%s:%d runs one row per call: %s", self.info.name, self.info.version, self.batch_note)

    def _probe_mismatch(self) -> str:
        d = self.declaration
        rng = np.random.default_rng(0)
        steps = [3, 5] if self.lengths_dtype is not None else [4, 4]
        rows = [
            (tuple(_random(rng, (n, *i.step_shape) if i.time_axis is not None else i.step_shape, i.dtype)
                   for i in d.inputs),
             tuple(np.asarray(z + _random(rng, z.shape, z.dtype), dtype=z.dtype) for z in self.zero_state))
            for n in steps
        ]  # fmt: skip
        key = d.constant_key({})
        axes = tuple(s.batch_axis for s in d.states)
        alone = []
        for (inputs, states), n in zip(rows, steps, strict=True):
            feeds = tuple(layout.one_input(spec, x) for spec, x in zip(d.inputs, inputs, strict=True))
            lengths = np.array([n], np.int32)
            outputs, new_states = self.run(feeds, layout.one_state(states, axes), lengths, key)
            alone.append(({k: np.take(v, 0, _batch_axis(d, k)) for k, v in outputs.items()},
                          layout.row_states(new_states, axes, 0)))  # fmt: skip
        feeds = tuple(
            layout.batch_input(spec, [row[0][k] for row in rows], max(steps))
            for k, spec in enumerate(d.inputs)
        )
        states = layout.stack_states([row[1] for row in rows], axes)
        outputs, new_states = self.run(feeds, states, np.array(steps, np.int32), key)
        for index, (want_outputs, want_states) in enumerate(alone):
            for name, want in want_outputs.items():
                got = np.take(outputs[name], index, _batch_axis(d, name))
                if got.shape != want.shape:
                    got, want = _valid_steps(d, name, got, want)
                if not _close(got, want, d.tolerance):
                    return f"output {name} of row {index} differs in a batch of 2 from the row alone"
            for spec, got, want in zip(
                d.states, layout.row_states(new_states, axes, index), want_states, strict=True
            ):
                if not _close(got, want, d.tolerance):
                    return f"state {spec.input} of row {index} differs in a batch of 2 from the row alone"
        return ""


def _random(rng: np.random.Generator, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    if np.issubdtype(np.dtype(dtype), np.floating):
        return rng.standard_normal(shape).astype(dtype)
    return rng.integers(0, 2, shape).astype(dtype)


def _batch_axis(declaration: Declaration, output: str) -> int:
    return next(o.batch_axis for o in declaration.outputs if o.name == output)


def _valid_steps(declaration: Declaration, output: str, got: np.ndarray, want: np.ndarray) -> tuple:
    """A padded row's output cut to the steps the row alone had, along the output's time axis."""
    spec = next(o for o in declaration.outputs if o.name == output)
    if spec.time_axis is None:
        return got, want
    axis = spec.time_axis - (spec.time_axis > spec.batch_axis)
    n = want.shape[axis]
    return np.take(got, np.arange(n), axis), want


def _close(got: np.ndarray, want: np.ndarray, tolerance: float) -> bool:
    if got.shape != want.shape:
        return False
    if np.issubdtype(got.dtype, np.floating):
        return bool(np.allclose(got, want, rtol=0.0, atol=tolerance))
    return bool(np.array_equal(got, want))
