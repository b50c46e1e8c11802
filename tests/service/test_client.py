"""seqserve.Client and AsyncClient against real servers on loopback: every call, sync and async, answers
equal to the offline reference, resume between two servers equal to a stream that never moved, each error
class for a bad request, and a client used after close()."""

from __future__ import annotations

import asyncio
import socket
import time

import numpy as np
import pytest

import seqserve
from seqserve import errors
from seqserve.service.client.streams import AsyncStream
from seqserve.service.server.launch import ServerThread

from .reference import Offline
from .test_generation import lm_repository, lm_server  # noqa: F401 (fixtures: the language-model server)

TOLERANCE = 1e-5


def _dead_target() -> str:
    with socket.socket() as probe:  # bound, never listening: connections are refused
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


def test_importing_seqserve_loads_no_grpc() -> None:
    import subprocess
    import sys

    code = "import sys, seqserve; assert 'grpc' not in sys.modules; print(seqserve.__version__)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == seqserve.__version__


def test_sync_client_every_call(server: ServerThread, offline: Offline, sequences: dict) -> None:
    x = sequences["japanese_vowels"][0]
    with seqserve.Client(server.target) as client:
        names = [info.name for info in client.models()]
        assert {"jv-gru", "bms-gru"} <= set(names) and names == sorted(names)
        info = client.model("jv-gru")
        assert (info.name, info.task, info.features) == ("jv-gru", "many_to_one", 12)
        assert info.default_version and len(info.labels) == 9

        expected = offline.scores("jv-gru", x)[0]
        with client.stream("jv-gru", probabilities=True) as stream:
            answers = [stream.send(part) for part in (x[:5], x[5:10], x[10:])]
            ended = stream.end()
        assert [a.chunk_index for a in answers] == [0, 1, 2]
        assert answers[0].step_indexes.tolist() == [4]  # many-to-one: the label after the chunk's last step
        assert answers[-1].step_indexes.tolist() == [len(x) - 1]
        assert (ended.reason, ended.steps, ended.resumes) == ("completed", len(x), 0)
        np.testing.assert_allclose(ended.probabilities[0], expected, atol=TOLERANCE)
        assert ended.label == info.labels[int(expected.argmax())] == ended.labels[0]
        assert ended.label_indexes.tolist() == [int(expected.argmax())]

        classified = client.classify("jv-gru", sequences["japanese_vowels"][:3], probabilities=True)
        assert len(classified) == 3 and classified.model.name == "jv-gru"
        for answer, sequence in zip(classified, sequences["japanese_vowels"][:3], strict=True):
            expected_one = offline.scores("jv-gru", sequence)[0]
            np.testing.assert_allclose(answer.probabilities[0], expected_one, atol=TOLERANCE)
        assert client.predict("jv-gru", x).label == ended.label
        assert client.health() == "SERVING" and client.health("jv-gru") == "SERVING"


def test_pipelined_answers_equal_one_at_a_time_many_to_many(
    server: ServerThread, offline: Offline, sequences: dict
) -> None:
    x = sequences["basic_motions_stream"][0]
    parts = [x[i : i + 3] for i in range(0, len(x), 3)]
    with seqserve.Client(server.target) as client, client.stream("bms-gru", probabilities=True) as stream:
        answers = list(stream.answers(parts))
        ended = stream.end()
    assert [a.chunk_index for a in answers] == list(range(len(parts)))
    steps = np.concatenate([a.step_indexes for a in answers])
    assert steps.tolist() == list(range(len(x)))
    probabilities = np.concatenate([a.probabilities for a in answers])
    np.testing.assert_allclose(probabilities, offline.scores("bms-gru", x), atol=TOLERANCE)
    assert ended.steps == len(x) and len(ended) == 0  # many-to-many: every answer came with its chunk


def test_async_client_every_call(server: ServerThread, offline: Offline, sequences: dict) -> None:
    xs = sequences["japanese_vowels"][:4]

    async def run() -> tuple[list[str], list[str], str, str]:
        async with seqserve.AsyncClient(server.target, timeout=30) as client:
            assert (await client.model("jv-gru")).features == 12
            assert "jv-gru" in [m.name for m in await client.models()]

            async def one(x: np.ndarray) -> str:
                async with client.stream("jv-gru") as stream:
                    async for _ in stream.answers(np.array_split(x, 3)):
                        pass
                    return (await stream.end()).label

            streamed = await asyncio.gather(*(one(x) for x in xs))
            classified = [answer.label for answer in await client.classify("jv-gru", xs)]
            predicted = (await client.predict("jv-gru", xs[0])).label
            return list(streamed), classified, predicted, await client.health()

    streamed, classified, predicted, health = server.call(run())
    with seqserve.Client(server.target) as client:
        labels = list(client.model("jv-gru").labels)
    expected = [labels[int(offline.scores("jv-gru", x)[0].argmax())] for x in xs]
    assert streamed == classified == expected and predicted == expected[0] and health == "SERVING"


