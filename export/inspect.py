"""`seqserve inspect MODEL.onnx`: what seqserve makes of a stateful ONNX graph it did not write. It prints
the graph's inputs and outputs, the declaration (seqserve/declaration.py) inferred from the graph's names
or completed from a partial one, and whether a batch of 2 different streams equals each stream run alone
(the probe the server runs at load, on the same runtime); `--write <repo>/<name>/<version>` puts the model
and that declaration into a repository (export/declared_version.py).

Where it lives: in export/, the stage that puts versions into a repository, but it imports onnxruntime,
numpy and the serving runtime only, never torch or onnx. The serving image has all three, so a user can
run `seqserve inspect` where the model will be served (`docker run --entrypoint seqserve seqserve:cpu
inspect ...`) as well as on the machine that made it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnxruntime as ort

from seqserve import contract
from seqserve import declaration as declarations
from seqserve.declaration import Declaration, DeclarationError, GraphTensor
from seqserve.export.declared_version import VersionTarget, write_version
from seqserve.export.errors import ExportInputError
from seqserve.service.engine.runtime import CPU, ModelRuntime, graph_tensors

# The name a model is probed under when it is not being written anywhere (only log lines show it).
PROBE_NAME = "inspect"


@dataclass(frozen=True)
class Graph:
    """A graph's inputs and outputs as onnxruntime reports them."""

    inputs: list[GraphTensor]
    outputs: list[GraphTensor]


@dataclass(frozen=True)
class Inspection:
    model: Path
    graph: Graph
    declaration: Declaration
    declared: tuple[str, ...]  # the top-level fields the user's declaration gave; the rest were inferred
    batched: bool
    batch_note: str  # why it runs one row per call ("" when batched)

    def to_json(self) -> str:
        """The declaration.json to write: every field explicit, as the server resolved it."""
        return self.declaration.to_json()


def read_graph(model: Path) -> Graph:
    try:
        session = ort.InferenceSession(str(model), providers=[CPU])
    except Exception as error:  # noqa: BLE001 - onnxruntime raises its own types for every bad file
        raise ExportInputError(f"{model}: onnxruntime cannot load it ({str(error)[:300]})") from error
    return Graph(graph_tensors(session.get_inputs()), graph_tensors(session.get_outputs()))


def complete(partial: Any, graph: Graph, source: str = declarations.DECLARATION_FILE) -> dict[str, Any] | Any:
    """A declaration for `graph`: `partial` (a declaration.json object, possibly with only the lines the
    inference asked for) with the top-level fields it leaves out inferred from the graph's names: states
    paired by name, stream inputs and lengths from the inputs it does not name. What it gives is kept
    as given; None infers the whole declaration. `resolve` then checks the result against the graph."""
    if partial is None:
        return declarations.infer(graph.inputs, graph.outputs, source)
    if not isinstance(partial, dict):
        return partial  # resolve names what is wrong with it
    has_states = "states" in partial or "state_patterns" in partial
    if has_states and "inputs" in partial:
        return partial
    fixed = {c.get("name") for c in _items(partial, "constants")} | {partial.get("lengths")}
    if not has_states:
        # The file's stream inputs stay in view: the inference needs one, and will take it as one.
        guess = declarations.infer([t for t in graph.inputs if t.name not in fixed], graph.outputs, source)
        inputs = {i.get("name") for i in _items(partial, "inputs")}
        completed = {**partial, "states": [s for s in guess["states"] if s["input"] not in inputs]}
        if "inputs" not in partial:
            completed["inputs"] = guess["inputs"]
        if "lengths" not in partial and "lengths" in guess:
            completed["lengths"] = guess["lengths"]
        return completed
    claimed = fixed | _state_inputs(partial, graph)
    rest = [t for t in graph.inputs if t.name not in claimed]
    if any(not t.shape for t in rest):
        # A 0-d input left over is a constant nobody gave a value: the inference raises with the line to add.
        declarations.infer(rest, graph.outputs, source)
    return {**partial, "inputs": [{"name": t.name, **_batch_axis(t)} for t in rest]}


def _items(data: dict[str, Any], key: str) -> list[dict[str, Any]]:
    value = data.get(key)
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _state_inputs(partial: dict[str, Any], graph: Graph) -> set[str]:
    """The graph inputs the file's states name, and those its state patterns pair with an output."""
    names = {s.get("input") for s in _items(partial, "states")}
    outputs = {t.name for t in graph.outputs}
    for pattern in _items(partial, "state_patterns"):
        template = pattern.get("output")
        if isinstance(template, str) and "{input}" in template:
            names |= {t.name for t in graph.inputs if template.format(input=t.name) in outputs}
    return names


def _batch_axis(tensor: GraphTensor) -> dict[str, int]:
    """The one dim named like batch, if there is one; else `resolve` takes axis 0 and checks it."""
    named = [axis for axis, dim in enumerate(tensor.shape) if declarations.is_batch_dim(dim)]
    return {"batch_axis": named[0]} if len(named) == 1 else {}


