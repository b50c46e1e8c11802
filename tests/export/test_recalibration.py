"""`seqserve recalibrate`: each recent origin's forecast is the server's forecast of that prefix, the new
version's intervals cover the level asked on the history they were measured on (and measuring them again
gives a factor of 1), the graph and the mean are untouched, and every bad input is refused with nothing
written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from seqserve import contract
from seqserve.cli import app
from seqserve.export.errors import ExportInputError
from seqserve.export.forecast_job import export_forecaster
from seqserve.export.graph import build_model
from seqserve.export.recalibration import measure, origin_forecasts, recalibrate_version
from seqserve.export.repository import VersionFiles, write_versions
from seqserve.service.engine.errors import ModelNotFound
from seqserve.service.kinds.forecaster import ForecastAsk, History
from seqserve.service.offline import forecast, open_model
from seqserve.training.datasets import DataError
from seqserve.training.forecast_loop import ForecastTrainConfig, train_forecaster
from seqserve.training.series import taylor

from .tiny_models import make_model

runner = CliRunner(env={"COLUMNS": "200"})
DAYS = 20


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Taylor forecaster (calibrated per step on week 8, as training does) and a classifier."""
    root = tmp_path_factory.mktemp("recalibrate")
    run = root / "taylor-gru"
    train_forecaster(
        ForecastTrainConfig(out=run, dataset="taylor", hidden=8, epochs=1, batches_per_epoch=1, batch_size=2)
    )
    export_forecaster(run, root / "repo", name="taylor")
    classifier, info = make_model("gru", 1, "many_to_one")
    info.name = "clf"
    write_versions(root / "repo", [VersionFiles(build_model(classifier, info), info)])
    return root / "repo"


def _history_csv(path: Path, days: int = DAYS, values: np.ndarray | None = None) -> Path:
    """Taylor's first `days` days as the history CSV users have (timestamps from its start)."""
    rows = (Path(contract.__file__).parents[1] / "data" / "forecast" / "taylor.csv").read_text().splitlines()
    lines = rows[: 1 + days * 48]
    if values is not None:
        lines = [lines[0]] + [f"{line.split(',')[0]},{v}" for line, v in zip(lines[1:], values, strict=False)]
    path.write_text("\n".join(lines) + "\n")
    return path


def _copy(repository: Path, tmp_path: Path) -> Path:
    import shutil

    shutil.copytree(repository, tmp_path / "repo")
    return tmp_path / "repo"


def test_each_origin_forecast_is_the_servers_forecast_of_that_prefix(repository: Path) -> None:
    runtime = open_model(repository, "taylor")
    values = taylor().values[0][: 10 * 48].astype(np.float32)
    origins = range(400, 406)
    loc, scale = origin_forecasts(runtime, values, None, origins, 48)
    want = forecast(runtime, [History(values[:o]) for o in origins], ForecastAsk(48, (0.5,)))
    np.testing.assert_allclose(loc, np.stack([a.mean for a in want]), rtol=1e-5)
    np.testing.assert_allclose(scale, np.stack([a.scale for a in want]), rtol=1e-5)


def test_the_new_version_covers_the_level_and_measuring_it_again_gives_one(
    repository: Path, tmp_path: Path
) -> None:
    repo = _copy(repository, tmp_path)
    history = _history_csv(tmp_path / "recent.csv")
    path, info, result = recalibrate_version(repo, "taylor", history, window=144)
    assert path == repo / "taylor" / "2" and info.version == 2
    assert result.origins == 144 - 48 + 1 and result.horizon == 48
    assert abs(result.coverage_after - 0.8) <= 1 / (result.origins * result.horizon) + 1e-9
    assert abs(result.coverage_before - 0.8) > 0.02  # the fixed intervals were off on these days
    before, after = (contract.read_model_info(repo / "taylor" / str(v)).forecast for v in (1, 2))
    np.testing.assert_allclose(
        after["scale_by_horizon"], np.array(before["scale_by_horizon"]) * result.factor, rtol=1e-5
    )
    assert after["recalibration"]["from_version"] == 1 and after["recalibration"]["window"] == 144
    assert after["lags"] == before["lags"] and after["periods"] == before["periods"]
    # The same graph: the mean is unchanged and each step's scale is times the factor.
    one, two = open_model(repo, "taylor", 1), open_model(repo, "taylor", 2)
    values = [History(taylor().values[0][: 15 * 48].astype(np.float32))]
    (old,), (new,) = (forecast(runtime, values, ForecastAsk(96, (0.1, 0.9))) for runtime in (one, two))
    np.testing.assert_array_equal(old.mean, new.mean)
    np.testing.assert_allclose(new.scale, old.scale * result.factor, rtol=1e-5)  # past K too (sqrt rule)
    again = recalibrate_version(repo, "taylor", history, window=144)[2]
    assert again.factor == pytest.approx(1.0, abs=1e-4)
    assert again.coverage_before == pytest.approx(result.coverage_after, abs=1e-3)


