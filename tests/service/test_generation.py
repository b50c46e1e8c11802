"""Generate on a language model: greedy equals the PyTorch and onnxruntime loops, seeded sampling is the
same alone and among 31 others (and in larger messages), many generations share calls, stop strings, every
bad request, cancel frees the row, a reader that stops bounds the lead, a drain ends a generation with
SERVER_SHUTDOWN; and Stream / Classify answer a language model per step over token chunks."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch

from seqserve.errors import SeqserveError
from seqserve.export.graph import build_model
from seqserve.export.inference import OnnxClassifier
from seqserve.export.job import export_run
from seqserve.export.repository import VersionFiles, write_versions
from seqserve.service.client.client import AsyncClient
from seqserve.service.client.load import Generated, generate
from seqserve.service.config import ServerConfig
from seqserve.service.kinds import language_model as generation
from seqserve.service.server.launch import ServerThread
from seqserve.training.language_model import greedy_text
from seqserve.training.model import load_checkpoint
from seqserve.v1 import seqserve_pb2 as pb
from seqserve.v1 import seqserve_pb2_grpc as pb_grpc

from ..export.tiny_models import make_language_model, make_model
from .streams import END, drive, open_request

MAX_GENERATE = 300
CORPUS = "Now is the winter of our discontent\nMade glorious summer by this sun of York;\n" * 30


@pytest.fixture(scope="module")
def lm_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """lm-gru: trained a few steps on a small text and exported (parity checked); lm-lstm: random two-layer
    LSTM; clf: a random classifier, for the requests a language model alone can answer."""
    from seqserve.training.text_loop import TextTrainConfig, train_text

    root = tmp_path_factory.mktemp("generation")
    (root / "corpus.txt").write_text(CORPUS)
    run_dir, _ = train_text(
        TextTrainConfig(
            out=root / "lm-gru",
            data=root / "corpus.txt",
            hidden=24,
            embedding=8,
            batch_size=4,
            bptt=32,
            max_steps=20,
            eval_every=20,
            lr=0.01,
            threads=1,
        )  # fmt: skip
    )
    repository = root / "repository"
    export_run(run_dir, repository)
    for model, info in (make_language_model("lstm", layers=2), make_model("gru", 1, "many_to_one")):
        if info.name == "t-gru":
            info.name = "clf"
        write_versions(repository, [VersionFiles(build_model(model, info), info)])
    return repository


@pytest.fixture(scope="module")
def lm_server(lm_repository: Path) -> Iterator[ServerThread]:
    # A long max delay: the batching assertion must not depend on how fast this machine schedules tasks.
    config = ServerConfig(repository=lm_repository, port=0, metrics_port=-1, grace_s=1.0,
                          max_generate_tokens=MAX_GENERATE, max_delay_ms=10.0)  # fmt: skip
    with ServerThread(config) as running:
        yield running


def run_generations(server: ServerThread, requests: list[dict]) -> list[Generated]:
    """Every request at once, on one channel."""

    async def run() -> list[Generated]:
        async with AsyncClient(server.target) as client:
            return list(await asyncio.gather(*(generate(client, **request) for request in requests)))

    return server.call(run())


def one(server: ServerThread, **request: object) -> Generated:
    return run_generations(server, [request])[0]


def onnx_greedy(repository: Path, model: str, vocabulary: list[str], prompt: str, tokens: int) -> str:
    """The bare onnxruntime loop: the prompt as one call, then one call per character."""
    from seqserve.contract import read_model_info

    info = read_model_info(repository / model / "1")
    session = OnnxClassifier((repository / model / "1" / "model.onnx").read_bytes(), info)
    ids = np.array([[vocabulary.index(c) for c in prompt]])
    logits, state = session.run(ids, np.array([ids.shape[1]], dtype=np.int32))
    out = []
    for _ in range(tokens):
        token = int(logits[0, -1].argmax())
        out.append(vocabulary[token])
        logits, state = session.run(np.array([[token]]), np.array([1], dtype=np.int32), state)
    return "".join(out)


def test_greedy_generation_equals_the_pytorch_and_onnxruntime_loops(lm_server: ServerThread,
                                                                    lm_repository: Path) -> None:  # fmt: skip
    model, payload = load_checkpoint(str(lm_repository.parent / "lm-gru" / "checkpoint.pt"))
    vocabulary = payload["vocabulary"]
    prompt = "Now is the w"
    served = one(lm_server, model="lm-gru", prompt=prompt, max_tokens=120, temperature=0.0)
    assert served.reason == pb.GENERATE_STOP_REASON_MAX_TOKENS and served.tokens == 120
    with torch.no_grad():
        assert served.text == greedy_text(model, vocabulary, prompt, 120)
    assert served.text == onnx_greedy(lm_repository, "lm-gru", vocabulary, prompt, 120)
    lstm, info = make_language_model("lstm", layers=2)
    served = one(lm_server, model="lm-lstm", prompt="abc.", max_tokens=80)
    assert served.text == greedy_text(lstm, info.vocabulary, "abc.", 80)


def _inference_calls(server: ServerThread, model: str) -> float:
    registry = server.running.metrics.registry
    return registry.get_sample_value("seqserve_batch_size_count", {"model": model, "version": "1"}) or 0.0


def test_seeded_sampling_is_the_same_alone_and_among_31_others(lm_server: ServerThread) -> None:
    probe = {
        "model": "lm-gru",
        "prompt": "Made ",
        "max_tokens": 150,
        "temperature": 0.9,
        "top_k": 10,
        "seed": 7,
    }
    alone = one(lm_server, **probe)
    others = [
        {
            **probe,
            "seed": 100 + i,
            "prompt": ["N", "Made glorious ", "of "][i % 3],
            "temperature": 0.5 * (i % 4),
        }
        for i in range(31)
    ]
    before = _inference_calls(lm_server, "lm-gru")
    results = run_generations(lm_server, [*others[:15], probe, *others[15:]])
    calls = _inference_calls(lm_server, "lm-gru") - before
    assert results[15].text == alone.text and len(alone.text) == 150
    # Among 32, messages carry several tokens each (the write budget); the text is the same.
    assert results[15].messages < results[15].tokens
    assert one(lm_server, **{**probe, "seed": 8}).text != alone.text
    assert len({r.text for r in results}) > 10  # the others really sampled, each its own way
    # 32 generations of 150 steps run alone would make 4,800 calls; batched, about one call per step.
    assert calls < 32 * 150 / 8, f"{calls} onnxruntime calls for 32 generations of 150 tokens"


def test_a_stop_string_ends_the_generation_with_it(lm_server: ServerThread) -> None:
    greedy = one(lm_server, model="lm-gru", prompt="Now", max_tokens=60).text
    stop = greedy[25:28]
    end = greedy.index(stop) + len(stop)
    stopped = one(lm_server, model="lm-gru", prompt="Now", max_tokens=60, stop=["@never", stop])
    assert (stopped.reason, stopped.stop, stopped.text) == (
        pb.GENERATE_STOP_REASON_STOP_STRING,
        stop,
        greedy[:end],
    )
    assert stopped.tokens == end
    # Among 23 others each message carries about 3 tokens: the stop may span two, and nothing after it goes.
    crowd = [{"model": "lm-gru", "prompt": "Made ", "max_tokens": 60}] * 23
    grouped = run_generations(lm_server, [{"model": "lm-gru", "prompt": "Now", "max_tokens": 60,
                                           "stop": ["@never", stop]}, *crowd])[0]  # fmt: skip
    assert (grouped.reason, grouped.text, grouped.tokens) == (stopped.reason, stopped.text, stopped.tokens)


Code = grpc.StatusCode
BAD_REQUESTS = {
    "character outside the vocabulary": (
        {"prompt": "Now€"},
        Code.INVALID_ARGUMENT,
        "prompt character '€' at position 3 is not in the vocabulary of model lm-gru:1",
    ),
    "empty prompt": ({"prompt": ""}, Code.INVALID_ARGUMENT, "prompt is empty"),
    "no max_tokens": ({"max_tokens": 0}, Code.INVALID_ARGUMENT, "max_tokens is 0; expected 1 to 300"),
    "max_tokens over the limit": (
        {"max_tokens": MAX_GENERATE + 1},
        Code.RESOURCE_EXHAUSTED,
        "max_tokens is 301, the server's limit is 300",
    ),
    "negative temperature": ({"temperature": -0.5}, Code.INVALID_ARGUMENT, "temperature is -0.5; expected"),
    "NaN temperature": ({"temperature": float("nan")}, Code.INVALID_ARGUMENT, "temperature is nan"),
    "top_k above the vocabulary": (
        {"top_k": 500},
        Code.INVALID_ARGUMENT,
        "top_k is 500; expected 0 (all) to",
    ),
    "empty stop string": ({"stop": ["x", ""]}, Code.INVALID_ARGUMENT, "stop string 1 is empty"),
    "a classifier": ({"model": "clf"}, Code.FAILED_PRECONDITION, "model clf:1 is a many_to_one classifier"),
    "unknown model": ({"model": "nope"}, Code.NOT_FOUND, "model 'nope' is not served"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_every_bad_request_fails_with_its_code_and_says_why(lm_server: ServerThread, case: str) -> None:
    changes, code, message = BAD_REQUESTS[case]
    with pytest.raises(SeqserveError) as raised:  # the client's exception for the status, never grpc's
        one(lm_server, **{"model": "lm-gru", "prompt": "Now", "max_tokens": 5, **changes})
    assert raised.value.code == code.name
    assert message in raised.value.message
    assert lm_server.running.store.open_count == 0


def test_cancelling_a_generation_frees_its_row_at_once(lm_server: ServerThread) -> None:
    store = lm_server.running.store

    async def run() -> tuple[int, int]:
        async with grpc.aio.insecure_channel(lm_server.target) as channel:
            stub = pb_grpc.InferenceServiceStub(channel)
            call = stub.Generate(pb.GenerateRequest(model="lm-gru", prompt="Now", max_tokens=MAX_GENERATE,
                                                    temperature=1.0))  # fmt: skip
            for _ in range(3):
                await call.read()
            open_while_running = store.open_count
            call.cancel()
            for _ in range(500):  # the server sees the cancel on its next await
                if store.open_count == 0:
                    break
                await asyncio.sleep(0.01)
            return open_while_running, store.open_count

    assert lm_server.call(run()) == (1, 0)
    assert store.state_bytes == 0
    registry = lm_server.running.metrics.registry
    labels = {"model": "lm-gru", "version": "1", "reason": "cancelled"}
    assert registry.get_sample_value("seqserve_streams_total", labels) >= 1


def _steps(server: ServerThread) -> float:
    registry = server.running.metrics.registry
    return registry.get_sample_value("seqserve_steps_total", {"model": "lm-gru", "version": "1"}) or 0.0


def test_a_reader_that_stops_bounds_the_lead_and_gets_the_same_text_in_larger_pieces(
    lm_server: ServerThread,
) -> None:
    """Engine level: the first send blocks until released (a client that stops reading). The generation
    makes MAX_UNSENT_TOKENS more tokens, pauses, then sends them as one piece once released."""
    engine = lm_server.running.engine
    model = engine.repository.resolve("lm-gru", 0)
    params = generation.GenerateParams(prompt="Made ", max_tokens=MAX_GENERATE, temperature=0.8, seed=3)
    prompt = generation.encode_prompt(model, params, MAX_GENERATE, 4096)
    lead = generation.MAX_UNSENT_TOKENS

    async def run() -> tuple[list[generation.Piece], list[generation.Piece], float, float, float]:
        fast: list[generation.Piece] = []

        async def keep_up(piece: generation.Piece) -> None:
            fast.append(piece)

        await generation.run_generation(engine.store, model, params, prompt, 30.0, keep_up)
        slow: list[generation.Piece] = []
        release = asyncio.Event()

        async def stalled(piece: generation.Piece) -> None:
            slow.append(piece)
            await release.wait()

        before = _steps(lm_server)
        task = asyncio.ensure_future(
            generation.run_generation(engine.store, model, params, prompt, 30.0, stalled)
        )
        for _ in range(1000):  # bounded: the pause comes after lead steps, a fraction of a second here
            if _steps(lm_server) - before >= len(prompt) + lead:
                break
            await asyncio.sleep(0.01)
        paused_at = _steps(lm_server) - before
        for _ in range(20):  # it stays paused: no step while the reader is stalled
            await asyncio.sleep(0.01)
        still = _steps(lm_server) - before
        release.set()
        end = await task
        return fast, slow, paused_at, still, end.tokens

    fast, slow, paused_at, still, tokens = lm_server.call(run(), timeout_s=60)
    assert paused_at == still == len(prompt) + lead
    assert "".join(p.text for p in slow) == "".join(p.text for p in fast) and tokens == MAX_GENERATE
    # The stalled send held one token; the lead went out as the next piece, all at once.
    assert [len(p.ids) for p in slow[:2]] == [1, lead]
    assert [p.index for p in slow] == [sum(len(q.ids) for q in slow[:i]) for i in range(len(slow))]
    assert [t for p in slow for t in p.ids] == [t for p in fast for t in p.ids]
    assert lm_server.running.store.open_count == 0


def test_a_drain_ends_a_generation_with_server_shutdown_and_frees_its_row(lm_repository: Path) -> None:
    config = ServerConfig(repository=lm_repository, port=0, metrics_port=-1, grace_s=0.2,
                          max_generate_tokens=10_000_000)  # fmt: skip
    server = ServerThread(config).start()

    async def run() -> tuple:
        async with grpc.aio.insecure_channel(server.target) as channel:
            stub = pb_grpc.InferenceServiceStub(channel)
            call = stub.Generate(pb.GenerateRequest(model="lm-gru", prompt="Now", max_tokens=10_000_000))
            text = [(await call.read()).text.text]
            drain = asyncio.ensure_future(server.running.drain())
            while (response := await call.read()).HasField("text"):  # on through the grace period
                text.append(response.text.text)
            await drain
            return response.ended, "".join(text), await call.code(), await call.details()

    store = server.running.store
    try:
        ended, text, code, details = server.call(run(), timeout_s=60)
        server.running = None  # drained by the scenario
    finally:
        server.stop()
    assert ended.reason == pb.GENERATE_STOP_REASON_SERVER_SHUTDOWN and "shut down" in ended.message
    assert 0 < ended.tokens == len(text) < 10_000_000
    assert code == grpc.StatusCode.UNAVAILABLE and "retry on another replica" in details
    assert store.open_count == 0 and store.state_bytes == 0


def _chunk(tokens: list[int]) -> pb.StreamRequest:
    return pb.StreamRequest(chunk=pb.StreamChunk(steps=len(tokens), tokens=tokens))


def test_stream_and_classify_answer_a_language_model_per_step(lm_server: ServerThread,
                                                              lm_repository: Path) -> None:  # fmt: skip
    from seqserve.contract import read_model_info

    info = read_model_info(lm_repository / "lm-gru" / "1")
    tokens = [info.vocabulary.index(c) for c in "Made glorious summer"]
    session = OnnxClassifier((lm_repository / "lm-gru" / "1" / "model.onnx").read_bytes(), info)
    logits, _ = session.run(np.array([tokens]), np.array([len(tokens)], dtype=np.int32))
    expected = logits[0].argmax(axis=-1).tolist()

    async def run() -> tuple[list[int], list[int]]:
        async with grpc.aio.insecure_channel(lm_server.target) as channel:
            stub = pb_grpc.InferenceServiceStub(channel)
            outcome = await drive(stub, [open_request("lm-gru"), _chunk(tokens[:7]), _chunk(tokens[7:]), END])
            streamed = [
                s.label_index for r in outcome.responses if r.HasField("chunk") for s in r.chunk.results
            ]
            request = pb.ClassifyRequest(
                model="lm-gru", sequences=[pb.Sequence(steps=len(tokens), tokens=tokens)]
            )
            response = await stub.Classify(request)
            return streamed, [s.label_index for s in response.results[0].results]

    streamed, classified = lm_server.call(run())
    assert streamed == classified == expected


TOKEN_ERRORS = {
    "float values to a language model": (
        "lm-gru",
        pb.StreamChunk(steps=1, values=b"\0" * 4),
        "takes token ids in `tokens`",
    ),
    "token out of range": ("lm-gru", pb.StreamChunk(steps=2, tokens=[1, 999]), "token 999 at step 1"),
    "tokens and steps disagree": ("lm-gru", pb.StreamChunk(steps=3, tokens=[1, 2]), "2 tokens for 3 steps"),
    "tokens to a classifier": ("clf", pb.StreamChunk(steps=1, tokens=[1]), "takes float32 values"),
}


@pytest.mark.parametrize("case", list(TOKEN_ERRORS))
def test_bad_token_chunks_are_invalid_argument(lm_server: ServerThread, case: str) -> None:
    model, chunk, message = TOKEN_ERRORS[case]

    async def run():
        async with grpc.aio.insecure_channel(lm_server.target) as channel:
            return await drive(
                pb_grpc.InferenceServiceStub(channel), [open_request(model), pb.StreamRequest(chunk=chunk)]
            )

    outcome = lm_server.call(run())
    assert outcome.code == Code.INVALID_ARGUMENT and message in outcome.details
    assert lm_server.running.store.open_count == 0
