"""docs/declared_models.md and the README's "Serve your own model" run as printed: the README's commands in a
fresh folder, the docs' declarations against the graphs they describe (and the schema), the inspect
output they show, the messages of their mistakes table, and their seqserve.v1 and tritonclient programs
against a server, answering what the per-stream onnxruntime loop answers."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from jsonschema import Draft202012Validator

from bench import declared_models as models
from seqserve import declaration as declarations
from seqserve.export.inspect import read_graph
from seqserve.service.config import ServerConfig
from seqserve.service.server.launch import ServerThread

from ..service.docs_examples import DOCS, code_blocks, run_python_example
from .named_streams import stream

DOC = "declared_models.md"
README = "../README.md"  # code_blocks reads docs/<name>
SEQSERVE = [sys.executable, "-m", "seqserve.cli"]


def _run(line: str, cwd: Path) -> subprocess.CompletedProcess:
    argv = shlex.split(line)
    argv = [*SEQSERVE, *argv[1:]] if argv[0] == "seqserve" else [sys.executable, *argv[1:]]
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_the_readmes_commands_work_as_written(tmp_path: Path) -> None:
    (script,) = [block for block in code_blocks(README, "python") if "export_module(" in block]
    (tmp_path / "export_detector.py").write_text(script)
    (onnx_lines,) = [block for block in code_blocks(README, "") if "seqserve inspect model.onnx\n" in block]
    (torch_lines,) = [block for block in code_blocks(README, "") if "python export_detector.py" in block]
    # The PyTorch module's lines first: they leave a graph, the ONNX file a newcomer has.
    for line in torch_lines.splitlines():
        if not line.startswith("seqserve serve"):
            done = _run(line, tmp_path)
            assert done.returncode == 0, (line, done.stderr)
    (tmp_path / "model.onnx").write_bytes((tmp_path / "models/detector/1/model.onnx").read_bytes())
    for line in onnx_lines.splitlines():
        if not line.startswith("seqserve serve"):
            done = _run(line, tmp_path)
            assert done.returncode == 0, (line, done.stderr)
    assert "seqserve serve --repository models" in onnx_lines and "seqserve serve --repository models" in (
        torch_lines
    )
    x = np.random.default_rng(0).standard_normal((9, 12)).astype(np.float32)
    config = ServerConfig(repository=tmp_path / "models", port=0, metrics_port=-1, grace_s=1.0)
    with ServerThread(config) as server:
        exported = stream(server.target, "detector", [{"x": x[:4]}, {"x": x[4:]}])["y"]
        inspected = stream(server.target, "my-model", [{"x": x[:2]}, {"x": x[2:]}])["y"]
    # The module's own version and the one `inspect --write` made of its graph answer alike.
    assert exported.shape == (9, 2)
    np.testing.assert_allclose(inspected, exported, rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def graphs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("doc-graphs")
    models.vad(root / "vad" / "1")
    models.six_states(root / "six" / "1")
    models.vad(root / "vad-one" / "1", batch=1)
    models.frame_model(root / "frames" / "1")
    return root


def test_the_docs_declarations_fit_their_graphs_and_the_schema(graphs: Path) -> None:
    blocks = [json.loads(block) for block in code_blocks(DOC, "json")]
    schema = json.loads((DOCS / "declaration.schema.json").read_text())
    assert len(blocks) == 3, "the detector, the six states by pattern, the graph fixed at batch 1"
    for model, block in zip(("vad", "six", "vad-one"), blocks, strict=True):
        assert list(Draft202012Validator(schema).iter_errors(block)) == []
        graph = read_graph(graphs / model / "1" / "model.onnx")
        resolved = declarations.resolve(block, graph.inputs, graph.outputs)
        # The same declaration the tests serve these graphs with.
        beside = declarations.resolve(declarations.read(graphs / model / "1"), graph.inputs, graph.outputs)
        assert resolved == beside
    assert not declarations.resolve(blocks[2], *_tensors(graphs / "vad-one")).batchable


def _tensors(folder: Path) -> tuple:
    graph = read_graph(folder / "1" / "model.onnx")
    return graph.inputs, graph.outputs


def test_the_inspect_output_shown_is_what_inspect_prints(graphs: Path, tmp_path: Path) -> None:
    shown = next(block for block in code_blocks(DOC, "text") if block.startswith("$ seqserve inspect"))
    command, *lines = shown.splitlines()
    (tmp_path / "model.onnx").write_bytes((graphs / "frames" / "1" / "model.onnx").read_bytes())
    done = _run(command.removeprefix("$ "), tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[: len(lines)] == lines


def test_the_mistakes_table_quotes_the_messages_resolve_gives(graphs: Path) -> None:
    good = json.loads(code_blocks(DOC, "json")[0])
    doc = (DOCS / DOC).read_text()
    mistakes = [
        {"outputs": [{"name": "logits"}]},
        {"states": [{"input": "state", "output": "stateN", "batch_axis": 2}]},
        {"states": [{"input": "state", "output": "stateN", "dtype": "float16"}]},
        {"states": [{"input": "state", "output": "output"}]},
        {"constants": []},
        {"constants": [{"name": "sr"}]},
        {"constants": [{"name": "sr", "value": 16000.5}]},
        {"inputs": [{"name": "input", "time_axis": None, "context": 600, "context_axis": 1}]},
        {"lenghts": "lengths"},
    ]
    for mistake in mistakes:
        with pytest.raises(declarations.DeclarationError) as refused:
            declarations.resolve({**good, **mistake}, *_tensors(graphs / "vad"))
        message = str(refused.value).removeprefix("declaration.json: ")
        assert f"`{message}`" in doc, message


@pytest.fixture(scope="module")
def vad_server(graphs: Path) -> Iterator[ServerThread]:
    config = ServerConfig(repository=graphs, port=0, metrics_port=-1, grace_s=1.0, max_delay_ms=2)
    with ServerThread(config) as server:
        yield server


def _printed(lines: list[str]) -> np.ndarray:
    """The examples print `<index> [output name] [values]` per line; the values, joined."""
    return np.concatenate([json.loads(line[line.index("[") :]) for line in lines])


@pytest.mark.parametrize(("example", "sr"), [(1, 8000), (2, 16000)])
def test_the_client_programs_stream_to_the_detector_as_the_reference_loop_does(
    vad_server: ServerThread, graphs: Path, tmp_path: Path, example: int, sr: int
) -> None:
    """The seqserve.v1 program picks sr 8000 at open; on KServe V2 the constant keeps its default."""
    program = code_blocks(DOC, "python")[example]
    lines = run_python_example(program, vad_server.target, tmp_path / "example.py")
    audio = np.random.default_rng(0).standard_normal((6, 512)).astype(np.float32)
    want = models.vad_reference(graphs / "vad" / "1", audio, sr)["output"].ravel()
    assert len(lines) == (2 if example == 1 else 6)
    np.testing.assert_allclose(_printed(lines), want, rtol=0, atol=1e-6)
