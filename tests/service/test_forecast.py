"""Forecasts on a forecaster: a served forecast equals the PyTorch rollout from the same history (unary and
on a live stream), its scale calibrated per step by model.json's multipliers as the PyTorch one's, a
forecast leaves the stream's next answers unchanged, many forecasts share calls, a resumed stream
continues its state and lag buffer exactly, the calendar phase follows the start time, and every bad
request gets its own status while other streams go on."""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Iterator
from pathlib import Path
from statistics import NormalDist

import grpc
import numpy as np
import pytest
import torch

from seqserve.export.forecast_graph import build_forecaster
from seqserve.export.forecast_job import forecaster_info
from seqserve.export.graph import build_model
from seqserve.export.repository import VersionFiles, write_versions
from seqserve.service.config import ServerConfig
from seqserve.service.server.launch import ServerThread
from seqserve.training import forecaster as offline
from seqserve.training.forecaster import Forecaster, ForecasterConfig
from seqserve.training.series import taylor
from seqserve.v1 import seqserve_pb2 as pb
from seqserve.v1 import seqserve_pb2_grpc as pb_grpc

from ..export.tiny_models import make_model
from .conftest import STATE_KEYS
from .streams import END, chunk_request, drive, open_request

MAX_FORECAST = 64
ORIGIN = "2000-06-05T00:00:00"
STEP_S = 1800.0
ORIGIN_S = datetime.datetime.fromisoformat(ORIGIN).replace(tzinfo=datetime.UTC).timestamp()
SERIES = taylor().values[0][:400].astype(np.float32)


def _model(cell: str) -> Forecaster:
    torch.manual_seed({"gru": 3, "lstm": 4}[cell])
    # Scale multipliers per step, growing past the four measured: a server that left them out would fail.
    multipliers = (0.6, 1.0, 1.7, 2.1)
    config = ForecasterConfig(
        cell=cell, hidden=8, lags=(4,), periods=(4.0, 6.0), season=6, scale_by_horizon=multipliers
    )
    model = Forecaster(config)
    with torch.no_grad():  # an untrained head reads only the naive's error: make the rnn and calendar count
        model.head.weight.normal_(0, 0.3)
    return model.eval()


MODELS = {"fc-gru": _model("gru"), "fc-lstm": _model("lstm")}


@pytest.fixture(scope="module")
def forecast_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    root = tmp_path_factory.mktemp("forecast")
    repository = root / "repository"
    for name, model in MODELS.items():
        info = forecaster_info(model, name, 1, 8)
        info.forecast.update(step_seconds=STEP_S, calendar_origin=ORIGIN)
        write_versions(repository, [VersionFiles(build_forecaster(model, info), info)])
    classifier, info = make_model("gru", 1, "many_to_one")
    info.name = "clf"
    write_versions(repository, [VersionFiles(build_model(classifier, info), info)])
    key_file = root / "keys"
    key_file.write_text(STATE_KEYS[0] + "\n")
    config = ServerConfig(repository=repository, port=0, metrics_port=-1, grace_s=1.0,
                          max_forecast_steps=MAX_FORECAST, max_delay_ms=10.0,
                          state_key_file=key_file)  # fmt: skip
    with ServerThread(config) as running:
        yield running


@torch.no_grad()
def reference(name: str, history: np.ndarray, horizon: int, clock: float = 0.0) -> tuple[np.ndarray, ...]:
    """The PyTorch rollout (training.forecaster.forecast, calibrated): the history from the initial state
    (its clock at `clock`), then each mean fed back as the next observation."""
    model = MODELS[name]
    predicted = offline.forecast(
        model, torch.as_tensor(history[None]), horizon, state=model.initial_state(1, clock)
    )
    return predicted.loc[0].numpy().astype(np.float64), predicted.scale[0].numpy().astype(np.float64)


def assert_close(forecast: pb.Forecast, loc: np.ndarray, scale: np.ndarray) -> None:
    # Relative to the series' size (~30,000 MW): float32 graph against float32 PyTorch over a rollout.
    np.testing.assert_allclose(np.array(forecast.mean), loc, rtol=1e-4, atol=1e-2)
    np.testing.assert_allclose(np.array(forecast.scale), scale, rtol=1e-4, atol=1e-2)


