"""Declared stateful graphs (seqserve/declaration.py): ONNX models seqserve did not write, served with their
state on the server, batched across streams, equal to the loop a user would write over onnxruntime."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from bench import declared_models as models
from seqserve import declaration as declarations
from seqserve.declaration import DeclarationError, GraphTensor
from seqserve.service.config import ServerConfig
from seqserve.service.server.launch import ServerThread
from seqserve.v1 import seqserve_pb2 as pb
from seqserve.v1 import seqserve_pb2_grpc as pb_grpc

STREAMS = 16


@pytest.fixture(scope="module")
def declared_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("declared")
    models.vad(root / "vad" / "1")
    models.vad(root / "vad-one" / "1", batch=1)
    models.six_states(root / "six" / "1")
    models.frame_model(root / "frames" / "1")
    models.frame_model(root / "frames-one" / "1", batch=1)
    labeled = models.frame_model(root / "frames-labeled" / "1")  # the same weights (seeded), with labels
    (labeled / "declaration.json").write_text(
        json.dumps({"states": [{"input": "h", "output": "h_out"}], "inputs": [{"name": "frame"}],
                    "outputs": [{"name": "score", "labels": ["quiet", "speech"]}]})
    )  # fmt: skip
    return root


@pytest.fixture(scope="module")
def declared_server(declared_repository: Path) -> Iterator[ServerThread]:
    config = ServerConfig(
        repository=declared_repository, port=0, metrics_port=-1, grace_s=1.0, max_delay_ms=5
    )
    with ServerThread(config) as running:
        yield running


def _tensor(name: str, array: np.ndarray) -> pb.Tensor:
    datatype = declarations.V2_DATATYPES[array.dtype.name]
    return pb.Tensor(
        name=name, datatype=datatype, shape=array.shape, data=np.ascontiguousarray(array).tobytes()
    )


def _array(tensor: pb.Tensor) -> np.ndarray:
    dtype = np.dtype(declarations.NUMPY_DTYPES[tensor.datatype])
    return np.frombuffer(tensor.data, dtype=dtype).reshape(tuple(tensor.shape))


async def _stream(
    target: str,
    model: str,
    chunks: list[dict[str, np.ndarray]],
    constants: dict[str, np.ndarray] | None = None,
    resume_token: bytes = b"",
) -> dict[str, np.ndarray]:
    """One v1 stream of named-tensor chunks (a new one, or one resumed from a token); every chunk's
    outputs, joined along steps."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        opening = pb.StreamOpen(
            model=model if not resume_token else "",
            resume_token=resume_token,
            constants=[_tensor(n, v) for n, v in (constants or {}).items()],
        )

        def requests() -> Iterator[pb.StreamRequest]:
            yield pb.StreamRequest(open=opening)
            for chunk in chunks:
                steps = next(iter(chunk.values())).shape[0]
                tensors = [_tensor(name, value) for name, value in chunk.items()]
                yield pb.StreamRequest(chunk=pb.StreamChunk(steps=steps, tensors=tensors))
            yield pb.StreamRequest(end=pb.StreamEnd())

        outputs: dict[str, list[np.ndarray]] = {}
        async for response in stub.Stream(requests()):
            for tensor in response.chunk.outputs if response.HasField("chunk") else ():
                outputs.setdefault(tensor.name, []).append(_array(tensor))
    return {name: np.concatenate(parts) for name, parts in outputs.items()}


