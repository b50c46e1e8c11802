"""The export job: defaults, what model.json records, per-model failure, and every bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx
import pytest
import torch

from seqserve import contract
from seqserve.export import graph
from seqserve.export.errors import ExportInputError
from seqserve.export.job import export_run, export_runs

from .test_repository import tree


def test_exports_a_run_as_the_next_version_of_its_folder_name(trained_runs, tmp_path: Path) -> None:
    run = trained_runs["jv-gru"]
    [first] = export_run(run, tmp_path)
    [second] = export_run(run, tmp_path)
    assert (first.info.name, first.info.version, second.info.version) == ("jv-gru", 1, 2)
    assert contract.list_versions(tmp_path, "jv-gru") == [1, 2]
    [pinned] = export_run(run, tmp_path, name="vowels", version=7)
    assert pinned.path == tmp_path / "vowels" / "7"


def test_model_json_records_the_run_and_its_checks(trained_runs, tmp_path: Path) -> None:
    [result] = export_run(trained_runs["jv-lstm"], tmp_path)
    info = contract.read_model_info(result.path)
    run_metrics = json.loads((trained_runs["jv-lstm"] / "metrics.json").read_text())
    assert (info.task, info.cell, info.layers, info.hidden, info.features) == (
        "many_to_one",
        "lstm",
        1,
        32,
        12,
    )
    assert info.labels == [str(i) for i in range(1, 10)] and info.precision == "fp32"
    assert info.test_metrics["test_accuracy"] == run_metrics["test_accuracy"]
    # onnxruntime on the whole test split agrees with PyTorch's own test accuracy.
    assert info.test_metrics["onnx_accuracy"] == pytest.approx(run_metrics["test_accuracy"], abs=1 / 370)
    assert info.parity["passed"] and info.parity["sequences"] == 64
    assert set(info.test_metrics["latency_ms"]) == {"single_ms", "batch_ms", "batch"}


def test_a_parity_failure_fails_that_model_only_and_leaves_nothing(
    trained_runs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(graph._GATE_ORDER, "gru", [0, 1, 2])  # GRU weights in the wrong gate order
    seen = []
    outcomes = export_runs(
        [trained_runs["jv-gru"], trained_runs["jv-lstm"]], tmp_path, on_outcome=seen.append
    )
    assert [o.name for o in seen] == ["jv-gru", "jv-lstm"]
    gru, lstm = outcomes
    assert not gru.ok and "jv-gru: parity with PyTorch failed: max abs diff" in gru.error
    assert lstm.ok and [r.info.version for r in lstm.results] == [1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["jv-lstm"]


def _checkpoint_of_another_format(run: Path) -> None:
    model = torch.nn.GRU(12, 8)
    torch.save(model.state_dict(), run / "checkpoint.pt")


def _pickled_module(run: Path) -> None:
    torch.save(torch.nn.GRU(12, 8), run / "checkpoint.pt")


def _corrupt_checkpoint(run: Path) -> None:
    (run / "checkpoint.pt").write_bytes(b"\x80\x04 this is not a checkpoint")


def _truncated_checkpoint(run: Path, source: Path) -> None:
    data = (source / "checkpoint.pt").read_bytes()
    (run / "checkpoint.pt").write_bytes(data[: len(data) // 2])


BAD_RUNS = {
    "missing checkpoint": (lambda run, source: None, r"checkpoint.pt: missing"),
    "other format": (lambda run, source: _checkpoint_of_another_format(run), "not a seqserve checkpoint"),
    "pickled module": (lambda run, source: _pickled_module(run), "not a readable seqserve checkpoint"),
    "corrupt": (lambda run, source: _corrupt_checkpoint(run), "not a readable seqserve checkpoint"),
    "truncated": (_truncated_checkpoint, "not a readable seqserve checkpoint"),
}


@pytest.mark.parametrize("case", sorted(BAD_RUNS))
def test_a_bad_run_folder_stops_the_batch_before_anything_is_written(
    case: str, trained_runs, tmp_path
) -> None:
    make, message = BAD_RUNS[case]
    bad = tmp_path / "runs" / "bad"
    bad.mkdir(parents=True)
    make(bad, trained_runs["jv-gru"])
    repository = tmp_path / "repo"
    with pytest.raises(ExportInputError, match=message) as raised:
        export_runs([trained_runs["jv-gru"], bad], repository)
    assert str(bad) in str(raised.value) and "\n" not in str(raised.value)
    assert not repository.exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"quantize": "int4"}, r"--quantize 'int4' is not supported; expected one of: int8"),
        ({"opset": 12}, r"--opset 12 is not supported; expected 17 to"),
        ({"name": "a/b"}, r"model name 'a/b' is not valid"),
        ({"version": 1}, r"version 1 of model jv-gru already exists .* pass --force"),
    ],
    ids=["unknown quantize", "old opset", "bad model name", "existing version"],
)
def test_bad_options_are_refused_and_nothing_is_written(
    options: dict, message: str, trained_runs, tmp_path
) -> None:
    export_run(trained_runs["jv-gru"], tmp_path)
    before = tree(tmp_path)
    with pytest.raises(ExportInputError, match=message):
        export_run(trained_runs["jv-gru"], tmp_path, **options)
    assert tree(tmp_path) == before


def test_int8_version_must_be_free_too(trained_runs, tmp_path: Path) -> None:
    export_run(trained_runs["jv-gru"], tmp_path, name="jv-gru-int8", version=1)
    before = tree(tmp_path)
    with pytest.raises(ExportInputError, match="version 1 of model jv-gru-int8 already exists"):
        export_run(trained_runs["jv-gru"], tmp_path, version=1, quantize="int8")
    assert tree(tmp_path) == before


def test_force_replaces_an_existing_version(trained_runs, tmp_path: Path) -> None:
    export_run(trained_runs["jv-gru"], tmp_path)
    export_run(trained_runs["jv-lstm"], tmp_path, name="jv-gru", version=1, force=True)
    assert contract.read_model_info(tmp_path / "jv-gru" / "1").cell == "lstm"


def test_a_repository_that_is_a_file_is_refused(trained_runs, tmp_path: Path) -> None:
    path = tmp_path / "repo"
    path.write_text("x")
    with pytest.raises(ExportInputError, match=f"repository {path} is a file"):
        export_run(trained_runs["jv-gru"], path)


def test_batch_refusals(trained_runs, tmp_path: Path) -> None:
    runs = [trained_runs["jv-gru"], trained_runs["jv-lstm"]]
    with pytest.raises(ExportInputError, match="--name m given with 2 run folders"):
        export_runs(runs, tmp_path, name="m")
    twin = tmp_path / "other" / "jv-gru"
    shutil.copytree(trained_runs["jv-gru"], twin)
    with pytest.raises(ExportInputError, match="several run folders would export as model jv-gru"):
        export_runs([trained_runs["jv-gru"], twin], tmp_path / "repo")
    with pytest.raises(ExportInputError, match="run folder .*missing-run does not exist"):
        export_runs([tmp_path / "missing-run"], tmp_path / "repo")
    assert not (tmp_path / "repo").exists()


def test_a_run_without_metrics_json_still_exports(trained_runs, tmp_path: Path) -> None:
    run = shutil.copytree(trained_runs["jv-gru"], tmp_path / "runs" / "no-metrics")
    (run / "metrics.json").unlink()
    [result] = export_run(run, tmp_path / "repo")
    assert "test_accuracy" not in result.info.test_metrics
    assert result.info.test_metrics["onnx_accuracy"] > 0.5


def test_a_newer_opset_is_exported_as_asked(trained_runs, tmp_path: Path) -> None:
    [result] = export_run(trained_runs["bms-gru"], tmp_path, opset=18)
    model = onnx.load(result.path / contract.MODEL_FILE)
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 18)]
    assert result.info.opset == 18 and result.info.test_metrics["accuracy_unit"] == "step"