def forecast_call(server: ServerThread, request: pb.ForecastRequest) -> pb.ForecastResponse:
    async def run() -> pb.ForecastResponse:
        async with grpc.aio.insecure_channel(server.target) as channel:
            return await pb_grpc.InferenceServiceStub(channel).Forecast(request)

    return server.call(run())


def ask(horizon: int, *quantiles: float) -> pb.ForecastAsk:
    return pb.ForecastAsk(horizon=horizon, quantiles=quantiles)


def forecast_request(
    name: str, *histories: np.ndarray, horizon: int = 8, **series: object
) -> pb.ForecastRequest:
    return pb.ForecastRequest(
        model=name,
        series=[pb.ForecastSeries(values=h.tolist(), **series) for h in histories],
        ask=ask(horizon, 0.1, 0.5, 0.9),
    )


def stream_outcome(server: ServerThread, requests: list[pb.StreamRequest]):
    async def run():
        async with grpc.aio.insecure_channel(server.target) as channel:
            return await drive(pb_grpc.InferenceServiceStub(channel), requests)

    return server.call(run())


def chunks_of(history: np.ndarray, size: int) -> list[pb.StreamRequest]:
    return [chunk_request(history[i : i + size, None]) for i in range(0, len(history), size)]


def tensor(result: pb.ChunkResult, name: str) -> np.ndarray:
    (found,) = [t for t in result.outputs if t.name == name]
    return np.frombuffer(found.data, dtype="<f4")


@pytest.mark.parametrize("name", ["fc-gru", "fc-lstm"])
def test_unary_forecast_equals_the_pytorch_rollout_with_normal_quantiles(
    forecast_server: ServerThread, name: str
) -> None:
    histories = [SERIES[:337], SERIES[50:120], SERIES[:1]]
    response = forecast_call(forecast_server, forecast_request(name, *histories, horizon=20))
    assert response.model.task == "forecast" and response.model.forecast_calendar_origin == ORIGIN
    assert len(response.forecasts) == 3
    for history, forecast in zip(histories, response.forecasts, strict=True):
        loc, scale = reference(name, history, 20)
        assert forecast.from_step == len(history)
        assert_close(forecast, loc, scale)
        assert [q.level for q in forecast.quantiles] == [0.1, 0.5, 0.9]
        for q in forecast.quantiles:
            expected = np.array(forecast.mean) + NormalDist().inv_cdf(q.level) * np.array(forecast.scale)
            np.testing.assert_allclose(q.values, expected, rtol=1e-5, atol=1e-2)


def test_forecast_mid_stream_leaves_the_stream_as_it_was(forecast_server: ServerThread) -> None:
    history = SERIES[:200]
    plain = stream_outcome(forecast_server, [open_request("fc-lstm"), *chunks_of(history, 25), END])
    asked = [open_request("fc-lstm"), *chunks_of(history[:100], 25), pb.StreamRequest(forecast=ask(12, 0.5))]
    asked += [pb.StreamRequest(forecast=ask(3)), *chunks_of(history[100:], 25), END]
    outcome = stream_outcome(forecast_server, asked)
    assert outcome.code == grpc.StatusCode.OK, outcome.details
    answers = [r for r in outcome.responses if r.HasField("chunk")]
    forecasts = [r.forecast for r in outcome.responses if r.HasField("forecast")]
    expected = [r for r in plain.responses if r.HasField("chunk")]
    assert len(answers) == len(expected) == 8
    for got, want in zip(answers, expected, strict=True):
        for name in ("loc", "scale"):
            np.testing.assert_array_equal(tensor(got.chunk, name), tensor(want.chunk, name))
    loc, scale = reference("fc-lstm", history[:100], 12)
    assert forecasts[0].from_step == 100 and len(forecasts[0].quantiles[0].values) == 12
    assert_close(forecasts[0], loc, scale)
    np.testing.assert_array_equal(forecasts[1].mean, forecasts[0].mean[:3])
    # The stream's one-step answer is the forecast's first step, its scale the model's own (m_1 = 0.6).
    assert forecasts[0].mean[0] == pytest.approx(float(tensor(answers[3].chunk, "loc")[-1]))
    own_scale = float(tensor(answers[3].chunk, "scale")[-1])
    assert forecasts[0].scale[0] == pytest.approx(0.6 * own_scale, rel=1e-6)


