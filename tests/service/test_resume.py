"""Resume: a stream cut at any chunk boundary and continued on another server process from its checkpoint
answers exactly (max difference 0.0) as the uninterrupted stream; every bad token is refused with
INVALID_ARGUMENT and its reason while other streams go on; a server without a key refuses checkpoints."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import numpy as np
import pytest

from seqserve.service.engine import checkpoints
from seqserve.service.engine.checkpoints import StateKeys
from seqserve.service.server.launch import ServerProcess, ServerThread, run_on_loop, start_server_process
from seqserve.v1 import seqserve_pb2 as pb
from seqserve.v1 import seqserve_pb2_grpc as pb_grpc

from .conftest import STATE_KEYS
from .reference import MODEL_DATA, Offline
from .streams import END, Outcome, chunk_request, drive, open_request
from .test_errors import with_bystanders

CHUNK = {"jv-gru": 3, "jv-lstm": 3, "bms-gru": 5, "bms-lstm": 5}
SAMPLE = None  # all the fixture's test sequences (40 vowels, 8 motion streams); every boundary of each
KEYS = StateKeys(STATE_KEYS[0].encode())


@pytest.fixture(scope="module")
def second_server(service_repository: Path, state_key_file: Path) -> Iterator[ServerProcess]:
    """Server B: another process, the same key, one row per call (as `keyed_server`)."""
    process = start_server_process(
        service_repository,
        "--state-key-file",
        str(state_key_file),
        "--max-batch",
        "1",
        "--metrics-port",
        "-1",
        # Every resume of every cut opens at once (hundreds of streams): past the default --max-streams.
        "--max-streams",
        "5000",
    )
    yield process
    assert process.terminate() == 0


def _chunks(x: np.ndarray, size: int) -> list[pb.StreamRequest]:
    return [chunk_request(x[start : start + size]) for start in range(0, len(x), size)]


def _resume_request(token: bytes, model: str = "", version: int = 0) -> pb.StreamRequest:
    return pb.StreamRequest(open=pb.StreamOpen(model=model, version=version, resume_token=token))


def _without_checkpoint(response: pb.StreamResponse) -> pb.StreamResponse:
    plain = pb.StreamResponse()
    plain.CopyFrom(response)
    plain.chunk.ClearField("checkpoint") if plain.HasField("chunk") else plain.ended.ClearField("checkpoint")
    return plain


async def _on(target: str, requests_per_stream: list[list[pb.StreamRequest]]) -> list[Outcome]:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        return list(await asyncio.gather(*(drive(stub, requests) for requests in requests_per_stream)))


@pytest.mark.parametrize("model", list(CHUNK))
def test_resume_on_another_process_at_every_chunk_boundary_is_exact(
    keyed_server: ServerThread, second_server: ServerProcess, sequences: dict, model: str
) -> None:
    xs = sequences[MODEL_DATA[model]][:SAMPLE]
    opening = open_request(model, include_scores=True, checkpoint_every_chunks=1)
    whole = run_on_loop(_on(keyed_server.target, [[opening, *_chunks(x, CHUNK[model]), END] for x in xs]))
    cuts, resumes = [], []
    for x, outcome in zip(xs, whole, strict=True):
        assert outcome.code == grpc.StatusCode.OK, outcome.details
        chunks = _chunks(x, CHUNK[model])
        for cut in range(1, len(chunks) + 1):  # after chunk `cut` - 1; `len` resumes only to end
            checkpoint = outcome.responses[cut].chunk.checkpoint
            assert (checkpoint.chunks, checkpoint.steps) == (cut, min(cut * CHUNK[model], len(x)))
            cuts.append((outcome, cut))
            resumes.append([_resume_request(checkpoint.token), *chunks[cut:], END])
    resumed = run_on_loop(_on(second_server.target, resumes))
    for (outcome, cut), after in zip(cuts, resumed, strict=True):
        assert after.code == grpc.StatusCode.OK, after.details
        opened = after.responses[0].opened
        assert opened.resumed and opened.resumed_chunks == cut and opened.model.name == model
        # The same messages: step indexes, labels, float32 scores bit for bit, the end and its final answer.
        expected = [_without_checkpoint(r) for r in outcome.responses[cut + 1 :]]
        assert [_without_checkpoint(r) for r in after.responses[1:]] == expected, f"cut after chunk {cut}"


def _refused_reasons(server: ServerThread) -> dict[str, float]:
    registry = server.running.metrics.registry
    return {
        reason: registry.get_sample_value("seqserve_resumes_refused_total", {"reason": reason})
        for reason in checkpoints.REFUSAL_REASONS
    }


@pytest.fixture(scope="module")
def valid(keyed_server: ServerThread, sequences: dict) -> pb.Checkpoint:
    """A jv-gru checkpoint after 2 chunks, from the keyed server."""
    x = sequences["japanese_vowels"][0]
    requests = [open_request("jv-gru", checkpoint_every_chunks=2), *_chunks(x, 4)[:2], END]
    return run_on_loop(_on(keyed_server.target, [requests]))[0].responses[2].chunk.checkpoint


def _resigned(token: bytes, key: bytes = KEYS.current, **changes: object) -> bytes:
    snapshot = checkpoints.decode(token, KEYS)
    if "model" in changes:
        changes["model"] = replace(snapshot.model, **changes["model"])
    return checkpoints.encode(replace(snapshot, **changes), key)


def _flipped(token: bytes) -> bytes:
    bad = bytearray(token)
    bad[-60] ^= 0x40  # a byte of the state rows
    return bytes(bad)


BAD_TOKENS = {
    "tampered": (lambda t: _resume_request(_flipped(t)), checkpoints.TAMPERED, "tampered"),
    "other key": (
        lambda t: _resume_request(_resigned(t, key=b"some-other-servers-key-0123456789")),
        checkpoints.OTHER_KEY,
        "signed by another key",
    ),
    "expired": (
        lambda t: _resume_request(_resigned(t, expires_at=1_700_000_000)),
        checkpoints.EXPIRED,
        "expired",
    ),
    "other model": (
        lambda t: _resume_request(t, model="jv-lstm"),
        checkpoints.OTHER_MODEL,
        "resume token is for model jv-gru:1, the open asks for jv-lstm:1",
    ),
    "other version": (
        lambda t: _resume_request(t, model="jv-gru", version=2),
        checkpoints.OTHER_MODEL,
        "the open asks for jv-gru:2",
    ),
    "model not served": (
        lambda t: _resume_request(_resigned(t, model={"name": "jv-retired"})),
        checkpoints.OTHER_MODEL,
        "jv-retired:1, which this server does not serve",
    ),
    "other weights": (
        lambda t: _resume_request(_resigned(t, model={"sha256": "00" * 32})),
        checkpoints.OTHER_MODEL,
        "sha256 000000000000...",
    ),
    "malformed": (lambda t: _resume_request(b"\x00" * 10), checkpoints.MALFORMED, "malformed resume token"),
}


@pytest.mark.parametrize("case", BAD_TOKENS)
def test_a_bad_token_is_refused_and_harms_no_other_stream(
    keyed_server: ServerThread, offline: Offline, valid: pb.Checkpoint, case: str
) -> None:
    make, reason, message = BAD_TOKENS[case]
    before = _refused_reasons(keyed_server)
    outcome = with_bystanders(keyed_server, offline, lambda stub: drive(stub, [make(valid.token)]))
    assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT, outcome.details
    assert message in outcome.details
    after = _refused_reasons(keyed_server)
    assert {r: after[r] - before[r] for r in after} == {r: float(r == reason) for r in after}


@pytest.mark.parametrize(
    "request_", [open_request("jv-gru", checkpoint_every_chunks=4), _resume_request(b"any token")], ids=str
)
def test_a_server_without_a_key_refuses_checkpoints_and_says_how_to_configure_one(
    server: ServerThread, offline: Offline, request_: pb.StreamRequest
) -> None:
    outcome = with_bystanders(server, offline, lambda stub: drive(stub, [request_]))
    assert outcome.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "needs a state key" in outcome.details and "--state-key-file" in outcome.details
    assert checkpoints.KEYS_ENV in outcome.details


def test_checkpoints_of_a_bidirectional_model_are_refused(keyed_server: ServerThread) -> None:
    requests = [open_request("jv-bigru", checkpoint_every_chunks=1)]
    outcome = run_on_loop(_on(keyed_server.target, [requests]))[0]
    assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT and "not streamable" in outcome.details


def test_an_idle_timeout_ends_with_a_checkpoint_the_client_resumes_from(
    keyed_server: ServerThread, sequences: dict
) -> None:
    x = sequences["japanese_vowels"][1]
    first, second = _chunks(x, 10)[:2]

    async def paused() -> Outcome:
        async with grpc.aio.insecure_channel(keyed_server.target) as channel:
            call = pb_grpc.InferenceServiceStub(channel).Stream()
            await call.write(open_request("jv-lstm", idle_timeout_ms=150, include_scores=True))
            await call.write(first)
            outcome = Outcome()
            with pytest.raises(grpc.aio.AioRpcError):
                async for response in call:  # then silence: the idle timeout ends it
                    outcome.responses.append(response)
            outcome.code = await call.code()
            return outcome

    idle = run_on_loop(paused())
    assert idle.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert idle.ended.reason == pb.END_REASON_IDLE_TIMEOUT
    assert (idle.ended.checkpoint.chunks, idle.ended.checkpoint.steps) == (1, 10)
    assert "resume from the checkpoint at chunk 1" in idle.ended.message
    whole, resumed = run_on_loop(
        _on(
            keyed_server.target,
            [
                [open_request("jv-lstm", include_scores=True), first, second, END],
                [_resume_request(idle.ended.checkpoint.token), second, END],
            ],
        )
    )
    assert resumed.responses[-1] == whole.responses[-1]  # the final label and scores, bit for bit
    assert resumed.responses[1].chunk.chunk_index == 1


def test_keys_rotate_a_token_of_the_previous_key_resumes_and_new_ones_use_the_current(
    make_server, keyed_server: ServerThread, valid: pb.Checkpoint, tmp_path: Path, sequences: dict
) -> None:
    rotated = tmp_path / "rotated-keys"
    rotated.write_text(f"{STATE_KEYS[1]}\n{STATE_KEYS[0]}\n")  # current = new, previous = the old one
    server = make_server(state_key_file=rotated)
    x = sequences["japanese_vowels"][0]
    after = run_on_loop(_on(server.target, [[_resume_request(valid.token), *_chunks(x, 4)[2:3], END]]))[0]
    assert after.code == grpc.StatusCode.OK and after.responses[0].opened.resumed
    new = (
        run_on_loop(
            _on(server.target, [[open_request("jv-gru", checkpoint_every_chunks=1), *_chunks(x, 4)[:1], END]])
        )[0]
        .responses[1]
        .chunk.checkpoint
    )
    assert checkpoints.decode(new.token, StateKeys(STATE_KEYS[1].encode())).chunks == 1
    old_only = run_on_loop(_on(keyed_server.target, [[_resume_request(new.token)]]))[0]
    assert old_only.code == grpc.StatusCode.INVALID_ARGUMENT and "another key" in old_only.details