def _chunked(x: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    cuts = sorted(rng.choice(np.arange(1, len(x)), size=min(3, len(x) - 1), replace=False).tolist())
    return np.split(x, cuts)


def _cases(repository: Path) -> dict[str, tuple]:
    """Per model: (streams' chunked inputs, their reference outputs, constants)."""
    rng = np.random.default_rng(0)
    cases = {}
    for model, sr in (("vad", 8000), ("vad-one", 16000)):
        audio = [
            rng.standard_normal((int(rng.integers(2, 7)), 512)).astype(np.float32) for _ in range(STREAMS)
        ]
        cases[model] = (
            [[{"input": c} for c in _chunked(a, rng)] for a in audio],
            [models.vad_reference(repository / model / "1", a, sr) for a in audio],
            {"sr": np.array(sr, np.int64)},
        )
    x = [rng.standard_normal((int(rng.integers(4, 12)), 3)).astype(np.float32) for _ in range(STREAMS)]
    chunkings = [_chunked(seq, rng) for seq in x]
    cases["six"] = (
        [[{"x": c} for c in chunks] for chunks in chunkings],
        [models.six_states_reference(repository / "six" / "1", chunks) for chunks in chunkings],
        None,
    )
    for model in ("frames", "frames-one"):
        frames = [
            rng.standard_normal((int(rng.integers(2, 7)), 16)).astype(np.float32) for _ in range(STREAMS)
        ]
        cases[model] = (
            [[{"frame": c} for c in _chunked(f, rng)] for f in frames],
            [models.frame_reference(repository / model / "1", f) for f in frames],
            None,
        )
    return cases


@pytest.mark.parametrize("model", ["vad", "vad-one", "six", "frames", "frames-one"])
def test_concurrent_streams_in_random_chunkings_equal_the_reference_loop_exactly(
    declared_server: ServerThread, declared_repository: Path, model: str
) -> None:
    chunked, references, constants = _cases(declared_repository)[model]

    async def run_all() -> list[dict[str, np.ndarray]]:
        return await asyncio.gather(*(_stream(declared_server.target, model, c, constants) for c in chunked))

    answers = declared_server.call(run_all(), timeout_s=120)
    for got, want in zip(answers, references, strict=True):
        assert got.keys() == want.keys()
        for name in want:
            assert got[name].shape == want[name].shape
            np.testing.assert_array_equal(got[name], want[name])


def test_metadata_names_the_tensors_and_says_when_a_graph_runs_one_row_per_call(
    declared_server: ServerThread,
) -> None:
    async def get(model: str) -> pb.ModelInfo:
        async with grpc.aio.insecure_channel(declared_server.target) as channel:
            return (
                await pb_grpc.InferenceServiceStub(channel).GetModel(pb.GetModelRequest(model=model))
            ).model

    vad = declared_server.call(get("vad"))
    assert vad.task == "declared" and vad.batched and not vad.batch_note
    assert [(i.name, i.datatype, list(i.shape), i.frames) for i in vad.inputs] == [
        ("input", "FP32", [512], True)
    ]
    assert [(o.name, list(o.shape)) for o in vad.outputs] == [("output", [1])]
    assert [(c.name, [_array(v).item() for v in c.choices]) for c in vad.constants] == [("sr", [16000, 8000])]
    alone = declared_server.call(get("vad-one"))
    assert not alone.batched and "fixed at 1" in alone.batch_note


@pytest.mark.parametrize(
    ("chunk", "words"),
    [
        ({"input": np.zeros((2, 512), np.float64)}, ["input", "float64", "float32 [frames, 512]"]),
        ({"input": np.zeros((2, 500), np.float32)}, ["input", "[2, 500]", "float32 [frames, 512]"]),
        ({"audio": np.zeros((2, 512), np.float32)}, ["['audio']", "input float32 [frames, 512]"]),
        ({"input": np.full((1, 512), np.nan, np.float32)}, ["input", "nan", "finite"]),
    ],
)
def test_a_bad_chunk_is_invalid_argument_naming_the_input_and_the_others_go_on(
    declared_server: ServerThread, declared_repository: Path, chunk: dict, words: list[str]
) -> None:
    chunked, references, constants = _cases(declared_repository)["vad"]

    async def run() -> tuple[grpc.aio.AioRpcError, dict]:
        good = asyncio.ensure_future(_stream(declared_server.target, "vad", chunked[0], constants))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await _stream(declared_server.target, "vad", [chunked[1][0], chunk])
        return refused.value, await good

    error, good = declared_server.call(run(), timeout_s=60)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    for word in words:
        assert word in error.details()
    np.testing.assert_array_equal(good["output"], references[0]["output"])


def test_bytes_that_do_not_match_the_shape_are_refused_with_both_counts(
    declared_server: ServerThread,
) -> None:
    async def run() -> None:
        async with grpc.aio.insecure_channel(declared_server.target) as channel:
            stub = pb_grpc.InferenceServiceStub(channel)
            short = pb.Tensor(name="input", datatype="FP32", shape=[1, 512], data=b"\0" * 100)
            call = stub.Stream(
                iter(
                    [
                        pb.StreamRequest(open=pb.StreamOpen(model="vad")),
                        pb.StreamRequest(chunk=pb.StreamChunk(steps=1, tensors=[short])),
                    ]
                )  # fmt: skip
            )
            async for _ in call:
                pass

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        declared_server.call(run())
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "100 bytes" in refused.value.details() and "2048 bytes" in refused.value.details()


def test_a_constant_outside_its_choices_is_refused_at_open(declared_server: ServerThread) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        declared_server.call(_stream(declared_server.target, "vad", [], {"sr": np.array(44100, np.int64)}))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "44100" in refused.value.details() and "16000, 8000" in refused.value.details()


GRAPH_IN = [
    GraphTensor("x", "float32", ("batch", "time", 3)),
    GraphTensor("h", "float32", (1, "batch", 4)),
    GraphTensor("sr", "int64", ()),
]
GRAPH_OUT = [
    GraphTensor("y", "float32", ("batch", "time", 2)),
    GraphTensor("h_out", "float32", (1, "batch", 4)),
]
GOOD = {
    "states": [{"input": "h", "output": "h_out"}],
    "inputs": [{"name": "x"}],
    "constants": [{"name": "sr", "value": 16000}],
}


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"outputs": [{"name": "logits"}]}, ["output 'logits' is not a graph output", "y float32"]),
        (
            {"states": [{"input": "h", "output": "h_out", "batch_axis": 2}]},
            ["batch_axis 2", "fixed at 4", "names axis 1 batch"],
        ),
        ({"states": [{"input": "h", "output": "h_out", "dtype": "float16"}]}, ["dtype float16", "h float32"]),
        ({"states": [{"input": "h", "output": "y"}]}, ["pairs h float32 [1, batch, 4] with y", "rank"]),
        ({"constants": []}, ["sr int64 [] are not declared"]),
        ({"constants": [{"name": "sr"}]}, ['exactly one of "value"', '"choices"']),
        ({"inputs": [{"name": "x", "time_axis": 0}]}, ["time_axis and batch_axis are both 0"]),
        (
            {"states": [{"input": "h", "output": "h_out"}, {"input": "h", "output": "h_out"}]},
            ["declared twice"],
        ),
        ({"lenghts": "x"}, ["unknown field(s) lenghts"]),
    ],
)
def test_each_mistake_in_a_declaration_is_named_with_what_the_graph_has(
    change: dict, words: list[str]
) -> None:
    with pytest.raises(DeclarationError) as refused:
        declarations.resolve({**GOOD, **change}, GRAPH_IN, GRAPH_OUT, "declaration.json")
    for word in words:
        assert word in str(refused.value)


