"""Translate on a seq2seq model (a tiny grapheme-to-phoneme model trained here): served greedy search equals
PyTorch's and the offline onnxruntime decoder's word for word, width 1 is greedy, a word's beam is the
same alone, among 63 others and across concurrent requests, rows of concurrent requests share calls, every
bad request gets its own status while others go on, a cancel frees its rows and stream at once, a drain
ends a decode cleanly, tritonclient reaches it on the KServe V2 door, and `seqserve translate` and
`seqserve predict` write the same file."""

from __future__ import annotations

import asyncio
import queue
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch

from seqserve.beam_search import SearchOptions
from seqserve.export.graph import build_model
from seqserve.export.repository import VersionFiles, write_versions
from seqserve.export.seq2seq_decode import OnnxSeq2Seq
from seqserve.export.seq2seq_job import export_seq2seq
from seqserve.service.client.client import AsyncClient
from seqserve.service.client.sync import Client
from seqserve.service.config import ServerConfig
from seqserve.service.engine import Draining, ServedModel
from seqserve.service.kinds import seq2seq
from seqserve.service.server.launch import ServerThread
from seqserve.training.loop import CHECKPOINT_FILE
from seqserve.training.seq2seq import from_payload
from seqserve.training.seq2seq_decode import decode_words
from seqserve.training.seq2seq_loop import TEST_WORDS_FILE, Seq2SeqTrainConfig, train_seq2seq
from seqserve.v1 import seqserve_pb2 as pb
from seqserve.v1 import seqserve_pb2_grpc as pb_grpc

from ..export.tiny_models import make_model
from .streams import Outcome, drive, open_request

MAX_BEAM, MAX_DECODE = 8, 60


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A GRU that learns a little (2,000 words, four epochs: real pronunciations, few ties) and a tinier
    LSTM (its cell state travels too)."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("g2p")
    sizes = {"gru": (2000, 4, 16, 32), "lstm": (600, 3, 12, 24)}
    made = {}
    for cell, (limit, epochs, encoder, hidden) in sizes.items():
        out = root / f"g2p-{cell}"
        config = Seq2SeqTrainConfig(
            out=out, cell=cell, limit=limit, epochs=epochs, embedding=16, encoder_hidden=encoder,
            hidden=hidden, batch_size=64, lr=1e-2,
        )  # fmt: skip
        train_seq2seq(config)
        made[f"g2p-{cell}"] = out
    return made


