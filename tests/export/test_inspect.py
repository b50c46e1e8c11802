"""`seqserve inspect`: what it makes of each declared test graph (the VAD-shaped GRU, six states by pattern,
a frame model with no declaration, graphs fixed at batch 1, one that mixes rows), the declaration it
prints, the batching probe's verdict, the ambiguous cases' exit 2 with the line to add, and `--write`
into a repository that a server then serves, equal to the per-stream onnxruntime loop."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from typer.testing import CliRunner

from bench import declared_models as models
from seqserve import declaration as declarations
from seqserve.cli import app
from seqserve.export.inspect import read_graph
from seqserve.service.config import ServerConfig
from seqserve.service.server.launch import ServerThread

from .named_streams import stream

runner = CliRunner(env={"COLUMNS": "200"})
# What the VAD graph needs beyond its names: the constant's choices, and the frame's 64-sample context.
VAD_PARTIAL = {
    "constants": [{"name": "sr", "choices": [16000, 8000]}],
    "inputs": [{"name": "input", "time_axis": None, "context": 64, "context_axis": 1}],
}

SHARED = "batching: a batch of 2 different streams equals each stream alone: streams share calls"


def _graph(folder: Path, nodes: list, inputs: dict, outputs: dict) -> Path:
    """A float32 graph from nodes, with inputs and outputs given as name -> shape."""
    graph = helper.make_graph(
        nodes,
        folder.name,
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs.items()],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs.items()],
        [helper.make_tensor("zero", TensorProto.INT64, [1], [0])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    folder.mkdir(parents=True)
    onnx.save(model, str(folder / "model.onnx"))
    return folder / "model.onnx"


@pytest.fixture(scope="module")
def graphs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("graphs")
    models.vad(root / "vad")
    models.vad(root / "vad-one", batch=1)
    models.six_states(root / "six")
    models.frame_model(root / "frames")
    models.frame_model(root / "frames-one", batch=1)
    (root / "bare").mkdir()  # the VAD graph as a user brings it: no declaration beside it
    (root / "bare" / "model.onnx").write_bytes((root / "vad" / "model.onnx").read_bytes())
    # h_out mixes rows (the frame less the batch's mean frame): together is not alone.
    _graph(root / "mixing", [
        helper.make_node("ReduceMean", ["frame"], ["mean"], axes=[0], keepdims=1),
        helper.make_node("Sub", ["frame", "mean"], ["centred"]),
        helper.make_node("Add", ["h", "centred"], ["h_out"]),
        helper.make_node("Tanh", ["h_out"], ["y"]),
    ], {"frame": ["batch", 4], "h": ["batch", 4]}, {"y": ["batch", 4], "h_out": ["batch", 4]})  # fmt: skip
    # An output that continues `memory` under a name no rule pairs.
    _graph(root / "unpaired", [helper.make_node("Add", ["x", "memory"], ["updated"]),
                               helper.make_node("Tanh", ["updated"], ["y"])],
           {"x": ["batch", 4], "memory": ["batch", 4]},
           {"y": ["batch", 4], "updated": ["batch", 4]})  # fmt: skip
    return root


def _inspect(*args: object) -> tuple[int, str, str]:
    result = runner.invoke(app, ["inspect", *map(str, args)])
    return result.exit_code, result.stdout, result.stderr


def _printed_declaration(stdout: str) -> dict:
    text = stdout.split("declaration.json:\n", 1)[1]
    return json.JSONDecoder().raw_decode(text)[0]


@pytest.mark.parametrize(
    ("model", "lines"),
    [
        ("vad", ["state -> stateN  float32, batch axis 1, row [1, 8], starts at zeros",
                 "input  float32, batch axis 0, frames; the last 64 items of the previous chunk carried "
                 "along axis 1; a client sends [frames, 512]",
                 "sr  int64 [], chosen per stream from 16000, 8000 (default 16000)",
                 "output  float32, batch axis 0",
                 SHARED]),
        ("vad-one", ["state -> stateN  float32, batch axis 1, row [1, 8]",
                     "batching: one row per call: the graph's batch axis is fixed at 1"]),
        ("six", ["states (6, declared):", "a -> a_out  float32, batch axis 0, row [3]",
                 "c -> c_out  float32, batch axis 1, row [2, 3]", "e -> e_out  int64, batch axis 0, row []",
                 "f -> f_out  int64, batch axis 1, row [2]",
                 "x  float32, batch axis 0, steps along axis 1; a client sends [steps, 3]",
                 "y  float32, batch axis 0", SHARED]),
        ("frames", ["states (1, inferred from the names):", "h -> h_out  float32, batch axis 0, row [16]",
                    "stream inputs (inferred from the names):",
                    "frame  float32, batch axis 0, frames; a client sends [frames, 16]",
                    "score  float32, batch axis 0", SHARED]),
        ("frames-one", ["batching: one row per call: the graph's batch axis is fixed at 1"]),
        ("mixing", ["h -> h_out  float32, batch axis 0, row [4]",
                    "batching: one row per call: failed the batching probe: output y of row 0 differs in a "
                    "batch of 2 from the row alone"]),
    ],
)  # fmt: skip
def test_inspect_says_what_it_makes_of_each_graph_and_prints_the_declaration_the_server_resolves(
    graphs: Path, model: str, lines: list[str]
) -> None:
    code, stdout, stderr = _inspect(graphs / model / "model.onnx")
    assert code == 0, stderr
    for line in lines:
        assert f"\n  {line}" in stdout or f"\n{line}" in stdout, line
    graph = read_graph(graphs / model / "model.onnx")
    served = declarations.resolve(declarations.read(graphs / model), graph.inputs, graph.outputs)
    printed = _printed_declaration(stdout)
    # The printed declaration is what the server makes of the folder; resolved again it is unchanged.
    assert printed == served.to_dict()
    assert declarations.resolve(printed, graph.inputs, graph.outputs).to_dict() == printed


def test_an_undecided_constant_exits_2_naming_it_with_the_line_to_add(graphs: Path) -> None:
    code, stdout, stderr = _inspect(graphs / "bare" / "model.onnx")
    assert code == 2
    assert "  sr      int64 []" in stdout  # the graph is shown before the refusal
    assert "input sr int64 [] looks like a constant" in stderr
    assert '{"constants": [{"name": "sr", "value": ...}]}' in stderr


def test_an_unpaired_state_exits_2_naming_the_tensors(graphs: Path) -> None:
    code, _, stderr = _inspect(graphs / "unpaired" / "model.onnx")
    assert code == 2
    assert "no graph input pairs with an output" in stderr
    assert "memory float32 [batch, 4]" in stderr and "updated float32 [batch, 4]" in stderr
    assert '{"states": [{"input": ..., "output": ...}]}' in stderr


def test_the_line_asked_for_is_enough_the_rest_is_inferred(graphs: Path, tmp_path: Path) -> None:
    constants = tmp_path / "constants.json"
    constants.write_text(json.dumps({"constants": [{"name": "sr", "value": 16000}]}))
    code, stdout, stderr = _inspect(graphs / "bare" / "model.onnx", "--declaration", constants)
    assert code == 0, stderr
    assert "states (1, inferred from the names):\n  state -> stateN  float32, batch axis 1" in stdout
    assert "input  float32, batch axis 0, frames; a client sends [frames, 576]" in stdout
    assert "sr  int64 [], fixed at 16000" in stdout

    states = tmp_path / "states.json"
    states.write_text(json.dumps({"states": [{"input": "memory", "output": "updated"}]}))
    code, stdout, stderr = _inspect(graphs / "unpaired" / "model.onnx", "--declaration", states)
    assert code == 0, stderr
    assert "memory -> updated  float32, batch axis 0, row [4]" in stdout
    assert "  x  float32, batch axis 0, frames; a client sends [frames, 4]" in stdout


def test_a_declaration_that_disagrees_with_the_graph_exits_2_naming_the_field(
    graphs: Path, tmp_path: Path
) -> None:
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({**VAD_PARTIAL, "states": [{"input": "state", "output": "stateN",
                                                             "batch_axis": 2}]}))  # fmt: skip
    code, _, stderr = _inspect(graphs / "bare" / "model.onnx", "--declaration", wrong)
    assert code == 2
    assert "batch_axis 2 of the graph's state float32 [1, batch, 8] is fixed at 8" in stderr
    assert "the graph names axis 1 batch" in stderr


@pytest.fixture(scope="module")
def written(graphs: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository filled by `inspect --write` alone: the bare VAD with the lines it needs, the six-state
    graph with the declaration beside it, the frame model with none."""
    repository = tmp_path_factory.mktemp("written")
    partial = graphs / "vad-partial.json"
    partial.write_text(json.dumps(VAD_PARTIAL))
    for model, extra in (("bare", ["--declaration", partial]), ("six", []), ("frames", [])):
        code, stdout, stderr = _inspect(
            graphs / model / "model.onnx", "--write", repository / model / "1", *extra
        )
        assert code == 0, stderr
        assert f"wrote {repository / model / '1'}/" in stdout
    return repository