def test_the_cli_writes_the_next_version_and_says_what_it_measured(repository: Path, tmp_path: Path) -> None:
    repo = _copy(repository, tmp_path)
    history = _history_csv(tmp_path / "recent.csv")
    result = runner.invoke(app, ["recalibrate", "--repository", str(repo), "--model", "taylor",
                                 "--data", str(history)])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "49 forecasts of 48 steps from the last 96 observations" in result.output
    assert f"wrote version 2 to {repo / 'taylor' / '2'}" in result.output
    written = json.loads((repo / "taylor" / "2" / contract.METADATA_FILE).read_text())
    assert written["forecast"]["recalibration"]["data"] == "recent.csv"


@pytest.mark.parametrize(
    ("model", "options", "message"),
    [
        ("clf", {}, "clf is a many_to_one model; only forecasters are recalibrated"),
        ("taylor", {"level": 1.5}, "level 1.5: expected an interval level inside (0, 1)"),
        ("taylor", {"window": 47}, "window 47: expected at least the 48 steps"),
        ("taylor", {"days": 1}, "no series has more than 48 observations"),
        ("taylor", {"nan": True}, "line 302: value 'nan'; expected a finite number"),
        ("nope", {}, "model 'nope' is not in"),
    ],
)
def test_bad_input_is_refused_and_nothing_is_written(
    repository: Path, tmp_path: Path, model: str, options: dict, message: str
) -> None:
    repo = _copy(repository, tmp_path)
    values = taylor().values[0][: DAYS * 48].copy()
    if options.get("nan"):
        values[300] = np.nan
    history = _history_csv(tmp_path / "recent.csv", options.get("days", DAYS), values)
    with pytest.raises((ExportInputError, DataError, ModelNotFound)) as caught:
        recalibrate_version(repo, model, history, options.get("window"), options.get("level", 0.8))
    assert message in str(caught.value)
    assert sorted(p.name for p in (repo / "taylor").iterdir()) == ["1"]
    cli = ["recalibrate", "--repository", str(repo), "--model", model, "--data", str(history)]
    if "window" in options:
        cli += ["--window", str(options["window"])]
    if "level" in options:
        cli += ["--level", str(options["level"])]
    result = runner.invoke(app, cli)
    assert result.exit_code == 2 and message in result.output, result.output


def test_measure_refuses_histories_too_short_or_not_finite(repository: Path) -> None:
    runtime = open_model(repository, "taylor")
    values = taylor().values[0][: 3 * 48].astype(np.float32)
    with pytest.raises(ExportInputError, match="each recent forecast needs its 48 steps observed"):
        measure(runtime, [(values[:48], None)])
    values[100] = np.inf
    with pytest.raises(ExportInputError, match="the history holds NaN or Inf values"):
        measure(runtime, [(values, None)])


def test_a_polling_server_forecasts_with_the_new_version_and_open_streams_keep_theirs(
    repository: Path, tmp_path: Path
) -> None:
    import time

    import seqserve
    from seqserve.service.config import ServerConfig
    from seqserve.service.server.launch import ServerThread

    repo = _copy(repository, tmp_path)
    values = taylor().values[0][: 15 * 48].astype(np.float32)
    config = ServerConfig(repository=repo, port=0, metrics_port=-1, grace_s=1.0, poll_repository_s=0.05)
    with ServerThread(config) as server, seqserve.Client(server.target) as client:
        with client.stream("taylor") as stream:
            stream.send(values[:, None])
            (before,) = client.forecast("taylor", [values], horizon=48)
            result = recalibrate_version(repo, "taylor", _history_csv(tmp_path / "recent.csv"))[2]
            served = server.running.engine.repository
            for _ in range(400):
                if served.resolve("taylor").runtime.info.version == 2:
                    break
                time.sleep(0.025)
            (after,) = client.forecast("taylor", [values], horizon=48)
            on_the_stream = stream.forecast(48)
    np.testing.assert_array_equal(after.mean, before.mean)
    np.testing.assert_allclose(after.scale, before.scale * result.factor, rtol=1e-5)
    assert abs(result.factor - 1) > 0.05  # so the two checks above tell the versions apart
    np.testing.assert_allclose(on_the_stream.scale, before.scale, rtol=1e-5)  # opened on version 1