def test_the_good_declaration_resolves_with_what_the_graph_says() -> None:
    resolved = declarations.resolve(GOOD, GRAPH_IN, GRAPH_OUT)
    assert [(s.input, s.output, s.batch_axis, s.row_shape) for s in resolved.states] == [
        ("h", "h_out", 1, (1, 4))
    ]
    assert [(i.name, i.batch_axis, i.time_axis, i.step_shape) for i in resolved.inputs] == [("x", 0, 1, (3,))]
    assert [o.name for o in resolved.outputs] == ["y"] and resolved.batchable


def test_inference_asks_for_the_one_missing_line() -> None:
    with pytest.raises(DeclarationError) as constant:
        declarations.infer(GRAPH_IN, GRAPH_OUT)
    assert '"constants": [{"name": "sr", "value": ...}]' in str(constant.value)
    unpaired = [GraphTensor("x", "float32", ("batch", 3)), GraphTensor("memory", "float32", ("batch", 4))]
    with pytest.raises(DeclarationError) as ambiguous:
        declarations.infer(unpaired, [GraphTensor("y", "float32", ("batch", 4))])
    assert "no graph input pairs with an output" in str(ambiguous.value) and "memory float32" in str(
        ambiguous.value
    )


def test_a_bad_declaration_fails_its_model_only(declared_repository: Path, tmp_path: Path) -> None:
    import shutil

    repository = Path(shutil.copytree(declared_repository, tmp_path / "repository"))
    broken = repository / "six" / "1" / "declaration.json"
    broken.write_text(json.dumps({"state_patterns": [{"output": "{input}_next"}], "inputs": [{"name": "x"}]}))
    with ServerThread(ServerConfig(repository=repository, port=0, metrics_port=-1, grace_s=1.0)) as running:
        served = running.running.engine.repository.names()
    assert "six" not in served and {"vad", "frames"} <= set(served)


@pytest.fixture(scope="module")
def keyed_pair(
    declared_repository: Path, state_key_file: Path
) -> Iterator[tuple[ServerThread, ServerThread]]:
    config = ServerConfig(
        repository=declared_repository, port=0, metrics_port=-1, grace_s=1.0, state_key_file=state_key_file
    )
    with ServerThread(config) as first, ServerThread(config) as second:
        yield first, second


