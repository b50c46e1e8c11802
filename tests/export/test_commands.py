"""`seqserve export` and `seqserve models` end to end through the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from seqserve.cli import app
from seqserve.export import graph

runner = CliRunner(env={"COLUMNS": "200"})


def test_export_prints_a_line_per_model_and_a_summary(trained_runs, tmp_path: Path) -> None:
    repository = tmp_path / "repo"
    runs = [str(trained_runs["jv-gru"]), str(trained_runs["jv-bigru"])]
    result = runner.invoke(app, ["export", *runs, "--repository", str(repository), "--quantize", "int8"])
    assert result.exit_code == 0, result.output
    assert "ok jv-gru v1 fp32 accuracy" in result.stdout and "jv-gru-int8 v1 int8" in result.stdout
    assert "ok jv-bigru v1 fp32" in result.stdout
    # The speed-up is measured side by side in this run and said in words, whichever way it went.
    note = next(line for line in result.stdout.splitlines() if line.startswith("jv-gru-int8 (int8) beside"))
    assert "for one sequence" in note and any(w in note for w in ("faster", "SLOWER", "no faster"))
    assert "answers do not depend on the batch" in note and "GRU layers stay fp32" in note
    # int8 is its own model: the fp32 model keeps its one version, so it stays the default.
    assert sorted(p.name for p in repository.iterdir()) == [
        "jv-bigru",
        "jv-bigru-int8",
        "jv-gru",
        "jv-gru-int8",
    ]
    assert sorted(p.name for p in (repository / "jv-gru").iterdir()) == ["1"]

    export_again = runner.invoke(app, ["export", runs[0], "--repository", str(repository)])
    assert export_again.exit_code == 0, export_again.output
    listing = runner.invoke(app, ["models", "--repository", str(repository)])
    assert listing.exit_code == 0, listing.output
    rows = [line for line in listing.stdout.splitlines() if "jv-" in line]
    assert len(rows) == 5
    assert any("jv-bigru " in row and "1 x 32 bi" in row and "fp32" in row and "ok " in row for row in rows)
    assert any("jv-gru-int8" in row and "int8" in row and "agrees" in row for row in rows)
    cells = [[cell.strip() for cell in row.strip(" │").split("│")] for row in rows]
    assert [(c[1], c[2]) for c in cells if c[0] == "jv-gru"] == [("1", ""), ("2", "default")]


def test_a_failed_model_exits_non_zero_after_exporting_the_others(
    trained_runs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(graph._GATE_ORDER, "lstm", [0, 1, 2, 3])
    repository = tmp_path / "repo"
    runs = [str(trained_runs["jv-lstm"]), str(trained_runs["jv-gru"])]
    result = runner.invoke(app, ["export", *runs, "--repository", str(repository)])
    assert result.exit_code == 1
    assert "failed jv-lstm: parity with PyTorch failed" in result.stdout
    assert "1 of 2 model(s) failed: jv-lstm" in result.stdout
    assert sorted(p.name for p in repository.iterdir()) == ["jv-gru"]


@pytest.mark.parametrize(
    ("make_args", "message"),
    [
        (lambda runs, tmp: [str(tmp / "nope"), "--repository", str(tmp / "repo")], "does not exist"),
        (lambda runs, tmp: [str(runs["jv-gru"]), "--repository", str(tmp / "file")], "is a file"),
        (
            lambda runs, tmp: [str(runs["jv-gru"]), "--repository", str(tmp / "repo"), "--quantize", "fp16"],
            "--quantize 'fp16' is not supported",
        ),
    ],
    ids=["missing run", "repository is a file", "unknown quantize"],
)
def test_bad_input_is_one_error_line_and_exit_2(
    make_args, message: str, trained_runs, tmp_path: Path
) -> None:
    (tmp_path / "file").write_text("x")
    result = runner.invoke(app, ["export", *make_args(trained_runs, tmp_path)])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ") and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "repo").exists()


def test_models_on_a_missing_repository_is_an_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["models", "--repository", str(tmp_path / "none")])
    assert result.exit_code == 2 and "is not a folder" in result.stderr


def test_models_flags_an_unreadable_version(model_repository, writable_repository: Path) -> None:
    (writable_repository / "jv-gru" / "1" / "model.json").write_text("{not json")
    result = runner.invoke(app, ["models", "--repository", str(writable_repository)])
    assert result.exit_code == 1
    assert "unreadable" in result.stdout and "bms-gru" in result.stdout


def test_models_lists_a_declared_graph_beside_the_exports(model_repository: Path, tmp_path: Path) -> None:
    """A version with no model.json is a declared graph (served from its declaration.json, or from what the
    graph's names say), not an unreadable one."""
    import shutil

    from bench import declared_models

    repository = Path(shutil.copytree(model_repository, tmp_path / "repository"))
    declared_models.vad(repository / "vad" / "1")
    declared_models.frame_model(repository / "frames" / "1")
    listing = runner.invoke(app, ["models", "--repository", str(repository)], env={"COLUMNS": "200"})
    assert listing.exit_code == 0, listing.output
    rows = {line.split("│")[1].strip(): line for line in listing.stdout.splitlines() if line.count("│") > 5}
    assert "declared" in rows["vad"] and "graph (declaration.json)" in rows["vad"]
    assert "declared" in rows["frames"] and "graph (inferred at load)" in rows["frames"]
    assert "unreadable" not in listing.stdout