def test_write_puts_the_model_and_its_resolved_declaration_into_the_repository(
    graphs: Path, written: Path
) -> None:
    assert sorted(p.name for p in (written / "bare" / "1").iterdir()) == ["declaration.json", "model.onnx"]
    assert (written / "bare" / "1" / "model.onnx").read_bytes() == (
        graphs / "bare" / "model.onnx"
    ).read_bytes()
    graph = read_graph(graphs / "bare" / "model.onnx")
    declaration = declarations.resolve(declarations.read(written / "bare" / "1"), graph.inputs, graph.outputs)
    assert declaration.inputs[0].context == 64 and declaration.constants[0].choices == (16000, 8000)


def test_write_refuses_an_existing_version_unless_forced(graphs: Path, written: Path, tmp_path: Path) -> None:
    repository = Path(tmp_path / "repository")
    target = repository / "frames" / "1"
    assert _inspect(graphs / "frames" / "model.onnx", "--write", target)[0] == 0
    (target / "declaration.json").write_text("{}")
    code, _, stderr = _inspect(graphs / "frames" / "model.onnx", "--write", target)
    assert code == 2 and f"version 1 of model frames already exists at {target}" in stderr
    assert (target / "declaration.json").read_text() == "{}"
    assert _inspect(graphs / "frames" / "model.onnx", "--write", target, "--force")[0] == 0
    assert json.loads((target / "declaration.json").read_text())["states"][0]["input"] == "h"
    assert sorted(p.name for p in (repository / "frames").iterdir()) == ["1"]  # no temp or old folder left
    code, _, stderr = _inspect(graphs / "frames" / "model.onnx", "--write", repository / "frames" / "latest")
    assert code == 2 and "the last folder is the version, a number >= 1" in stderr