async def _checkpointed(
    target: str, model: str, chunks: list[dict], constants: dict | None
) -> tuple[dict, bytes]:
    """Stream with a checkpoint after every chunk, then drop the connection: the outputs, the last token."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        call = stub.Stream()
        await call.write(pb.StreamRequest(open=pb.StreamOpen(
            model=model, checkpoint_every_chunks=1,
            constants=[_tensor(n, v) for n, v in (constants or {}).items()],
        )))  # fmt: skip
        await call.read()
        outputs: dict[str, list[np.ndarray]] = {}
        token = b""
        for chunk in chunks:
            steps = next(iter(chunk.values())).shape[0]
            tensors = [_tensor(name, value) for name, value in chunk.items()]
            await call.write(pb.StreamRequest(chunk=pb.StreamChunk(steps=steps, tensors=tensors)))
            response = await call.read()
            for tensor in response.chunk.outputs:
                outputs.setdefault(tensor.name, []).append(_array(tensor))
            token = response.chunk.checkpoint.token
        call.cancel()
    return {name: np.concatenate(parts) for name, parts in outputs.items()}, token


@pytest.mark.parametrize("model", ["vad", "six", "frames"])
def test_a_checkpoint_taken_mid_stream_resumes_on_a_second_server_to_the_same_answers(
    keyed_pair: tuple[ServerThread, ServerThread], declared_repository: Path, model: str
) -> None:
    """The token carries every state (any dtype, any batch axis), the carried context and the constants."""
    first, second = keyed_pair
    chunked, references, constants = _cases(declared_repository)[model]
    for chunks, want in list(zip(chunked, references, strict=True))[:4]:
        half = max(1, len(chunks) // 2)
        before, token = first.call(_checkpointed(first.target, model, chunks[:half], constants))
        after = second.call(_stream(second.target, model, chunks[half:], resume_token=token))
        for name in want:
            got = np.concatenate([before[name], after[name]]) if name in after else before[name]
            np.testing.assert_array_equal(got, want[name])


@pytest.mark.parametrize("model", ["six", "frames", "vad-one"])
def test_tritonclient_sequences_give_the_tensors_seqserve_v1_gives(
    declared_server: ServerThread, declared_repository: Path, model: str
) -> None:
    """Unmodified tritonclient (unary ModelInfer with sequence ids, batch-first inputs named as in the
    graph: [1, steps, ...], or one frame [1, ...] a request) drives a declared graph; its answers equal the
    seqserve.v1 stream's and the reference loop's."""
    import tritonclient.grpc as grpcclient

    chunked, references, constants = _cases(declared_repository)[model]
    client = grpcclient.InferenceServerClient(url=declared_server.target)
    (name,) = chunked[0][0]
    assert [i["name"] for i in client.get_model_metadata(model, as_json=True)["inputs"]] == [name]
    for sequence, (chunks, want) in enumerate(list(zip(chunked, references, strict=True))[:4]):
        whole = np.concatenate([chunk[name] for chunk in chunks])
        # A time model takes a chunk a request; a frame model one frame a request.
        requests = [c[name][None] for c in chunks] if model == "six" else np.split(whole, len(whole))
        got: dict[str, list[np.ndarray]] = {}
        for index, array in enumerate(requests):
            tensor = grpcclient.InferInput(name, list(array.shape), "FP32")
            tensor.set_data_from_numpy(array)
            result = client.infer(
                model, [tensor], sequence_id=1000 + sequence, sequence_start=index == 0,
                sequence_end=index == len(requests) - 1,
            )  # fmt: skip
            for output in want:
                got.setdefault(output, []).append(result.as_numpy(output)[0])
        v1 = declared_server.call(_stream(declared_server.target, model, chunks, constants))
        for output in want:
            joined = np.concatenate(got[output]) if model == "six" else np.stack(got[output])
            np.testing.assert_array_equal(joined, want[output])
            np.testing.assert_array_equal(joined, v1[output])
    client.close()


@pytest.mark.parametrize("model", ["six", "vad"])
def test_classify_answers_whole_sequences_from_the_initial_state(
    declared_server: ServerThread, declared_repository: Path, model: str
) -> None:
    """Classify's sequences carry named tensors too; each runs from the zero state (and zero context), as
    the reference loop does, whatever else shares its calls."""
    chunked, references, _ = _cases(declared_repository)[model]
    if model == "vad":  # Classify takes the default constants: the reference at sr 16000
        wholes = [np.concatenate([c["input"] for c in chunks]) for chunks in chunked[:6]]
        references = [models.vad_reference(declared_repository / "vad" / "1", x, 16000) for x in wholes]
        sequences = [{"input": x} for x in wholes]
    else:  # its answers depend on the chunking: the reference runs each sequence as one chunk
        wholes = [np.concatenate([c["x"] for c in chunks]) for chunks in chunked[:6]]
        references = [models.six_states_reference(declared_repository / "six" / "1", [x]) for x in wholes]
        sequences = [{"x": x} for x in wholes]

    async def classify() -> pb.ClassifyResponse:
        async with grpc.aio.insecure_channel(declared_server.target) as channel:
            request = pb.ClassifyRequest(
                model=model,
                sequences=[
                    pb.Sequence(
                        steps=len(next(iter(s.values()))), tensors=[_tensor(n, v) for n, v in s.items()]
                    )
                    for s in sequences
                ],
            )
            return await pb_grpc.InferenceServiceStub(channel).Classify(request)

    response = declared_server.call(classify())
    for result, want in zip(response.results, references[:6], strict=True):
        got = {tensor.name: _array(tensor) for tensor in result.outputs}
        for name in want:
            np.testing.assert_array_equal(got[name], want[name])


def test_streams_with_different_constants_share_the_server_and_each_equals_its_own_loop(
    declared_server: ServerThread, declared_repository: Path
) -> None:
    """Streams that chose sr 8000 and 16000 run at once; a call never mixes them, so each equals the loop
    run at its own rate."""
    chunked, _, _ = _cases(declared_repository)["vad"]
    rates = [8000 if i % 2 else 16000 for i in range(len(chunked))]
    references = [
        models.vad_reference(
            declared_repository / "vad" / "1", np.concatenate([c["input"] for c in chunks]), sr
        )
        for chunks, sr in zip(chunked, rates, strict=True)
    ]

    async def run_all() -> list[dict[str, np.ndarray]]:
        return await asyncio.gather(*(
            _stream(declared_server.target, "vad", chunks, {"sr": np.array(sr, np.int64)})
            for chunks, sr in zip(chunked, rates, strict=True)
        ))  # fmt: skip

    for got, want in zip(declared_server.call(run_all(), timeout_s=120), references, strict=True):
        np.testing.assert_array_equal(got["output"], want["output"])
    assert len(set(rates)) == 2 and not np.array_equal(references[0]["output"], references[1]["output"])


def test_an_output_declared_with_labels_is_answered_as_labels_too(
    declared_server: ServerThread, declared_repository: Path
) -> None:
    frames = np.random.default_rng(3).standard_normal((5, 16)).astype(np.float32)
    scores = models.frame_reference(declared_repository / "frames-labeled" / "1", frames)["score"]

    async def run() -> list[pb.StreamResponse]:
        async with grpc.aio.insecure_channel(declared_server.target) as channel:
            stub = pb_grpc.InferenceServiceStub(channel)
            requests = [
                pb.StreamRequest(open=pb.StreamOpen(model="frames-labeled", include_scores=True)),
                pb.StreamRequest(chunk=pb.StreamChunk(steps=2, tensors=[_tensor("frame", frames[:2])])),
                pb.StreamRequest(chunk=pb.StreamChunk(steps=3, tensors=[_tensor("frame", frames[2:])])),
                pb.StreamRequest(end=pb.StreamEnd()),
            ]
            return [response async for response in stub.Stream(iter(requests))]

    chunks = [r.chunk for r in declared_server.call(run()) if r.HasField("chunk")]
    steps = [s for chunk in chunks for s in chunk.results]
    assert [s.step for s in steps] == [0, 1, 2, 3, 4]
    assert [s.label for s in steps] == [["quiet", "speech"][i] for i in scores.argmax(axis=-1)]
    softmax = np.exp(scores - scores.max(axis=-1, keepdims=True))
    softmax /= softmax.sum(axis=-1, keepdims=True)
    np.testing.assert_allclose([list(s.scores) for s in steps], softmax, rtol=0, atol=1e-6)
    assert np.concatenate([_array(c.outputs[0]) for c in chunks]).tolist() == scores.tolist()


def test_a_declared_graph_cannot_borrow_the_classifier_rendering(
    declared_repository: Path, tmp_path: Path
) -> None:
    import shutil

    from seqserve.contract import declared
    from seqserve.service.engine.runtime import ModelRuntime

    folder = Path(shutil.copytree(declared_repository / "six" / "1", tmp_path / "six"))
    borrowed = {
        "rendering": "classifier",
        "state_patterns": [{"output": "{input}_out"}],
        "inputs": [{"name": "x"}],
        "outputs": [{"name": "y", "time_axis": 1, "labels": ["a", "b", "c"]}],
    }
    with pytest.raises(DeclarationError) as refused:
        ModelRuntime(declared("six", 1), folder / "model.onnx", "cpu", 1, borrowed)
    assert "rendering 'classifier' is for seqserve's own exports" in str(refused.value)