def test_a_stream_that_fails_over_mid_way_answers_as_one_that_did_not(
    make_server, state_key_file, sequences: dict
) -> None:
    # One row per onnxruntime call on both: answers do not depend on which streams share a call.
    a, b = (make_server(state_key_file=state_key_file, max_batch=1) for _ in range(2))
    x = np.concatenate(sequences["basic_motions_stream"][:2])
    parts = [x[i : i + 4] for i in range(0, len(x), 4)]
    with seqserve.Client(b.target) as client:
        with client.stream("bms-gru", probabilities=True, checkpoint_every=3) as alone:
            whole = [alone.send(part).probabilities for part in parts]
    with seqserve.Client([a.target, b.target]) as client:
        with client.stream("bms-gru", probabilities=True, checkpoint_every=3) as stream:
            moved = [stream.send(part).probabilities for part in parts[:7]]
            a.stop()  # drains: the stream ends with a checkpoint and goes on at b
            moved += [stream.send(part).probabilities for part in parts[7:]]
            ended = stream.end()
        assert stream.resumes == 1 and ended.resumes == 1
        assert ended.steps == len(x)
        assert 0 <= stream.resent_chunks <= 3
    for got, want in zip(moved, whole, strict=True):
        np.testing.assert_array_equal(got, want)  # exact: the state moved, not recomputed differently


def test_a_dead_first_target_is_skipped(server: ServerThread, sequences: dict) -> None:
    x = sequences["japanese_vowels"][0]
    with seqserve.Client([_dead_target(), server.target]) as client:
        assert client.model("jv-gru").name == "jv-gru"
        assert len(client.classify("jv-gru", [x])) == 1
        with client.stream("jv-gru") as stream:
            stream.send(x)
            assert stream.end().resumes == 1


def _past_its_deadline(client: seqserve.Client, x: np.ndarray) -> None:
    """A stream whose whole-stream timeout passes between two chunks."""
    with client.stream("jv-gru", timeout=0.5) as stream:
        stream.send(x[:2])
        time.sleep(0.8)
        stream.send(x[2:4])


@pytest.mark.parametrize(
    ("call", "error", "says"),
    [
        (lambda c, x: c.model("no-such-model"), errors.NotFound, "no-such-model"),
        (lambda c, x: c.classify("jv-gru", [x[:, :5]]), errors.InvalidArgument, "expects 12 features"),
        (
            lambda c, x: c.generate("jv-gru", "Now", max_tokens=3).collect(),
            errors.FailedPrecondition,
            "language",
        ),
        (lambda c, x: c.stream("jv-gru", checkpoint_every=1).send(x), errors.FailedPrecondition, "state key"),
        (_past_its_deadline, errors.DeadlineExceeded, "Deadline"),
    ],
    ids=["NotFound", "InvalidArgument", "FailedPrecondition", "no state key", "DeadlineExceeded"],
)
def test_each_refusal_is_its_error_class_with_code_and_message(
    server: ServerThread, sequences: dict, call, error: type, says: str
) -> None:
    x = sequences["japanese_vowels"][0]
    with seqserve.Client(server.target) as client, pytest.raises(error) as raised:
        call(client, x)
    assert raised.value.code in {e for e in ("NOT_FOUND", "INVALID_ARGUMENT", "FAILED_PRECONDITION",
                                             "DEADLINE_EXCEEDED")}  # fmt: skip
    assert says in raised.value.message
    assert isinstance(raised.value, errors.SeqserveError)


def test_resource_exhausted_and_unavailable(make_server, sequences: dict) -> None:
    small = make_server(max_chunk_steps=4)
    x = sequences["japanese_vowels"][0]
    with seqserve.Client(small.target) as client, client.stream("jv-gru") as stream:
        with pytest.raises(errors.ResourceExhausted, match="4"):
            stream.send(x[:5])
    with seqserve.Client(_dead_target(), timeout=5) as client, pytest.raises(errors.Unavailable):
        client.models()


def test_a_closed_client_says_so(server: ServerThread, sequences: dict) -> None:
    client = seqserve.Client(server.target)
    stream = client.stream("jv-gru")
    client.close()
    x = sequences["japanese_vowels"][0]
    for call in (client.models, lambda: client.model("jv-gru"), lambda: stream.send(x)):
        with pytest.raises(errors.ClientClosed, match="is closed"):
            call()
    client.close()  # twice is fine


def test_generate_streams_text_and_says_why_it_stopped(lm_server: ServerThread) -> None:  # noqa: F811
    with seqserve.Client(lm_server.target) as client:
        generation = client.generate("lm-gru", "Now", max_tokens=12, seed=1)
        pieces = list(generation)
        assert "".join(pieces) == generation.text and len(generation.text) == 12
        assert generation.end is not None and (generation.end.reason, generation.end.tokens) == (
            "max_tokens",
            12,
        )
        assert client.generate("lm-gru", "Now", max_tokens=12, seed=1).collect() == generation.text

    async def run() -> str:
        async with seqserve.AsyncClient(lm_server.target) as client:
            return "".join([piece async for piece in client.generate("lm-gru", "Now", max_tokens=12, seed=1)])

    assert lm_server.call(run()) == generation.text


def test_sync_calls_from_the_clients_own_loop_are_refused(server: ServerThread) -> None:
    async def inside() -> None:
        seqserve.Client(server.target).models()

    with pytest.raises(RuntimeError, match="AsyncClient"):
        server.call(inside())


def test_async_stream_type_is_exported() -> None:
    assert seqserve.AsyncStream is AsyncStream
