"""The KServe V2 / Triton endpoint with the real clients: tritonclient.grpc (sync streaming and unary) and
tritonclient.grpc.aio drive interleaved sequences, and every answer equals the seqserve.v1 Stream result and
the offline onnxruntime result."""

from __future__ import annotations

import asyncio
import json
import queue

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient

from seqserve.service.client.client import AsyncClient
from seqserve.service.client.load import stream_sequence
from seqserve.service.server.launch import ServerThread

from .reference import MODEL_DATA, Offline
from .triton_requests import OUTPUT_NAMES, Joined, Part, interleaved, join, softmax

TOLERANCE = 1e-5
SEQUENCES = 16


def _workload(sequences: dict, model: str) -> tuple[list[np.ndarray], list[int]]:
    """16 sequences of the model's test set (repeated where the set has fewer), chunks of 1 to 7 steps."""
    pool = sequences[MODEL_DATA[model]]
    xs = [pool[i % len(pool)] for i in range(SEQUENCES)]
    return xs, [1 + i % 7 for i in range(SEQUENCES)]


def _inputs(x: np.ndarray) -> list[grpcclient.InferInput]:
    tensor = grpcclient.InferInput("x", [1, *x.shape], "FP32")
    tensor.set_data_from_numpy(np.ascontiguousarray(x[None], dtype=np.float32))
    return [tensor]


def _outputs(result) -> dict[str, np.ndarray]:
    return {name: result.as_numpy(name) for name in OUTPUT_NAMES}


def _infer_once(target: str, model: str, inputs: list, **options) -> grpcclient.InferResult:
    """One ModelInfer call on a client of its own (tritonclient's `infer` keywords in `options`)."""
    client = grpcclient.InferenceServerClient(url=target)
    try:
        return client.infer(model, inputs, **options)
    finally:
        client.close()


def _by_sequence(parts: list[Part], answers: dict[str, dict], count: int) -> list[list[dict]]:
    grouped: list[list[dict]] = [[] for _ in range(count)]
    for part in sorted(parts, key=lambda p: (p.index, p.number)):
        grouped[part.index].append(answers[part.request_id])
    return grouped


def _check(
    model: str, xs: list[np.ndarray], chunks: list[int], joined: list[Joined], offline: Offline, v1: list
) -> None:
    for x, chunk, got, stream in zip(xs, chunks, joined, v1, strict=True):
        expected = offline.scores(model, x)
        where = f"{model}, {len(x)} steps in chunks of {chunk}"
        if expected.shape[0] == 1:  # many-to-one: one answer per request, the last one is the sequence's
            prefixes = [min(n, len(x)) for n in range(chunk, len(x) + chunk, chunk)]
            assert got.labels.tolist() == [int(offline.scores(model, x[:n]).argmax()) for n in prefixes], (
                where
            )
            assert got.labels.tolist() == stream.running, where
            final = got.scores[-1:]
        else:
            final = got.scores
            assert got.labels.tolist() == stream.labels.tolist(), where
        np.testing.assert_allclose(final, expected, atol=TOLERANCE, err_msg=where)
        np.testing.assert_allclose(final, stream.scores, atol=TOLERANCE, err_msg=where)
        assert final.argmax(axis=-1).tolist() == expected.argmax(axis=-1).tolist(), where
        np.testing.assert_allclose(softmax(got.logits), got.scores, atol=TOLERANCE, err_msg=where)


def _v1_streams(server: ServerThread, model: str, xs: list[np.ndarray], chunks: list[int]) -> list:
    async def run() -> list:
        async with AsyncClient(server.target) as client:
            return await asyncio.gather(
                *(
                    stream_sequence(client, model, x, c, include_scores=True)
                    for x, c in zip(xs, chunks, strict=True)
                )
            )

    return server.call(run())