def test_many_forecasts_share_calls_and_each_equals_its_own(forecast_server: ServerThread) -> None:
    histories = [SERIES[i : i + 60 + i] for i in range(32)]

    async def run() -> list[pb.ForecastResponse]:
        async with grpc.aio.insecure_channel(forecast_server.target) as channel:
            stub = pb_grpc.InferenceServiceStub(channel)
            return await asyncio.gather(
                *(stub.Forecast(forecast_request("fc-gru", h, horizon=30)) for h in histories)
            )

    responses = forecast_server.call(run())
    for history, response in zip(histories, responses, strict=True):
        assert_close(response.forecasts[0], *reference("fc-gru", history, 30))
    calls = forecast_server.running.engine.repository.resolve("fc-gru", 0).metrics.totals()
    assert calls.rows > 1.5 * calls.calls, (
        f"{calls.rows} rows in {calls.calls} calls: forecasts did not share"
    )


def test_resume_continues_the_state_and_the_lag_buffer(forecast_server: ServerThread) -> None:
    history = SERIES[:120]
    first = stream_outcome(
        forecast_server,
        [open_request("fc-gru", checkpoint_every_chunks=1), *chunks_of(history[:70], 10)],
    )
    token = [r.chunk.checkpoint.token for r in first.responses if r.HasField("chunk")][-1]
    resumed = stream_outcome(
        forecast_server,
        [
            pb.StreamRequest(open=pb.StreamOpen(resume_token=token)),
            pb.StreamRequest(forecast=ask(9)),
            *chunks_of(history[70:], 10),
            pb.StreamRequest(forecast=ask(9)),
            END,
        ],
    )
    assert resumed.code == grpc.StatusCode.OK, resumed.details
    forecasts = [r.forecast for r in resumed.responses if r.HasField("forecast")]
    assert forecasts[0].from_step == 70 and forecasts[1].from_step == 120
    assert_close(forecasts[0], *reference("fc-gru", history[:70], 9))
    assert_close(forecasts[1], *reference("fc-gru", history, 9))


def test_start_time_sets_the_calendar_phase(forecast_server: ServerThread) -> None:
    history = SERIES[:50]
    start = ORIGIN_S + 7 * STEP_S + 86_400 * 14  # 7 steps into the calendar, two weeks on
    response = forecast_call(forecast_server, forecast_request("fc-gru", history, start_unix_s=start))
    assert_close(response.forecasts[0], *reference("fc-gru", history, 8, clock=7 % 12))
    assert not np.allclose(response.forecasts[0].mean, reference("fc-gru", history, 8)[0])
    streamed = stream_outcome(
        forecast_server,
        [
            open_request("fc-gru", start_unix_s=start),
            *chunks_of(history, 50),
            pb.StreamRequest(forecast=ask(8)),
        ],
    )
    (forecast,) = [r.forecast for r in streamed.responses if r.HasField("forecast")]
    assert_close(forecast, *reference("fc-gru", history, 8, clock=7 % 12))


ONE = pb.ForecastSeries(values=[1.0])
BAD_FORECASTS = {
    "horizon 0": (forecast_request("fc-gru", SERIES[:10], horizon=0), grpc.StatusCode.INVALID_ARGUMENT,
                  "horizon is 0; expected 1 to 64"),
    "horizon over the limit": (forecast_request("fc-gru", SERIES[:10], horizon=MAX_FORECAST + 1),
                               grpc.StatusCode.RESOURCE_EXHAUSTED, "--max-forecast-steps"),
    "quantile 0": (pb.ForecastRequest(model="fc-gru", series=[ONE], ask=ask(2, 0.5, 0.0)),
                   grpc.StatusCode.INVALID_ARGUMENT, "quantile 1 is 0.0; expected a level strictly"),
    "quantile 1.5": (pb.ForecastRequest(model="fc-gru", series=[ONE], ask=ask(2, 1.5)),
                     grpc.StatusCode.INVALID_ARGUMENT, "quantile 0 is 1.5"),
    "NaN in history": (forecast_request("fc-gru", np.array([1.0, np.nan, 2.0], np.float32)),
                       grpc.StatusCode.INVALID_ARGUMENT, "series 0 has nan at step 1; expected finite"),
    "empty history": (forecast_request("fc-gru", SERIES[:3], np.zeros(0, np.float32)),
                      grpc.StatusCode.INVALID_ARGUMENT, "series 1 has no observations"),
    "no series": (pb.ForecastRequest(model="fc-gru", ask=ask(3)), grpc.StatusCode.INVALID_ARGUMENT,
                  "no series"),
    "a classifier": (forecast_request("clf", SERIES[:10]), grpc.StatusCode.FAILED_PRECONDITION,
                     "model clf:1 is a many_to_one model; a forecast needs a forecaster"),
    "unknown model": (forecast_request("nope", SERIES[:10]), grpc.StatusCode.NOT_FOUND, "nope"),
}  # fmt: skip