def test_a_written_repository_serves_every_graph_equal_to_the_reference_loop(
    graphs: Path, written: Path
) -> None:
    rng = np.random.default_rng(3)
    audio = rng.standard_normal((7, 512)).astype(np.float32)
    x = rng.standard_normal((9, 3)).astype(np.float32)
    frames = rng.standard_normal((6, 16)).astype(np.float32)
    config = ServerConfig(repository=written, port=0, metrics_port=-1, grace_s=1.0, max_delay_ms=2)
    with ServerThread(config) as server:
        vad = stream(server.target, "bare", [{"input": audio[:3]}, {"input": audio[3:]}],
                     {"sr": np.array(8000, np.int64)})  # fmt: skip
        six = stream(server.target, "six", [{"x": x[:2]}, {"x": x[2:7]}, {"x": x[7:]}])
        frame = stream(server.target, "frames", [{"frame": frames[:1]}, {"frame": frames[1:]}])
    np.testing.assert_allclose(
        vad["output"], models.vad_reference(graphs / "bare", audio, 8000)["output"], rtol=0, atol=1e-6
    )
    want = models.six_states_reference(graphs / "six", [x[:2], x[2:7], x[7:]])["y"]
    np.testing.assert_allclose(six["y"], want, rtol=0, atol=1e-6)
    np.testing.assert_allclose(frame["score"], models.frame_reference(graphs / "frames", frames)["score"],
                               rtol=0, atol=1e-6)  # fmt: skip


def test_inspect_runs_where_torch_and_onnx_cannot_be_imported(graphs: Path) -> None:
    """The serving image has onnxruntime but neither torch nor onnx: inspect and --write need neither."""
    script = (
        "import sys\n"
        "class Absent:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'onnx'):\n"
        "            raise ImportError(name + ' is not in the serving image')\n"
        "sys.meta_path.insert(0, Absent())\n"
        "from seqserve.cli import app\n"
        f"app(['inspect', {str(graphs / 'frames' / 'model.onnx')!r}, '--write', sys.argv[1]])\n"
    )
    target = graphs / "torchless" / "frames" / "1"
    done = subprocess.run([sys.executable, "-c", script, str(target)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "h -> h_out  float32, batch axis 0, row [16]" in done.stdout
    assert (target / "model.onnx").is_file() and (target / "declaration.json").is_file()