def _sync_stream(target: str, model: str, xs: list, parts: list[Part], ids: list) -> dict[str, dict]:
    """tritonclient.grpc: every part on one stream, as fast as it can send; answers keyed by request id."""
    received: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(url=target)
    client.start_stream(callback=lambda result, error: received.put((result, error)))
    try:
        for part in parts:
            client.async_stream_infer(
                model,
                _inputs(xs[part.index][part.start : part.stop]),
                request_id=part.request_id,
                sequence_id=ids[part.index],
                sequence_start=part.first,
                sequence_end=part.last,
            )
        answers, order = {}, []
        for _ in parts:
            result, error = received.get(timeout=60)
            assert error is None, error
            request_id = result.get_response().id
            answers[request_id] = _outputs(result)
            order.append(request_id)
    finally:
        client.stop_stream()
        client.close()
    for index in range(len(xs)):  # each sequence's answers came back in the order it sent them
        numbers = [int(r.split(":")[1]) for r in order if r.split(":")[0] == str(index)]
        assert numbers == sorted(numbers)
    return answers


@pytest.mark.parametrize("model", ["jv-gru", "jv-lstm", "bms-gru", "bms-lstm"])
def test_sync_stream_of_16_interleaved_sequences_equals_v1_and_offline(
    server: ServerThread, offline: Offline, sequences: dict, model: str
) -> None:
    xs, chunks = _workload(sequences, model)
    parts = interleaved([len(x) for x in xs], chunks)
    answers = _sync_stream(server.target, model, xs, parts, ids=[1000 + i for i in range(SEQUENCES)])
    many_to_many = model.startswith("bms")
    joined = [join(group, many_to_many) for group in _by_sequence(parts, answers, len(xs))]
    _check(model, xs, chunks, joined, offline, _v1_streams(server, model, xs, chunks))
    assert server.running.store.open_count == 0  # every sequence_end freed its state


async def _aio_stream(target: str, model: str, xs: list, parts: list[Part], ids: list) -> dict[str, dict]:
    async def requests():
        for part in parts:
            yield {
                "model_name": model,
                "inputs": _inputs(xs[part.index][part.start : part.stop]),
                "request_id": part.request_id,
                "sequence_id": ids[part.index],
                "sequence_start": part.first,
                "sequence_end": part.last,
            }

    answers = {}
    async with aioclient.InferenceServerClient(url=target) as client:
        async for result, error in client.stream_infer(requests()):
            assert error is None, error
            answers[result.get_response().id] = _outputs(result)
            if len(answers) == len(parts):
                break
    return answers


@pytest.mark.parametrize("model", ["jv-lstm", "bms-gru"])
def test_aio_stream_with_string_ids_equals_v1_and_offline_and_shares_calls(
    make_server, offline: Offline, sequences: dict, model: str
) -> None:
    running = make_server(max_delay_ms=20.0)
    xs, chunks = _workload(sequences, model)
    parts = interleaved([len(x) for x in xs], chunks)
    ids = [f"sensor-{i}" for i in range(SEQUENCES)]
    answers = running.call(_aio_stream(running.target, model, xs, parts, ids))
    many_to_many = model.startswith("bms")
    joined = [join(group, many_to_many) for group in _by_sequence(parts, answers, len(xs))]
    _check(model, xs, chunks, joined, offline, _v1_streams(running, model, xs, chunks))
    registry = running.running.metrics.registry
    labels = {"model": model, "version": "1"}
    calls = registry.get_sample_value("seqserve_batch_size_count", labels)
    rows = registry.get_sample_value("seqserve_batch_size_sum", labels)
    assert rows >= len(parts) and calls < len(parts)  # requests of different sequences shared calls