@pytest.mark.parametrize("case", BAD_FORECASTS)
def test_bad_forecast_requests(forecast_server: ServerThread, case: str) -> None:
    request, code, message = BAD_FORECASTS[case]
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        forecast_call(forecast_server, request)
    assert raised.value.code() == code and message in raised.value.details(), raised.value.details()


BAD_STREAMS = {
    "forecast before any chunk": ([pb.StreamRequest(forecast=ask(3))], grpc.StatusCode.FAILED_PRECONDITION,
                                  "has no observation yet"),
    "NaN observation": ([chunk_request(np.array([[1.0], [np.inf]]))], grpc.StatusCode.INVALID_ARGUMENT,
                        "inf at step 1"),
    "horizon 0": ([chunk_request(SERIES[:5, None]), pb.StreamRequest(forecast=ask(0))],
                  grpc.StatusCode.INVALID_ARGUMENT, "horizon is 0"),
    "horizon over the limit": ([chunk_request(SERIES[:5, None]), pb.StreamRequest(forecast=ask(65))],
                               grpc.StatusCode.RESOURCE_EXHAUSTED, "horizon is 65 steps"),
    "quantile outside": ([chunk_request(SERIES[:5, None]), pb.StreamRequest(forecast=ask(2, -0.1))],
                         grpc.StatusCode.INVALID_ARGUMENT, "quantile 0 is -0.1"),
}  # fmt: skip


@pytest.mark.parametrize("case", BAD_STREAMS)
def test_bad_stream_forecasts_end_only_their_stream(forecast_server: ServerThread, case: str) -> None:
    requests, code, message = BAD_STREAMS[case]

    async def run():
        async with grpc.aio.insecure_channel(forecast_server.target) as channel:
            stub = pb_grpc.InferenceServiceStub(channel)
            bystander = stub.Stream()
            await bystander.write(open_request("fc-gru"))
            await bystander.read()
            await bystander.write(chunk_request(SERIES[:30, None]))
            before = await bystander.read()
            bad = await drive(stub, [open_request("fc-gru"), *requests])
            await bystander.write(pb.StreamRequest(forecast=ask(4)))
            after = await bystander.read()
            await bystander.write(END)
            await bystander.done_writing()
            await bystander.read()
            return bad, before, after, await bystander.code()

    bad, before, after, code_after = forecast_server.call(run())
    assert bad.code == code and message in bad.details, bad.details
    assert code_after == grpc.StatusCode.OK and before.HasField("chunk")
    assert_close(after.forecast, *reference("fc-gru", SERIES[:30], 4))
    engine = forecast_server.running.engine
    assert engine.repository.resolve("fc-gru", 0).open_streams == 0


def test_forecast_on_a_classifier_stream_and_a_start_time_on_a_classifier(
    forecast_server: ServerThread,
) -> None:
    x = np.zeros((3, 5), np.float32)
    outcome = stream_outcome(
        forecast_server, [open_request("clf"), chunk_request(x), pb.StreamRequest(forecast=ask(2))]
    )
    assert outcome.code == grpc.StatusCode.FAILED_PRECONDITION and "needs a forecaster" in outcome.details
    outcome = stream_outcome(forecast_server, [open_request("clf", start_unix_s=ORIGIN_S)])
    assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT and "only a forecaster" in outcome.details


