"""docs/declaration.schema.json says what seqserve/declaration.py accepts: every declaration the tests write,
the one the exporter derives for seqserve's own models, and every one `resolve` writes back (what inspect
and export_module put into a repository) validate; the wrong ones below fail both the schema and
`resolve`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from bench import declared_models as models
from seqserve import contract
from seqserve import declaration as declarations
from seqserve.export.inspect import read_graph

SCHEMA = json.loads((Path(__file__).resolve().parents[1] / "docs" / "declaration.schema.json").read_text())
VALIDATOR = Draft202012Validator(SCHEMA)


def _errors(declaration: object) -> list[str]:
    return [error.message for error in VALIDATOR.iter_errors(declaration)]


def test_the_schema_is_valid_draft_2020_12() -> None:
    Draft202012Validator.check_schema(SCHEMA)
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert set(SCHEMA["properties"]) == declarations.KNOWN_FIELDS


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("declared")
    return {
        "vad": models.vad(root / "vad"),
        "vad-one": models.vad(root / "vad-one", batch=1),
        "six": models.six_states(root / "six"),
        "frames-one": models.frame_model(root / "frames-one", batch=1),
        "frames": models.frame_model(root / "frames"),  # no declaration.json: the inferred one
    }


@pytest.mark.parametrize("model", ["vad", "vad-one", "six", "frames-one", "frames"])
def test_the_declarations_the_tests_write_and_the_resolved_ones_validate(
    folders: dict[str, Path], model: str
) -> None:
    written = declarations.read(folders[model])
    graph = read_graph(folders[model] / contract.MODEL_FILE)
    if written is None:
        written = declarations.infer(graph.inputs, graph.outputs)
    assert _errors(written) == []
    resolved = declarations.resolve(written, graph.inputs, graph.outputs).to_dict()
    assert _errors(json.loads(json.dumps(resolved))) == []


@pytest.mark.parametrize(
    ("task", "cell"), [("many_to_one", "gru"), ("many_to_many", "lstm"), ("language_model", "rnn")]
)
def test_the_exporters_declaration_of_seqserves_own_models_validates(task: str, cell: str) -> None:
    labels = ["a", "b", "c"]
    info = contract.ModelInfo(
        name="m", version=1, task=task, cell=cell, layers=2, hidden=4, bidirectional=False,
        features=1 if task == "language_model" else 12, labels=labels,
        vocabulary=labels if task == "language_model" else [],
    )  # fmt: skip
    assert _errors(contract.declaration_for(info)) == []


# The VAD graph's declaration, and mistakes in it that both the schema and `resolve` refuse.
GOOD = {
    "states": [{"input": "state", "output": "stateN"}],
    "inputs": [{"name": "input", "time_axis": None, "context": 64, "context_axis": 1}],
    "constants": [{"name": "sr", "choices": [16000, 8000]}],
}
SR = {"name": "sr", "value": 16000}


@pytest.mark.parametrize(
    "change",
    [
        {"lenghts": "lengths"},  # a field resolve does not know
        {"rendering": "scores"},
        {"inputs": []},
        {"states": {"input": "state", "output": "stateN"}},  # an object where a list goes
        {"states": [{"input": "state"}]},  # no output
        {"states": [{"input": "state", "output": "stateN", "batch_axis": "1"}]},
        {"states": [{"input": "state", "output": "stateN", "batch_axis": True}]},
        {"states": [{"input": "state", "output": "stateN", "dtype": "float"}]},
        {"states": [], "state_patterns": [{"output": "stateN"}]},  # no {input}
        {"inputs": [{"name": "input", "time_axis": None, "context": -64, "context_axis": 1}]},
        {"constants": [{"name": "sr"}]},
        {"constants": [{**SR, "choices": [16000]}]},
        {"constants": [{"name": "sr", "choices": []}]},
        {"constants": [{"name": "sr", "value": "16 kHz"}]},
        {"tolerance": "1e-6"},
        {"tolerance": -1e-6},
        {"states": [{"input": "state", "output": "stateN", "batch_axes": 1}]},  # a misspelt entry field
        {"inputs": [{"name": "input", "time_axis": None, "context": 64, "contex_axis": 1}]},
    ],
)
def test_a_wrong_declaration_fails_the_schema_and_resolve(folders: dict[str, Path], change: dict) -> None:
    graph = read_graph(folders["vad"] / contract.MODEL_FILE)
    assert _errors(GOOD) == [] and declarations.resolve(GOOD, graph.inputs, graph.outputs)
    wrong = {**GOOD, **change}
    assert _errors(wrong) != []
    with pytest.raises(declarations.DeclarationError):
        declarations.resolve(wrong, graph.inputs, graph.outputs)