def test_model_infer_with_sequence_ids_over_unary_calls(
    server: ServerThread, offline: Offline, sequences: dict
):
    model = "jv-gru"
    xs, chunks = _workload(sequences, model)
    xs, chunks = xs[:4], chunks[:4]
    parts = interleaved([len(x) for x in xs], chunks)
    client = grpcclient.InferenceServerClient(url=server.target)
    answers = {}
    for part in parts:
        result = client.infer(
            model,
            _inputs(xs[part.index][part.start : part.stop]),
            request_id=part.request_id,
            sequence_id=77 + part.index if part.index % 2 else f"unary-{part.index}",
            sequence_start=part.first,
            sequence_end=part.last,
        )
        assert result.get_response().id == part.request_id
        answers[part.request_id] = _outputs(result)
    joined = [join(group, False) for group in _by_sequence(parts, answers, len(xs))]
    _check(model, xs, chunks, joined, offline, _v1_streams(server, model, xs, chunks))
    client.close()


@pytest.mark.parametrize("model", ["jv-bigru", "bms-lstm"])
def test_model_infer_without_sequence_id_is_a_whole_sequence(
    server: ServerThread, offline: Offline, sequences: dict, model: str
) -> None:
    x = sequences[MODEL_DATA[model]][3]
    outputs = [grpcclient.InferRequestedOutput("scores"), grpcclient.InferRequestedOutput("label")]
    result = _infer_once(server.target, model, _inputs(x), outputs=outputs)
    scores, label = result.as_numpy("scores"), result.as_numpy("label")
    assert result.as_numpy("logits") is None  # only what was asked for
    expected = offline.scores(model, x)
    np.testing.assert_allclose(scores[0] if model.startswith("bms") else scores, expected, atol=TOLERANCE)
    assert label.dtype == np.int64 and label.reshape(-1).tolist() == expected.argmax(axis=-1).tolist()


@pytest.mark.parametrize("model", ["jv-gru", "bms-lstm"])
def test_model_infer_without_sequence_id_answers_every_row_of_a_batch(
    server: ServerThread, offline: Offline, sequences: dict, model: str
) -> None:
    """Rows of one stateless request come back stacked in the order sent: [batch, steps, ...] for
    many-to-many, [batch, ...] for many-to-one."""
    pool = sequences[MODEL_DATA[model]]
    steps = min(len(x) for x in pool[:3])
    batch = np.stack([x[:steps] for x in pool[:3]]).astype(np.float32)
    tensor = grpcclient.InferInput("x", list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch)
    result = _infer_once(server.target, model, [tensor])
    expected = np.stack([offline.scores(model, x) for x in batch])
    many_to_many = model.startswith("bms")
    expected = expected if many_to_many else expected[:, 0]
    scores, label, logits = (result.as_numpy(name) for name in ("scores", "label", "logits"))
    assert scores.shape == logits.shape == expected.shape and label.shape == expected.shape[:-1]
    np.testing.assert_allclose(scores, expected, atol=TOLERANCE)
    np.testing.assert_allclose(softmax(logits), scores, atol=TOLERANCE)
    assert label.tolist() == expected.argmax(axis=-1).tolist()