@pytest.fixture(scope="module")
def server(runs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    repository = tmp_path_factory.mktemp("translate") / "repository"
    for name, run in runs.items():
        export_seq2seq(run, repository, name=name)
    classifier, info = make_model("gru", 1, "many_to_one")
    info.name = "clf"
    write_versions(repository, [VersionFiles(build_model(classifier, info), info)])
    config = ServerConfig(repository=repository, port=0, metrics_port=-1, grace_s=1.0, max_delay_ms=10.0,
                          max_beam=MAX_BEAM, max_decode_steps=MAX_DECODE)  # fmt: skip
    with ServerThread(config) as running:
        yield running


def offline(server: ServerThread, name: str) -> OnnxSeq2Seq:
    return OnnxSeq2Seq.from_version(server.config.repository / name / "1")


def first_words(runs: dict[str, Path], count: int = 64) -> list[str]:
    return (runs["g2p-gru"] / TEST_WORDS_FILE).read_text().split()[:count]


def outputs(found: list) -> list[list[tuple[str, ...]]]:
    return [[h.output for h in (t.hypotheses if hasattr(t, "hypotheses") else t)] for t in found]


def scores(found: list) -> np.ndarray:
    return np.array([[h.score for h in t.hypotheses] for t in found])


def test_served_greedy_equals_pytorch_and_the_offline_decoder(
    server: ServerThread, runs: dict[str, Path]
) -> None:
    words = first_words(runs)
    model = from_payload(torch.load(runs["g2p-gru"] / CHECKPOINT_FILE, map_location="cpu", weights_only=True))
    reference = offline(server, "g2p-gru")
    with Client(server.target) as client:
        served = client.translate("g2p-gru", words, beam=1)
    torch_greedy = decode_words(model, reference.tokens, words)
    assert outputs(served) == outputs(torch_greedy) == outputs(reference.translate(words))
    assert sum(len(out[0]) > 2 for out in outputs(served)) > 40  # it learnt: not a word of ties
    np.testing.assert_allclose(scores(served)[:, 0], [t[0].score for t in torch_greedy], atol=1e-4)
    assert [t.input for t in served] == words and all(t.best.finished for t in served)


@pytest.mark.parametrize("name", ["g2p-gru", "g2p-lstm"])
def test_beam_search_equals_the_offline_decoders_and_width_one_is_greedy(
    server: ServerThread, runs: dict[str, Path], name: str
) -> None:
    words = [*first_words(runs, 20), "supercalifragilistic", "a", "x-ray", "it's"]
    reference = offline(server, name)
    with Client(server.target) as client:
        beam = client.translate(name, words, beam=4, nbest=3, length_penalty=0.6)
        width_one = client.translate(name, words, beam=1)
        short = client.translate(name, ["aardvark"], beam=2, max_steps=2)
    want = reference.translate(words, SearchOptions(beam=4, nbest=3, length_penalty=0.6))
    assert outputs(beam) == outputs(want)
    np.testing.assert_allclose(scores(beam), [[h.score for h in t] for t in want], atol=1e-4)
    assert outputs(width_one) == outputs(reference.translate(words))
    assert outputs(width_one) == outputs(reference.translate(words, SearchOptions(beam=1)))
    assert len(short[0].best.output) <= 2


def test_a_words_beam_is_the_same_alone_among_63_others_and_across_requests(
    server: ServerThread, runs: dict[str, Path]
) -> None:
    words = first_words(runs)
    options = {"beam": 4, "nbest": 2}

    async def run() -> tuple[list, list, list]:
        async with AsyncClient(server.target) as client:
            together = await client.translate("g2p-gru", words, **options)
            concurrent = await asyncio.gather(*(client.translate("g2p-gru", [w], **options) for w in words))
            alone = [await client.translate("g2p-gru", [words[i]], **options) for i in (0, 31, 63)]
        return together, [found[0] for found in concurrent], [found[0] for found in alone]

    together, concurrent, alone = asyncio.run(run())
    assert outputs(together) == outputs(concurrent)
    np.testing.assert_allclose(scores(together), scores(concurrent), atol=1e-5)
    for index, found in zip((0, 31, 63), alone, strict=True):
        assert outputs([found]) == outputs([together[index]])
        np.testing.assert_allclose(scores([found]), scores([together[index]]), atol=1e-5)


def calls_over(model: object, rows: int) -> int:
    """Calls so far that held more than `rows` rows (the batch-size histogram's count above that bound)."""
    samples = model.metrics.batch_size.child.collect()[0].samples  # type: ignore[attr-defined]
    buckets = {s.labels["le"]: s.value for s in samples if s.name.endswith("_bucket")}
    return int(buckets["+Inf"] - buckets[f"{float(rows)}"])


def test_rows_of_concurrent_requests_share_calls(server: ServerThread, runs: dict[str, Path]) -> None:
    model = server.running.engine.repository.resolve("g2p-gru")
    words = first_words(runs, 32)
    before, shared_before = model.metrics.totals(), calls_over(model, 4)

    async def run() -> None:
        async with AsyncClient(server.target) as client:
            await asyncio.gather(*(client.translate("g2p-gru", [w], beam=4) for w in words))

    asyncio.run(run())
    after = model.metrics.totals()
    rows, calls = after.rows - before.rows, after.calls - before.calls
    # A request of one word at width 4 has at most 4 rows a step: calls of more held several requests'.
    # (A tiny model's steps take ~0.1 ms, so requests that arrive a little apart overlap only in part.)
    assert rows > 3 * calls and calls_over(model, 4) - shared_before >= 5, (rows, calls)
    assert model.open_streams == 0


def _call(server: ServerThread, rpc: str, request: object) -> grpc.aio.AioRpcError | object:
    async def run() -> object:
        async with grpc.aio.insecure_channel(server.target) as channel:
            try:
                return await getattr(pb_grpc.InferenceServiceStub(channel), rpc)(request)
            except grpc.aio.AioRpcError as error:
                return error

    return asyncio.run(run())


def translate_request(inputs: list[str], **options: object) -> pb.TranslateRequest:
    asked = {"beam_width": 4, "nbest": 1, **options}
    return pb.TranslateRequest(model=asked.pop("model", "g2p-gru"), inputs=inputs, **asked)


BAD = [
    (["cat", "ca7t"], {}, "INVALID_ARGUMENT", "input 1: character '7' at position 2 of 'ca7t'"),
    (["cat", ""], {}, "INVALID_ARGUMENT", "input 1 is empty"),
    ([], {}, "INVALID_ARGUMENT", "no inputs"),
    (["cat"], {"beam_width": 0}, "INVALID_ARGUMENT", "beam_width is 0; expected 1 (greedy) to 8"),
    (["cat"], {"beam_width": 9}, "RESOURCE_EXHAUSTED", "the server's limit is 8 (--max-beam)"),
    (["cat"], {"nbest": 0}, "INVALID_ARGUMENT", "nbest is 0; expected 1 to the beam width 4"),
    (["cat"], {"nbest": 5}, "INVALID_ARGUMENT", "nbest is 5; expected 1 to the beam width 4"),
    (["cat"], {"max_steps": 61}, "RESOURCE_EXHAUSTED", "the server's limit is 60 (--max-decode-steps)"),
    (["cat"], {"length_penalty": -0.5}, "INVALID_ARGUMENT", "length_penalty is -0.5; expected a finite"),
    (["cat"], {"length_penalty": float("nan")}, "INVALID_ARGUMENT", "length_penalty is nan"),
    (["cat"], {"model": "clf"}, "FAILED_PRECONDITION", "Translate needs a sequence-to-sequence model"),
    (["cat"], {"model": "nope"}, "NOT_FOUND", "model 'nope' is not served"),
]


@pytest.mark.parametrize(("inputs", "options", "code", "message"), BAD)
def test_each_bad_request_gets_its_own_status(
    server: ServerThread, inputs: list[str], options: dict, code: str, message: str
) -> None:
    error = _call(server, "Translate", translate_request(inputs, **options))
    assert isinstance(error, grpc.aio.AioRpcError)
    assert error.code().name == code and message in error.details(), error.details()
    good = _call(server, "Translate", translate_request(["cat"]))
    assert len(good.translations) == 1 and good.translations[0].hypotheses[0].output
    assert server.running.engine.repository.resolve("g2p-gru").open_streams == 0


def test_stream_and_classify_refuse_a_seq2seq_model(server: ServerThread) -> None:
    classify = pb.ClassifyRequest(model="g2p-gru", sequences=[pb.Sequence(steps=1, tokens=[4])])
    error = _call(server, "Classify", classify)
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and "not Classify" in error.details()

    async def stream() -> Outcome:
        async with grpc.aio.insecure_channel(server.target) as channel:
            return await drive(pb_grpc.InferenceServiceStub(channel), [open_request("g2p-gru")])

    refused = asyncio.run(stream())
    assert refused.code == grpc.StatusCode.FAILED_PRECONDITION and "not a stream" in refused.details


async def _calls_since(model: ServedModel, before: int, calls: int) -> None:
    """Wait until `model` has run `calls` calls since `before` (bounded: a decode that ends first fails)."""
    for _ in range(5000):
        if model.metrics.totals().calls >= before + calls:
            return
        await asyncio.sleep(0.002)
    raise AssertionError(f"fewer than {calls} calls in 10 s: the long decode ended or never started")


def _long_request(runs: dict[str, Path]) -> pb.TranslateRequest:
    """Wide beams over many words: a decode of many steps, each several calls of rows."""
    return translate_request(first_words(runs) * 4, beam_width=MAX_BEAM, nbest=2, max_steps=MAX_DECODE)


def test_a_cancel_mid_decode_frees_its_rows_and_stream(server: ServerThread, runs: dict[str, Path]) -> None:
    model = server.running.engine.repository.resolve("g2p-gru")
    words = first_words(runs, 8)

    async def run() -> tuple[bool, list]:
        async with grpc.aio.insecure_channel(server.target) as channel:
            stub = pb_grpc.InferenceServiceStub(channel)
            before = model.metrics.totals().calls
            doomed = stub.Translate(_long_request(runs))
            await _calls_since(model, before, 20)  # the long decode is under way
            assert model.open_streams == 1
            # the short request starts beside it; on a fast machine it may also end before the cancel
            other = asyncio.ensure_future(stub.Translate(translate_request(words, beam_width=4, nbest=2)))
            for _ in range(400):
                if model.open_streams == 2 or other.done():
                    break
                await asyncio.sleep(0.002)
            doomed.cancel()
            for _ in range(200):
                if model.open_streams <= (0 if other.done() else 1):
                    break
                await asyncio.sleep(0.005)
            doomed_freed = model.open_streams <= (0 if other.done() else 1)
            return doomed_freed, list((await other).translations)

    doomed_freed, others = asyncio.run(run())
    assert doomed_freed  # the cancelled request's stream went at once; the other may still run
    want = offline(server, "g2p-gru").translate(words, SearchOptions(beam=4, nbest=2))
    assert [[tuple(h.output) for h in t.hypotheses] for t in others] == outputs(want)
    assert model.open_streams == 0
    stale = [key for key in model.batcher._last_row_at if isinstance(key, tuple)]
    pending = [row for row in model.batcher._pending if not row.future.done()]
    assert stale == [] and pending == []


def test_a_drain_ends_a_decode_with_draining(server: ServerThread, runs: dict[str, Path]) -> None:
    engine = server.running.engine
    model = engine.repository.resolve("g2p-gru")
    request = _long_request(runs)
    options = seq2seq.TranslateOptions(request.beam_width, request.nbest, request.max_steps)

    async def run() -> BaseException | None:
        before = model.metrics.totals().calls
        task = asyncio.ensure_future(seq2seq.translate(engine, model, list(request.inputs), options))
        await _calls_since(model, before, 10)
        engine.store.interrupt_all("shutdown")  # what the drain does past its grace period
        try:
            await task
        except Draining as error:
            return error
        return None

    error = server.call(run())
    assert isinstance(error, Draining) and "shut down before the translation ended" in str(error)
    assert model.open_streams == 0


def test_kserve_v2_translates_with_tritonclient(server: ServerThread, runs: dict[str, Path]) -> None:
    import tritonclient.grpc as grpcclient
    from tritonclient.grpc import model_config_pb2 as model_config
    from tritonclient.utils import InferenceServerException

    words = first_words(runs, 5)
    client = grpcclient.InferenceServerClient(url=server.target)
    text = grpcclient.InferInput("text", [len(words)], "BYTES")
    text.set_data_from_numpy(np.array([w.encode() for w in words], dtype=np.object_))
    asked = {"beam_width": 4, "nbest": 2, "max_steps": 30, "length_penalty": "0.6"}  # no float parameters
    result = client.infer("g2p-gru", [text], parameters=asked)
    got, got_scores = result.as_numpy("output"), result.as_numpy("score")
    with Client(server.target) as seqserve_client:
        want = seqserve_client.translate("g2p-gru", words, beam=4, nbest=2, max_steps=30, length_penalty=0.6)
    assert got.shape == (5, 2) and got_scores.shape == (5, 2) and got_scores.dtype == np.float32
    assert [[o.decode() for o in row] for row in got] == [[h.text for h in t.hypotheses] for t in want]
    np.testing.assert_allclose(got_scores, scores(want), atol=1e-5)
    metadata = client.get_model_metadata("g2p-gru")
    assert [(i.name, i.datatype, list(i.shape)) for i in metadata.inputs] == [("text", "BYTES", [-1])]
    assert [o.name for o in metadata.outputs] == ["output", "score"]
    config = client.get_model_config("g2p-gru").config
    assert [(i.name, i.data_type, list(i.dims)) for i in config.input] == [
        ("text", model_config.TYPE_STRING, [-1])
    ]
    assert config.parameters["seqserve.task"].string_value == "seq2seq"
    with pytest.raises(InferenceServerException, match="beam_width is 0"):
        client.infer("g2p-gru", [text], parameters={"beam_width": 0})
    with pytest.raises(InferenceServerException, match="expected an integer"):
        client.infer("g2p-gru", [text], parameters={"nbest": "two"})
    with pytest.raises(InferenceServerException, match="length_penalty is 'long'; expected a number"):
        client.infer("g2p-gru", [text], parameters={"length_penalty": "long"})
    with pytest.raises(InferenceServerException, match="takes one input 'text' BYTES"):
        wrong = grpcclient.InferInput("x", [1, 1, 1], "FP32")
        wrong.set_data_from_numpy(np.zeros((1, 1, 1), np.float32))
        client.infer("g2p-gru", [wrong])
    with pytest.raises(InferenceServerException, match="takes no sequence_id"):
        client.infer("g2p-gru", [text], sequence_id=7, sequence_start=True)
    # On a stream, a refused request is an answer with its error; the stream and the others go on.
    answers: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    bad = grpcclient.InferInput("text", [1], "BYTES")
    bad.set_data_from_numpy(np.array([b"ca7"], dtype=np.object_))
    for request_id, tensor in (("bad", bad), ("good", text)):
        client.async_stream_infer("g2p-gru", [tensor], request_id=request_id, parameters=asked)
    pairs = [answers.get(timeout=30) for _ in range(2)]
    client.stop_stream()
    (good,) = [result for result, error in pairs if error is None]
    (refused,) = [error for result, error in pairs if error is not None]
    assert [[o.decode() for o in row] for row in good.as_numpy("output")] == [
        [o.decode() for o in row] for row in got
    ]
    assert "INVALID_ARGUMENT: input 0: character '7'" in str(refused)


def test_translate_and_predict_commands_write_the_same_output(
    server: ServerThread, runs: dict[str, Path], tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from seqserve.cli import app

    words = tmp_path / "words.txt"
    words.write_text("\n".join(first_words(runs, 12)) + "\n\n")
    options = ["--model", "g2p-gru", "--beam", "4", "--nbest", "2"]
    served, predicted = tmp_path / "served.jsonl", tmp_path / "offline.jsonl"
    runner = CliRunner()
    target = ["--target", server.target]
    result = runner.invoke(
        app, ["translate", *target, *options, "--data", str(words), "--output", str(served)]
    )
    assert result.exit_code == 0, result.output
    repository = ["--repository", str(server.config.repository)]
    result = runner.invoke(
        app, ["predict", *repository, *options, "--data", str(words), "--output", str(predicted)]
    )
    assert result.exit_code == 0, result.output
    assert served.read_text() == predicted.read_text() and len(served.read_text().splitlines()) == 12
    result = runner.invoke(app, ["translate", *target, "--model", "g2p-gru", "--beam", "1", "cat", "phoneme"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    want = offline(server, "g2p-gru").translate(["cat", "phoneme"])
    assert lines == [f"{w}\t{' '.join(t[0].output)}" for w, t in zip(["cat", "phoneme"], want, strict=True)]
    result = runner.invoke(app, ["translate", *target, "--model", "g2p-gru", "--beam", "9", "cat"])
    assert result.exit_code != 0 and "--max-beam" in result.output


def test_the_documented_tritonclient_translation_prints_the_served_answer(
    server: ServerThread, tmp_path: Path
) -> None:
    from .docs_examples import code_blocks, run_python_example

    code = code_blocks("triton.md", "python")[3]
    assert '"g2p-lstm"' in code and 'words = ["phoneme", "seqserve"]' in code
    lines = run_python_example(code, server.target, tmp_path / "translate.py")
    with Client(server.target) as client:
        want = client.translate("g2p-lstm", ["phoneme", "seqserve"], beam=4, nbest=2)
    assert lines == [
        f"{t.input} {[(h.text, round(float(np.float32(h.score)), 3)) for h in t.hypotheses]}" for t in want
    ]


def test_one_graph_tools_refuse_a_seq2seq_model_by_name(server: ServerThread, tmp_path: Path) -> None:
    from seqserve.export.recalibration import recalibrate_version
    from seqserve.service.engine.errors import WrongTask
    from seqserve.service.offline import open_model

    repository = server.config.repository
    with pytest.raises(WrongTask, match="g2p-gru v1 is a seq2seq model .*expected a model of one graph"):
        open_model(repository, "g2p-gru")
    history = tmp_path / "history.csv"
    history.write_text("timestamp,value\n" + "".join(f"{t},{t % 7}\n" for t in range(200)))
    with pytest.raises(WrongTask, match="g2p-gru v1 is a seq2seq model"):
        recalibrate_version(repository, "g2p-gru", history)
    assert sorted(p.name for p in (repository / "g2p-gru").iterdir()) == ["1"]
