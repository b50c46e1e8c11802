"""Your own PyTorch module, served with its state on the server: `export_module` exports an `nn.Module`
whose forward takes and returns its recurrent state, writes the declaration beside the graph, and proves
at export that the graph run in random chunks, the state carried from call to call, equals PyTorch over
the whole sequence (to `contract.PARITY_TOLERANCE`, 1e-5). A module that fails is not written.

The convention `forward` must follow:

    forward(x, *states) -> (output, *new_states)

- `x`: the stream's data, [batch, time, *features]: batch on axis 0, time on axis 1; float32, or int64
  token ids.
- `states`: one tensor per `StateSpec`, in the order given, each with its batch on its own axis
  (`StateSpec.batch_axis`): a `torch.nn.GRU`'s h is [layers, batch, hidden], batch_axis 1; an LSTM takes
  h and c as two states.
- `output`: [batch, time, ...], one per step (`output_time_axis=1`, the default), or [batch, ...], one
  per call (`output_time_axis=None`; the parity then checks the last chunk's output).
- `new_states`: each state after the chunk's last step, shaped like the state that came in.

The graph's tensors are named `input_name` ("x"), each state's `name`, `output_name` ("y") and
`<name>_out` for each new state; the dims "batch" and "time" are free. Exported with the TorchScript
exporter (`torch.onnx.export(..., dynamo=False)`): torch 2.13's default, dynamo, needs onnxscript, which
seqserve does not install, and emits the same ONNX RNN ops for nn.GRU / nn.LSTM here.

    from seqserve.export.stateful import StateSpec, export_module
    export_module(model, torch.zeros(1, 10, 12), [StateSpec("h", (2, 64), batch_axis=1)], "models/mine/1")
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from seqserve import contract
from seqserve.declaration import DeclarationError
from seqserve.export.declared_version import VersionTarget, write_version
from seqserve.export.errors import ExportError, ExportInputError
from seqserve.export.inspect import Inspection, inspect_graph, read_graph
from seqserve.export.parity import chunk_bounds

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StateSpec:
    """One recurrent state of the module: its graph name, one row's shape (the tensor less its batch
    axis), where the batch goes, and its dtype. Every stream starts from zeros."""

    name: str
    row_shape: tuple[int, ...]
    batch_axis: int = 0
    dtype: torch.dtype = torch.float32

    @property
    def output(self) -> str:
        return f"{self.name}_out"

    def zeros(self, batch: int) -> torch.Tensor:
        shape = list(self.row_shape)
        shape.insert(self.batch_axis, batch)
        return torch.zeros(shape, dtype=self.dtype)


@dataclass(frozen=True)
class ExportedModule:
    folder: Path
    max_abs_diff: float  # chunked ONNX against PyTorch whole, over every output step and final state
    batched: bool  # whether streams share a call (the server's load-time probe)
    batch_note: str
    declaration: dict[str, Any]


def export_module(
    module: torch.nn.Module,
    example: torch.Tensor,
    states: Sequence[StateSpec],
    out_dir: Path | str,
    *,
    input_name: str = "x",
    output_name: str = "y",
    output_time_axis: int | None = 1,
    opset: int = contract.DEFAULT_OPSET,
    sequences: int = 3,
    steps: int = 40,
    seed: int = 0,
    tolerance: float = contract.PARITY_TOLERANCE,
    force: bool = False,
) -> ExportedModule:
    """Export `module` to `out_dir` (`<repository>/<name>/<version>`) as model.onnx + declaration.json.

    `example` is an input [batch, time, *features] to trace with (any batch and time >= 2). Parity runs
    `sequences` random sequences of `steps` steps (normal values; token ids drawn from 0 to the example's
    largest), each in random chunks with the state carried, against PyTorch over the whole sequence, and
    raises ExportError without writing anything when any output step or final state differs by more than
    `tolerance`. An existing version is refused unless `force`."""
    target = VersionTarget.parse(Path(out_dir))
    if target.folder.exists() and not force:
        raise ExportInputError(f"{target.folder} exists; pass force=True to replace it")
    if example.dim() < 2 or example.shape[1] < 2:
        raise ExportInputError(f"example is {list(example.shape)}; expected [batch, time >= 2, *features]")
    module = module.eval()
    with tempfile.TemporaryDirectory(prefix="seqserve-export-") as staging:
        graph = Path(staging) / contract.MODEL_FILE
        _export(module, example, states, graph, input_name, output_name, output_time_axis, opset)
        declaration = {
            "states": [{"input": s.name, "output": s.output, "batch_axis": s.batch_axis} for s in states],
            "inputs": [{"name": input_name, "batch_axis": 0, "time_axis": 1}],
            "outputs": [{"name": output_name, "batch_axis": 0, "time_axis": output_time_axis}],
        }
        inspection = _inspected(graph, declaration, target.name, states)
        session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
        rng = np.random.default_rng(seed)
        diff = max(
            _chunked_difference(module, session, _random_sequence(example, steps, rng), states, rng,
                                input_name, output_time_axis)
            for _ in range(sequences)
        )  # fmt: skip
        if not diff <= tolerance:
            raise ExportError(
                f"{target.name}: the ONNX graph run in chunks with its state carried differs from PyTorch "
                f"over the whole sequence by {diff:.2e} (tolerance {tolerance:.0e}); not written. Does "
                "forward use the states it is given, and return every new state?"
            )
        written = inspection.declaration.to_dict()
        folder = write_version(target, graph, written, force)
    log.info("%s: parity %.2e, %s", folder, diff, "batched" if inspection.batched else inspection.batch_note)
    return ExportedModule(folder, diff, inspection.batched, inspection.batch_note, written)


def _inspected(
    graph: Path, declaration: dict[str, Any], name: str, states: Sequence[StateSpec]
) -> Inspection:
    """The exported graph against its declaration, and the server's batching probe."""
    inputs = {t.name for t in read_graph(graph).inputs}
    unused = [s.name for s in states if s.name not in inputs]
    if unused:
        raise ExportError(
            f"{name}: the exported graph has no input {', '.join(unused)}: forward never reads that state "
            "(the exporter drops inputs forward ignores); forward(x, *states) must compute from them"
        )
    try:
        return inspect_graph(graph, declaration, name)
    except DeclarationError as error:
        raise ExportError(f"{name}: the exported graph does not fit its declaration: {error}") from error