def test_forecast_and_predict_commands_write_the_same_csv(
    forecast_server: ServerThread, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from seqserve.cli import app

    history = tmp_path / "history.csv"
    lines = ["series,timestamp,value"]
    for name, start, values in (("north", 3, SERIES[:60]), ("south", 0, SERIES[100:140])):
        for step, value in enumerate(values):
            stamp = datetime.datetime.fromtimestamp(ORIGIN_S + (start + step) * STEP_S, datetime.UTC)
            lines.append(f"{name},{stamp.replace(tzinfo=None).isoformat()},{value}")
    history.write_text("\n".join(lines) + "\n")
    common = ["--model", "fc-gru", "--data", str(history), "--horizon", "6", "--quantiles", "0.1,0.9"]
    served, offline = tmp_path / "served.csv", tmp_path / "offline.csv"
    runner = CliRunner()
    result = runner.invoke(
        app, ["forecast", "--target", forecast_server.target, *common, "--output", str(served),
              "--plot", str(tmp_path / "f.png")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    repository = str(forecast_server.config.repository)
    result = runner.invoke(app, ["predict", "--repository", repository, *common, "--output", str(offline)])
    assert result.exit_code == 0, result.output
    rows = served.read_text().splitlines()
    assert rows[0] == "series,timestamp,mean,q0.1,q0.9" and len(rows) == 1 + 2 * 6
    assert rows[1].startswith("north,2000-06-06T07:30:00,") and rows[7].startswith(
        "south,2000-06-05T20:00:00,"
    )
    got = np.array([[float(v) for v in row.split(",")[2:]] for row in rows[1:]])
    np.testing.assert_allclose(
        got,
        [[float(v) for v in row.split(",")[2:]] for row in offline.read_text().splitlines()[1:]],
        rtol=1e-5,
    )
    loc, _ = reference("fc-gru", SERIES[:60], 6, clock=3)
    np.testing.assert_allclose(got[:6, 0], loc, rtol=1e-4)
    assert (tmp_path / "f.png").stat().st_size > 10_000
    result = runner.invoke(
        app, ["forecast", "--target", forecast_server.target, *common[:4], "--horizon", "0"]
    )
    assert result.exit_code != 0
    result = runner.invoke(
        app, ["forecast", "--target", forecast_server.target, "--model", "fc-gru", "--data", str(history),
              "--horizon", "65"],
    )  # fmt: skip
    assert result.exit_code != 0 and "--max-forecast-steps" in result.output


def test_kserve_v2_forecasts_with_tritonclient(forecast_server: ServerThread) -> None:
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(url=forecast_server.target)

    def infer(y: np.ndarray, **options: object):
        tensor = grpcclient.InferInput("y", list(y.shape), "FP32")
        tensor.set_data_from_numpy(y.astype(np.float32))
        return client.infer("fc-gru", [tensor], **options)

    histories = np.stack([SERIES[:80], SERIES[40:120]])
    result = infer(histories, parameters={"forecast_horizon": 7, "forecast_quantiles": "0.1,0.9"})
    assert result.as_numpy("forecast_mean").shape == (2, 7) and result.as_numpy("loc") is None
    assert result.as_numpy("forecast_quantiles").shape == (2, 7, 2)
    for row, history in enumerate(histories):
        loc, scale = reference("fc-gru", history, 7)
        np.testing.assert_allclose(result.as_numpy("forecast_mean")[row], loc, rtol=1e-4)
        np.testing.assert_allclose(result.as_numpy("forecast_scale")[row], scale, rtol=1e-4)
        np.testing.assert_allclose(
            result.as_numpy("forecast_quantiles")[row, :, 1],
            loc + NormalDist().inv_cdf(0.9) * scale,
            rtol=1e-4,
        )
    # A sequence: chunks answered with loc and scale; a forecast asked with a chunk starts after it.
    infer(SERIES[None, :30], sequence_id=77, sequence_start=True)
    result = infer(SERIES[None, 30:50], sequence_id=77, parameters={"forecast_horizon": 5})
    assert result.as_numpy("loc").shape == (1, 20)
    np.testing.assert_allclose(
        result.as_numpy("forecast_mean")[0], reference("fc-gru", SERIES[:50], 5)[0], rtol=1e-4
    )
    result = infer(SERIES[None, 50:60], sequence_id=77, sequence_end=True, parameters={"forecast_horizon": 3})
    np.testing.assert_allclose(
        result.as_numpy("forecast_mean")[0], reference("fc-gru", SERIES[:60], 3)[0], rtol=1e-4
    )
    for parameters, message in (
        ({"forecast_horizon": 0}, "horizon is 0"),
        ({"forecast_horizon": 65}, "--max-forecast-steps"),
        ({"forecast_horizon": 3, "forecast_quantiles": "0.5,x"}, "expected numbers separated"),
        ({"forecast_quantiles": "0.5"}, "without forecast_horizon"),
        ({"forecast_horizon": "3"}, "expected an integer"),
    ):
        with pytest.raises(InferenceServerException) as raised:
            infer(histories, parameters=parameters)
        assert message in raised.value.message(), raised.value.message()
    client.close()


def test_a_kserve_v2_sequence_takes_its_calendar_phase_on_its_first_request(
    forecast_server: ServerThread,
) -> None:
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(url=forecast_server.target)

    def infer(model: str, name: str, x: np.ndarray, **options: object):
        tensor = grpcclient.InferInput(name, list(x.shape), "FP32")
        tensor.set_data_from_numpy(x.astype(np.float32))
        return client.infer(model, [tensor], **options)

    # tritonclient sends int parameters, not floats: whole Unix seconds
    start = int(ORIGIN_S + 7 * STEP_S + 86_400 * 14)  # 7 steps into the calendar, two weeks on
    infer("fc-gru", "y", SERIES[None, :30], sequence_id=78, sequence_start=True,
          parameters={"start_unix_s": start})  # fmt: skip
    result = infer("fc-gru", "y", SERIES[None, 30:50], sequence_id=78, parameters={"forecast_horizon": 8})
    loc, scale = reference("fc-gru", SERIES[:50], 8, clock=7 % 12)
    np.testing.assert_allclose(result.as_numpy("forecast_mean")[0], loc, rtol=1e-4)
    np.testing.assert_allclose(result.as_numpy("forecast_scale")[0], scale, rtol=1e-4)
    assert not np.allclose(loc, reference("fc-gru", SERIES[:50], 8)[0])
    refused = (
        (
            ("fc-gru", "y", SERIES[None, 50:60]),
            {"sequence_id": 78},
            "sets the calendar phase on the sequence's first",
        ),
        (("clf", "x", np.zeros((1, 3, 5))), {"sequence_id": 79, "sequence_start": True}, "only a forecaster"),
        (("fc-gru", "y", SERIES[None, :5]), {"sequence_id": 80, "sequence_start": True}, "expected a number"),
    )
    for (model, name, x), options, message in refused:
        start_param = "soon" if message == "expected a number" else start
        with pytest.raises(InferenceServerException) as raised:
            infer(model, name, x, parameters={"start_unix_s": start_param}, **options)
        assert message in raised.value.message() and raised.value.status() == "StatusCode.INVALID_ARGUMENT"
    # The refused requests opened nothing and harmed nothing: sequence 78 goes on from step 50.
    result = infer("fc-gru", "y", SERIES[None, 50:60], sequence_id=78, sequence_end=True,
                   parameters={"forecast_horizon": 3})  # fmt: skip
    np.testing.assert_allclose(
        result.as_numpy("forecast_mean")[0], reference("fc-gru", SERIES[:60], 3, clock=7 % 12)[0], rtol=1e-4
    )
    with pytest.raises(InferenceServerException, match="not open"):
        infer("clf", "x", np.zeros((1, 3, 5)), sequence_id=79)
    client.close()


def test_the_documented_tritonclient_forecast_prints_the_rollout(
    forecast_server: ServerThread, tmp_path: Path
) -> None:
    from .docs_examples import code_blocks, run_python_example

    code = code_blocks("triton.md", "python")[2]
    history = SERIES[:120]
    stamps = [datetime.datetime.fromtimestamp(ORIGIN_S + i * STEP_S, datetime.UTC) for i in range(120)]
    (tmp_path / "history.csv").write_text(
        "timestamp,value\n" + "".join(f"{t.isoformat()},{v}\n" for t, v in zip(stamps, history, strict=True))
    )
    assert '"taylor-gru"' in code
    lines = run_python_example(
        code.replace('"taylor-gru"', '"fc-gru"'), forecast_server.target, tmp_path / "f.py"
    )
    printed = np.array(" ".join(lines).replace("[", " ").replace("]", " ").split(), dtype=np.float64)
    loc, scale = reference("fc-gru", history, 48)
    np.testing.assert_allclose(printed[:48], loc, rtol=1e-4)
    np.testing.assert_allclose(printed[48:], loc + NormalDist().inv_cdf(0.9) * scale, rtol=1e-4)