def inspect_graph(
    model: Path, partial: Any = None, name: str = PROBE_NAME, graph: Graph | None = None
) -> Inspection:
    """Complete and resolve the declaration of `model`, load it on the runtime the server uses and probe
    it as the server does at load. Raises DeclarationError naming what is missing or wrong."""
    model = Path(model)
    graph = read_graph(model) if graph is None else graph
    data = complete(partial, graph, str(model))
    runtime = ModelRuntime(contract.declared(name, 1), model, "cpu", 1, data)
    if runtime.declaration.batchable:
        runtime.probe()
    given = tuple(key for key in data if isinstance(partial, dict) and key in partial)
    return Inspection(
        model, graph, runtime.declaration, given, runtime.declaration.batchable, runtime.batch_note
    )


# --- The command -------------------------------------------------------------------------------------


def inspect_command(model: Path, declaration: Path | None, write: Path | None, force: bool) -> None:
    import typer

    from seqserve.console import fail

    target = None
    try:
        target = VersionTarget.parse(write) if write is not None else None
        partial, source = _partial(model, declaration)
        graph = read_graph(model)
    except ExportInputError as error:
        fail(str(error))
    typer.echo(_graph_text(model, graph))
    if source is not None:
        typer.echo(f"declaration: {source}")
    try:
        inspection = inspect_graph(model, partial, target.name if target else PROBE_NAME, graph)
    except DeclarationError as error:
        fail(str(error))
    typer.echo(describe(inspection))
    typer.echo(f"\ndeclaration.json:\n{inspection.to_json()}")
    if target is None:
        return
    try:
        folder = write_version(target, model, inspection.declaration.to_dict(), force)
    except ExportInputError as error:
        fail(str(error))
    typer.echo(
        f"\nwrote {folder}/ ({contract.MODEL_FILE}, {declarations.DECLARATION_FILE}); serve it with: "
        f"seqserve serve --repository {target.repository}"
    )


def _partial(model: Path, declaration: Path | None) -> tuple[Any, Path | None]:
    """The declaration given with --declaration, else the declaration.json beside the model (what the
    server would read), else None."""
    path = declaration if declaration is not None else Path(model).parent / declarations.DECLARATION_FILE
    if declaration is None and not path.is_file():
        return None, None
    try:
        return json.loads(path.read_text()), path
    except (OSError, json.JSONDecodeError) as error:
        raise ExportInputError(f"{path}: cannot read a JSON declaration ({error})") from error


def _dims(shape: tuple) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _graph_text(model: Path, graph: Graph) -> str:
    width = max(len(t.name) for t in (*graph.inputs, *graph.outputs))
    lines = [str(model), "graph inputs:"]
    lines += [f"  {t.name:<{width}}  {t.dtype} {_dims(t.shape)}" for t in graph.inputs]
    lines += ["graph outputs:"]
    lines += [f"  {t.name:<{width}}  {t.dtype} {_dims(t.shape)}" for t in graph.outputs]
    return "\n".join(lines)


def describe(inspection: Inspection) -> str:
    """What seqserve makes of the graph, section by section, each marked declared or inferred."""
    d = inspection.declaration

    def origin(*fields: str) -> str:
        return "declared" if any(f in inspection.declared for f in fields) else "inferred from the names"

    lines = [f"\nstates ({len(d.states)}, {origin('states', 'state_patterns')}):"]
    for s in d.states:
        start = "zeros" if s.initial == "zeros" else s.initial
        lines.append(
            f"  {s.input} -> {s.output}  {s.dtype}, batch axis {s.batch_axis}, row {list(s.row_shape)}, "
            f"starts at {start}"
        )
    lines.append(f"stream inputs ({origin('inputs')}):")
    for i in d.inputs:
        unit = "frames" if i.time_axis is None else f"steps along axis {i.time_axis}"
        carry = (
            f"; the last {i.context} items of the previous chunk carried along axis {i.context_axis}"
            if i.context
            else ""
        )
        sent = ["frames" if i.time_axis is None else "steps", *map(str, i.sent_shape)]
        lines.append(
            f"  {i.name}  {i.dtype}, batch axis {i.batch_axis}, {unit}{carry}; a client sends "
            f"[{', '.join(sent)}]"
        )
    lines.append("constants:" if d.constants else "constants: none")
    for c in d.constants:
        how = "fixed at" if len(c.choices) == 1 else "chosen per stream from"
        lines.append(
            f"  {c.name}  {c.dtype} {list(c.shape)}, {how} {', '.join(map(str, c.choices))}"
            + ("" if len(c.choices) == 1 else f" (default {c.choices[0]})")
        )
    lines.append(
        f"lengths: {d.lengths} ({origin('lengths')})"
        if d.lengths
        else "lengths: none (only chunks of equal length share a call)"
    )
    lines.append(
        "outputs (declared):"
        if "outputs" in inspection.declared
        else "outputs (every one that is not a state):"
    )
    for o in d.outputs:
        steps = "" if o.time_axis is None else f", time axis {o.time_axis}"
        labels = f", labels {', '.join(o.labels)}" if o.labels else ""
        lines.append(f"  {o.name}  {o.dtype}, batch axis {o.batch_axis}{steps}{labels}")
    lines.append(
        "batching: a batch of 2 different streams equals each stream alone: streams share calls"
        if inspection.batched
        else f"batching: one row per call: {inspection.batch_note}"
    )
    return "\n".join(lines)
