import json
from pathlib import Path

from typer.testing import CliRunner

from seqserve.cli import app

runner = CliRunner()


def test_bad_data_file_ends_with_one_error_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("id,step,f1,label\na,0,1.0,x\na,1,oops,x\n")
    result = runner.invoke(app, ["train", "--out", str(tmp_path / "run"), "--data", str(bad)])
    assert result.exit_code == 2
    assert result.output.strip() == f"error: {bad}, line 3, column 'f1': 'oops' is not a number"
    assert not (tmp_path / "run").exists()


def test_missing_data_and_bad_lengths_are_one_line_errors(tmp_path: Path) -> None:
    result = runner.invoke(app, ["train", "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and result.output.startswith("error: give exactly one")
    result = runner.invoke(app, ["experiment", "vanishing", "--out", str(tmp_path), "--lengths", "50,x"])
    assert result.exit_code == 2 and "expected comma-separated integers" in result.output


def test_train_user_csv_writes_a_run(tmp_path: Path) -> None:
    rows = ["id,step,a,b,label"]
    for sequence in range(30):
        label = "up" if sequence % 2 else "down"
        for step in range(4):
            value = step if label == "up" else -step
            rows.append(f"s{sequence},{step},{value},{sequence % 3},{label}")
    data = tmp_path / "mine.csv"
    data.write_text("\n".join(rows) + "\n")
    out = tmp_path / "run"
    result = runner.invoke(
        app, ["train", "--out", str(out), "--data", str(data), "--hidden", "8", "--epochs", "3"]
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["dataset"], metrics["labels"], metrics["sizes"]) == (
        "mine",
        ["down", "up"],
        {"train": 22, "validation": 4, "test": 4},
    )
    assert "mine gru: test accuracy" in result.output


def _tiny_csv(tmp_path: Path) -> Path:
    rows = ["id,step,a,label"] + [
        f"s{i},{t},{t if i % 2 else -t},{'up' if i % 2 else 'down'}" for i in range(20) for t in range(3)
    ]
    data = tmp_path / "tiny.csv"
    data.write_text("\n".join(rows) + "\n")
    return data


def test_out_is_checked_before_training(tmp_path: Path) -> None:
    data = _tiny_csv(tmp_path)
    a_file = tmp_path / "a-file"
    a_file.write_text("mine\n")
    result = runner.invoke(app, ["train", "--out", str(a_file), "--data", str(data)])
    assert (
        result.exit_code == 2
        and result.output.strip() == f"error: --out {a_file} is a file; expected a folder for the run"
    )
    result = runner.invoke(app, ["experiment", "vanishing", "--out", str(a_file), "--quick"])
    assert result.exit_code == 2 and f"--out {a_file} is a file" in result.output
    assert a_file.read_text() == "mine\n"

    run = tmp_path / "run"
    flags = ["train", "--out", str(run), "--data", str(data), "--hidden", "4", "--epochs", "1"]
    assert runner.invoke(app, flags).exit_code == 0
    before = (run / "checkpoint.pt").read_bytes()
    again = runner.invoke(app, flags)
    assert again.exit_code == 2 and "already holds a run (checkpoint.pt); pass --force" in again.output
    assert (run / "checkpoint.pt").read_bytes() == before  # nothing trained, nothing replaced
    assert runner.invoke(app, [*flags, "--seed", "1", "--force"]).exit_code == 0
    assert (run / "checkpoint.pt").read_bytes() != before