def _parsed_classes(texts: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Triton's "<value>:<index>:<label>" strings -> values, indexes, labels."""
    fields = [text.decode().split(":", 2) for text in texts.reshape(-1)]
    values = np.array([float(f[0]) for f in fields]).reshape(texts.shape)
    indexes = np.array([int(f[1]) for f in fields]).reshape(texts.shape)
    return values, indexes, [f[2] for f in fields]


@pytest.mark.parametrize("model", ["jv-gru", "bms-lstm"])
def test_classification_extension_gives_the_top_classes_as_triton_writes_them(
    server: ServerThread, offline: Offline, sequences: dict, model: str
) -> None:
    """tritonclient's class_count, stateless and in a sequence: BYTES [..., count], highest first."""
    x = sequences[MODEL_DATA[model]][2]
    client = grpcclient.InferenceServerClient(url=server.target)
    labels = json.loads(client.get_model_config(model).config.parameters["seqserve.labels"].string_value)
    assert "classification" in client.get_server_metadata().extensions
    outputs = [
        grpcclient.InferRequestedOutput("scores", class_count=3),
        grpcclient.InferRequestedOutput("label"),
    ]
    stateless = client.infer(model, _inputs(x), outputs=outputs)
    # The same sequence in two requests of a sequence: the second answer covers the whole sequence.
    half = len(x) // 2
    client.infer(model, _inputs(x[:half]), sequence_id=4242, sequence_start=True, outputs=outputs)
    second = client.infer(model, _inputs(x[half:]), sequence_id=4242, sequence_end=True, outputs=outputs)
    client.close()
    expected = offline.scores(model, x)  # [steps, classes] or [1, classes]
    many_to_many = model.startswith("bms")
    for result, steps in ((stateless, expected), (second, expected[half:] if many_to_many else expected)):
        texts = result.as_numpy("scores")
        assert result.get_output("scores").datatype == "BYTES"
        assert texts.shape == ((1, len(steps), 3) if many_to_many else (1, 3))
        values, indexes, names = _parsed_classes(texts)
        wanted = np.argsort(-steps, axis=-1, kind="stable")[:, :3].reshape(indexes.shape)
        assert indexes.tolist() == wanted.tolist()
        np.testing.assert_allclose(
            values,
            np.take_along_axis(steps, wanted.reshape(len(steps), 3), -1).reshape(values.shape),
            atol=TOLERANCE,
        )
        assert names == [labels[i] for i in indexes.reshape(-1)]
        assert (values[..., :-1] >= values[..., 1:]).all()
        assert result.as_numpy("label").reshape(-1).tolist() == indexes[..., 0].reshape(-1).tolist()


def test_classification_count_above_the_classes_gives_every_class(
    server: ServerThread, sequences: dict
) -> None:
    x = sequences[MODEL_DATA["jv-gru"]][0]
    outputs = [grpcclient.InferRequestedOutput("logits", class_count=99)]
    result = _infer_once(server.target, "jv-gru", _inputs(x), outputs=outputs)
    texts = result.as_numpy("logits")
    _, indexes, _ = _parsed_classes(texts)
    assert texts.shape == (1, 9) and sorted(indexes.reshape(-1).tolist()) == list(range(9))


def test_priority_timeout_and_custom_parameters_are_accepted_and_change_nothing(
    server: ServerThread, offline: Offline, sequences: dict
) -> None:
    """docs/triton.md: Triton's `priority` and `timeout` request parameters and a client's own are read
    past; the answer is the one without them."""
    x = sequences[MODEL_DATA["jv-gru"]][1]
    result = _infer_once(
        server.target, "jv-gru", _inputs(x), priority=1, timeout=1000, parameters={"tenant": "a"}
    )
    np.testing.assert_allclose(result.as_numpy("scores"), offline.scores("jv-gru", x), atol=TOLERANCE)


def test_enable_empty_final_response_flags_each_answer_final(server: ServerThread, sequences: dict) -> None:
    """A client written for decoupled models waits for `triton_final_response`: every answer carries it,
    only for requests that asked (refusals: test_kserve_v2_errors)."""
    x = sequences[MODEL_DATA["jv-gru"]][0]
    received: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(url=server.target)
    client.start_stream(callback=lambda result, error: received.put((result, error)))
    try:
        sends = [
            ("a0", 0, 3, True, False, True),
            ("a1", 3, 6, False, True, True),
            ("b0", 0, 2, True, True, False),
        ]
        for request_id, start, stop, first, last, asks in sends:
            client.async_stream_infer(
                "jv-gru", _inputs(x[start:stop]), request_id=request_id, sequence_id=request_id[0] + "-final",
                sequence_start=first, sequence_end=last, enable_empty_final_response=asks,
            )  # fmt: skip
        flags = {}
        for _ in sends:
            result, error = received.get(timeout=60)
            assert error is None, error
            response = result.get_response()
            parameter = response.parameters.get("triton_final_response")
            flags[response.id] = None if parameter is None else parameter.bool_param
    finally:
        client.stop_stream()
        client.close()
    assert flags == {"a0": True, "a1": True, "b0": None}