def _export(
    module: torch.nn.Module,
    example: torch.Tensor,
    states: Sequence[StateSpec],
    path: Path,
    input_name: str,
    output_name: str,
    output_time_axis: int | None,
    opset: int,
) -> None:
    batch = example.shape[0]
    dynamic = {input_name: {0: "batch", 1: "time"}}
    dynamic[output_name] = {
        0: "batch",
        **({output_time_axis: "time"} if output_time_axis is not None else {}),
    }
    for state in states:
        dynamic[state.name] = dynamic[state.output] = {state.batch_axis: "batch"}
    with warnings.catch_warnings():
        # The legacy exporter's deprecation notice, and its advice to pass h0/c0 as inputs, which we do.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*batch_size other than 1.*")
        # nn.GRU/LSTM's own shape checks, constant for a traced module; a module's own Python branches
        # still warn (and the parity below catches what they got wrong).
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning, module=r"torch\.nn\.modules\.rnn")
        torch.onnx.export(
            module,
            (example, *(state.zeros(batch) for state in states)),
            str(path),
            input_names=[input_name, *(state.name for state in states)],
            output_names=[output_name, *(state.output for state in states)],
            dynamic_axes=dynamic,
            opset_version=opset,
            dynamo=False,
        )


def _random_sequence(example: torch.Tensor, steps: int, rng: np.random.Generator) -> np.ndarray:
    shape = (1, steps, *example.shape[2:])
    dtype = torch.empty((), dtype=example.dtype).numpy().dtype
    if example.dtype.is_floating_point:
        return rng.standard_normal(shape).astype(dtype)
    return rng.integers(0, int(example.max()) + 1, shape).astype(dtype)


def _chunked_difference(
    module: torch.nn.Module,
    session: ort.InferenceSession,
    sequence: np.ndarray,
    states: Sequence[StateSpec],
    rng: np.random.Generator,
    input_name: str,
    output_time_axis: int | None,
) -> float:
    """Largest |ONNX in random chunks - PyTorch whole| over the outputs and the final states."""
    with torch.no_grad():
        want, *want_states = module(torch.from_numpy(sequence), *(s.zeros(1) for s in states))
    carried = {s.name: s.zeros(1).numpy() for s in states}
    outputs = []
    for start, end in chunk_bounds(sequence.shape[1], rng):
        got, *new_states = session.run(None, {input_name: sequence[:, start:end], **carried})
        carried = dict(zip(carried, new_states, strict=True))
        outputs.append(got)
    got = np.concatenate(outputs, axis=output_time_axis) if output_time_axis is not None else outputs[-1]
    pairs = [(got, want), *zip(carried.values(), want_states, strict=True)]
    return max(
        float(np.abs(a.astype(np.float64) - b.numpy().astype(np.float64)).max())
        if a.shape == tuple(b.shape)
        else float("inf")
        for a, b in pairs
    )
