"""TLS, mTLS, certificate rotation, bearer tokens and per-token limits, against real servers on 127.0.0.1.

Every refusal is checked for its code and message while a good stream on the same server goes on and ends
with the offline reference's scores. Certificates are made here (tests/service/certificates.py).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from unittest import mock

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import generate_latest

from seqserve.service.client.channels import TOKEN_ENV, ClientSecurity, open_channel
from seqserve.service.client.health_probe import check_health
from seqserve.service.config import ServerConfig
from seqserve.service.server.auth import TOKENS_ENV, TokenError, TokenTable, parse_tokens
from seqserve.service.server.launch import ServerThread
from seqserve.v1 import seqserve_pb2 as pb
from seqserve.v1 import seqserve_pb2_grpc as pb_grpc

from .certificates import Authority, Issued, authority
from .reference import Offline
from .streams import END, Outcome, chunk_request, open_request

TOLERANCE = 1e-5
MODEL = "jv-gru"
# A fresh connection per channel: a new channel must handshake again to see a rotated certificate.
FRESH = [("grpc.use_local_subchannel_pool", 1)]
ALICE, BOB = "alice-7c1f0e9a2b", "bob-5d3e8a4f61"  # the tokens; never in a message, a metric or a log


@dataclass(frozen=True)
class Pki:
    ca: Authority
    other_ca: Authority
    server: Issued
    client: Issued
    client_of_other_ca: Issued
    expired_client: Issued


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca, other = authority(folder, "ca"), authority(folder, "other-ca")
    return Pki(
        ca=ca,
        other_ca=other,
        server=ca.issue(folder, "server"),
        client=ca.issue(folder, "client", server=False),
        client_of_other_ca=other.issue(folder, "stranger", server=False),
        expired_client=ca.issue(folder, "expired", server=False, expired=True),
    )


@pytest.fixture(scope="module")
def tls_server(config: ServerConfig, pki: Pki) -> ServerThread:
    with ServerThread(replace(config, tls_cert=pki.server.cert, tls_key=pki.server.key)) as running:
        yield running


@pytest.fixture(scope="module")
def mtls_server(config: ServerConfig, pki: Pki) -> ServerThread:
    secured = replace(config, tls_cert=pki.server.cert, tls_key=pki.server.key, tls_client_ca=pki.ca.cert)
    with ServerThread(secured) as running:
        yield running


@pytest.fixture(scope="module")
def token_server(config: ServerConfig, tmp_path_factory: pytest.TempPathFactory) -> ServerThread:
    tokens = tmp_path_factory.mktemp("tokens") / "tokens"
    tokens.write_text(f"# who may call\nalice:{ALICE}\nbob:{BOB}\n")
    with ServerThread(replace(config, auth_tokens_file=tokens, max_streams_per_token=1)) as running:
        yield running


def _mtls(pki: Pki, client: Issued | None = None, **options: object) -> ClientSecurity:
    client = client or pki.client
    return ClientSecurity(tls_ca=pki.ca.cert, tls_cert=client.cert, tls_key=client.key, **options)


async def _attempt(
    target: str,
    security: ClientSecurity | None,
    model: str = MODEL,
    metadata: tuple[tuple[str, str], ...] | None = None,
) -> Outcome:
    """A stream of one chunk on its own channel, each message awaiting its answer as the client library's
    do. (A client that writes ahead of a refusal may read INTERNAL instead of the server's status: the
    grpc.aio client bug grpc/grpc#36066.)"""
    outcome = Outcome()
    async with open_channel(target, security, FRESH) as channel:
        call = pb_grpc.InferenceServiceStub(channel).Stream(metadata=metadata)
        try:
            for request in (open_request(model), chunk_request(np.zeros((2, 12), dtype=np.float32))):
                await call.write(request)
                outcome.responses.append(await call.read())
            await call.write(END)
            await call.done_writing()
            while (response := await call.read()) is not grpc.aio.EOF:
                outcome.responses.append(response)
        except grpc.aio.AioRpcError:
            pass
        outcome.code, outcome.details = await call.code(), await call.details()
    return outcome


class GoodStream:
    """A stream opened before the refusals and ended after them: its scores must still be the offline ones."""

    def __init__(self, target: str, security: ClientSecurity | None, x: np.ndarray) -> None:
        self.channel = open_channel(target, security, FRESH)
        self.call = pb_grpc.InferenceServiceStub(self.channel).Stream()
        self.x = x

    async def first_half(self) -> None:
        await self.call.write(open_request(MODEL, include_scores=True))
        assert (await self.call.read()).HasField("opened")
        await self.call.write(chunk_request(self.x[: len(self.x) // 2]))
        await self.call.read()

    async def second_half(self) -> np.ndarray:
        await self.call.write(chunk_request(self.x[len(self.x) // 2 :]))
        await self.call.read()
        await self.call.write(END)
        await self.call.done_writing()
        ended = (await self.call.read()).ended
        assert await self.call.code() == grpc.StatusCode.OK
        await self.channel.close()
        return np.asarray(ended.final_results[-1].scores)


def _alongside(
    server: ServerThread, good: ClientSecurity | None, x: np.ndarray, attempts: list[ClientSecurity | None]
) -> tuple[np.ndarray, list[Outcome]]:
    async def run() -> tuple[np.ndarray, list[Outcome]]:
        stream = GoodStream(server.target, good, x)
        await stream.first_half()
        outcomes = [await _attempt(server.target, security) for security in attempts]
        return await stream.second_half(), outcomes

    return server.call(run())


def _assert_exact(scores: np.ndarray, offline: Offline, x: np.ndarray) -> None:
    np.testing.assert_allclose(scores, offline.scores(MODEL, x)[0], atol=TOLERANCE)


def _refused(outcome: Outcome, code: grpc.StatusCode, *words: str) -> None:
    assert outcome.code == code, (outcome.code, outcome.details)
    assert not outcome.responses, "a refused stream got answers"
    for word in words:
        assert word in outcome.details, (word, outcome.details)


# --- TLS and mTLS ---------------------------------------------------------------------------------


def test_tls_stream_is_exact_and_plaintext_or_wrong_ca_fail_cleanly(
    tls_server: ServerThread, pki: Pki, offline: Offline, sequences: dict
) -> None:
    x = sequences["japanese_vowels"][0]
    good = ClientSecurity(tls_ca=pki.ca.cert)
    scores, (plaintext, wrong_ca) = _alongside(
        tls_server, good, x, [None, ClientSecurity(tls_ca=pki.other_ca.cert)]
    )
    _assert_exact(scores, offline, x)
    _refused(plaintext, grpc.StatusCode.UNAVAILABLE)
    _refused(wrong_ca, grpc.StatusCode.UNAVAILABLE)
    # Health answers over TLS too (the probe in the image), and the CA is what makes it trust the server.
    assert check_health(tls_server.target, security=good) == "SERVING"


def test_mtls_stream_is_exact_and_bad_client_certificates_are_refused(
    mtls_server: ServerThread, pki: Pki, offline: Offline, sequences: dict
) -> None:
    x = sequences["japanese_vowels"][1]
    attempts = [
        ClientSecurity(tls_ca=pki.ca.cert),  # no client certificate
        _mtls(pki, pki.client_of_other_ca),  # signed by a CA the server does not trust
        _mtls(pki, pki.expired_client),  # signed by the right CA, but expired
        ClientSecurity(tls_ca=pki.other_ca.cert, tls_cert=pki.client.cert, tls_key=pki.client.key),
    ]
    scores, outcomes = _alongside(mtls_server, _mtls(pki), x, attempts)
    _assert_exact(scores, offline, x)
    for outcome in outcomes:
        _refused(outcome, grpc.StatusCode.UNAVAILABLE)
    assert mtls_server.running.store.open_count == 0


def test_certificate_rotation_keeps_open_streams_and_new_connections_get_the_new_one(
    config: ServerConfig, tmp_path: Path, offline: Offline, sequences: dict, make_server
) -> None:  # noqa: ANN001
    old_ca, new_ca = authority(tmp_path / "old", "old-ca"), authority(tmp_path / "new", "new-ca")
    old, new = old_ca.issue(tmp_path / "old", "server"), new_ca.issue(tmp_path / "new", "server")
    live = tmp_path / "live"
    live.mkdir()
    cert, key = live / "tls.crt", live / "tls.key"
    cert.write_bytes(old.cert.read_bytes())
    key.write_bytes(old.key.read_bytes())
    server = make_server(tls_cert=cert, tls_key=key)
    trusts_old, trusts_new = ClientSecurity(tls_ca=old_ca.cert), ClientSecurity(tls_ca=new_ca.cert)
    x = sequences["japanese_vowels"][2]

    async def run() -> tuple:
        stream = GoodStream(server.target, trusts_old, x)
        await stream.first_half()
        before = await _attempt(server.target, trusts_new)
        for source, target in ((new.cert, cert), (new.key, key)):  # as the kubelet does: replace, not edit
            staged = target.with_suffix(".new")
            staged.write_bytes(source.read_bytes())
            os.replace(staged, target)
        after = [await _attempt(server.target, trusts) for trusts in (trusts_new, trusts_old)]
        return before, after, await stream.second_half()

    before, (new_trusted, old_trusted), scores = server.call(run())
    _refused(before, grpc.StatusCode.UNAVAILABLE)
    assert new_trusted.code == grpc.StatusCode.OK and new_trusted.ended.reason == pb.END_REASON_COMPLETED
    _refused(old_trusted, grpc.StatusCode.UNAVAILABLE)
    _assert_exact(scores, offline, x)  # the stream opened under the old certificate went on to its end
    assert server.running.certificates.reloads == 1


def test_tls_server_name_checks_the_certificate_for_another_name(tmp_path: Path, make_server) -> None:  # noqa: ANN001
    ca = authority(tmp_path, "ca")
    named = ca.issue(tmp_path, "server", dns_names=("seqserve.internal",))
    server = make_server(tls_cert=named.cert, tls_key=named.key)

    async def run() -> list[Outcome]:
        securities = [ClientSecurity(tls_ca=ca.cert, tls_server_name=n) for n in (None, "seqserve.internal")]
        return [await _attempt(server.target, security) for security in securities]

    by_address, by_name = server.call(run())
    _refused(by_address, grpc.StatusCode.UNAVAILABLE)  # the certificate does not name 127.0.0.1
    assert by_name.code == grpc.StatusCode.OK and by_name.ended.steps == 2


def test_tls_files_are_checked_at_start(config: ServerConfig, pki: Pki) -> None:
    with pytest.raises(ValueError, match="needs both a certificate and its key"):
        replace(config, tls_cert=pki.server.cert)
    with pytest.raises(ValueError, match="needs TLS"):
        replace(config, tls_client_ca=pki.ca.cert)
    mismatched = replace(config, tls_cert=pki.server.cert, tls_key=pki.client.key)
    with pytest.raises(ValueError, match="cannot serve TLS with certificate"):
        ServerThread(mismatched).start()


# --- bearer tokens and per-token limits -----------------------------------------------------------


def test_missing_malformed_and_wrong_tokens_are_unauthenticated_while_a_good_stream_goes_on(
    token_server: ServerThread, offline: Offline, sequences: dict, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="seqserve")
    metrics = token_server.running.metrics

    def refusals(rpc: str) -> float:
        labels = {"rpc": rpc, "code": "UNAUTHENTICATED"}
        return metrics.registry.get_sample_value("seqserve_requests_total", labels) or 0.0

    before = refusals("Stream")
    x = sequences["japanese_vowels"][3]
    attempts = [None, ClientSecurity(token="not-a-token-of-this-server"), ClientSecurity(token=ALICE + "x")]
    scores, (missing, wrong, longer) = _alongside(token_server, ClientSecurity(token=ALICE), x, attempts)
    _assert_exact(scores, offline, x)
    _refused(missing, grpc.StatusCode.UNAUTHENTICATED, "/seqserve.v1.InferenceService/Stream", "Bearer")
    for outcome in (wrong, longer):
        _refused(outcome, grpc.StatusCode.UNAUTHENTICATED, "matches none of this server's tokens")

    async def malformed_and_unary() -> list[grpc.StatusCode]:
        codes = []
        async with grpc.aio.insecure_channel(token_server.target) as channel:
            stub = pb_grpc.InferenceServiceStub(channel)
            basic = (("authorization", f"Basic {ALICE}"),)
            outcome = await _attempt(token_server.target, None, metadata=basic)
            _refused(outcome, grpc.StatusCode.UNAUTHENTICATED, "not of the form 'Bearer <token>'")
            unary = (stub.ListModels(pb.ListModelsRequest()), stub.GetModel(pb.GetModelRequest(model=MODEL)))
            for call in unary:
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await call
                codes.append(refused.value.code())
        return codes

    assert token_server.call(malformed_and_unary()) == [grpc.StatusCode.UNAUTHENTICATED] * 2
    assert refusals("Stream") == before + 4 and refusals("ListModels") >= 1 and refusals("GetModel") >= 1
    exposed = generate_latest(metrics.registry).decode()
    logged = "\n".join(record.getMessage() for record in caplog.records)
    for token in (ALICE, BOB):
        assert token not in exposed and token not in logged
        assert token not in missing.details + wrong.details + longer.details


def test_health_and_reflection_need_no_token(token_server: ServerThread) -> None:
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    assert check_health(token_server.target, MODEL) == "SERVING"
    with grpc.insecure_channel(token_server.target) as channel:
        services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest()).status
    assert "seqserve.v1.InferenceService" in services and status == health_pb2.HealthCheckResponse.SERVING


def test_a_token_over_its_stream_limit_is_refused_and_other_tokens_go_on(
    token_server: ServerThread, offline: Offline, sequences: dict
) -> None:
    x = sequences["japanese_vowels"][4]
    registry = token_server.running.metrics.registry

    def open_for(name: str) -> float | None:
        return registry.get_sample_value("seqserve_token_streams_active", {"token": name})

    async def run() -> tuple:
        stream = GoodStream(token_server.target, ClientSecurity(token=ALICE), x)
        await stream.first_half()
        open_now = (open_for("alice"), token_server.running.store.caller_count("alice"))
        second_alice = await _attempt(token_server.target, ClientSecurity(token=ALICE))
        bob = await _attempt(token_server.target, ClientSecurity(token=BOB))
        return open_now, second_alice, bob, await stream.second_half()

    open_now, second_alice, bob, scores = token_server.call(run())
    assert open_now == (1, 1)
    assert second_alice.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "token 'alice'" in second_alice.details and "limit per token is 1" in second_alice.details
    assert "--max-streams-per-token" in second_alice.details
    assert bob.code == grpc.StatusCode.OK and bob.ended.steps == 2
    _assert_exact(scores, offline, x)
    assert open_for("alice") == 0 and token_server.running.store.caller_count("alice") == 0


def test_a_changed_tokens_file_takes_effect_without_a_restart(
    tmp_path: Path, make_server, offline: Offline, sequences: dict
) -> None:  # noqa: ANN001
    tokens, staged = tmp_path / "tokens", tmp_path / "tokens.new"
    tokens.write_text(f"alice:{ALICE}\n")
    server = make_server(auth_tokens_file=tokens)
    x = sequences["japanese_vowels"][6]

    def replace_file(text: str) -> None:  # as the kubelet updates a Secret: a new file, renamed over
        staged.write_text(text)
        os.replace(staged, tokens)

    async def run() -> tuple:
        stream = GoodStream(server.target, ClientSecurity(token=ALICE), x)
        await stream.first_half()
        replace_file(f"bob:{BOB}\n")
        alice, bob = [await _attempt(server.target, ClientSecurity(token=t)) for t in (ALICE, BOB)]
        replace_file("not a name:x\n")  # broken: bob's token stays in force
        bob_still = await _attempt(server.target, ClientSecurity(token=BOB))
        return alice, bob, bob_still, await stream.second_half()

    alice, bob, bob_still, scores = server.call(run())
    _refused(alice, grpc.StatusCode.UNAUTHENTICATED, "matches none of this server's tokens")
    assert bob.code == bob_still.code == grpc.StatusCode.OK
    _assert_exact(scores, offline, x)  # alice's stream, opened before her token went, goes on to its end


def test_kserve_v2_needs_a_token_and_its_sequences_count_against_the_token(
    token_server: ServerThread, sequences: dict
) -> None:
    from tritonclient.grpc import service_pb2 as v2
    from tritonclient.grpc import service_pb2_grpc as v2_grpc

    from .triton_requests import infer_request

    x = sequences["japanese_vowels"][5]

    async def infer(token: str | None, request: v2.ModelInferRequest) -> tuple[str, str]:
        async with open_channel(token_server.target, ClientSecurity(token=token)) as channel:
            try:
                await v2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
            except grpc.aio.AioRpcError as error:
                return error.code().name, error.details()
        return "OK", ""

    async def run() -> dict[str, tuple[str, str]]:
        async with grpc.aio.insecure_channel(token_server.target) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as live:
                await v2_grpc.GRPCInferenceServiceStub(channel).ServerLive(v2.ServerLiveRequest())
        return {
            "live, no token": (live.value.code().name, live.value.details()),
            "infer, no token": await infer(None, infer_request(MODEL, x)),
            "alice starts 7": await infer(ALICE, infer_request(MODEL, x[:3], "", 7, True)),
            "alice starts 8": await infer(ALICE, infer_request(MODEL, x[:3], "", 8, True)),
            "bob continues 7": await infer(BOB, infer_request(MODEL, x[3:5], "", 7)),
            "bob starts 7": await infer(BOB, infer_request(MODEL, x[:3], "", 7, True)),
            "bob ends 7": await infer(BOB, infer_request(MODEL, x[3:], "", 7, False, True)),
            "alice ends 7": await infer(ALICE, infer_request(MODEL, x[3:], "", 7, False, True)),
        }

    got = token_server.call(run())
    assert got["live, no token"][0] == got["infer, no token"][0] == "UNAUTHENTICATED"
    assert "/inference.GRPCInferenceService/ModelInfer needs a bearer token" in got["infer, no token"][1]
    assert got["alice starts 7"] == ("OK", "")
    assert got["alice starts 8"][0] == "RESOURCE_EXHAUSTED" and "token 'alice'" in got["alice starts 8"][1]
    # Sequence ids are the caller's own: bob cannot reach alice's sequence 7, and may open his own 7.
    assert got["bob continues 7"][0] == "FAILED_PRECONDITION" and "is not open" in got["bob continues 7"][1]
    assert got["bob starts 7"] == got["bob ends 7"] == got["alice ends 7"] == ("OK", "")
    assert token_server.running.store.open_count == 0


def test_tokens_from_the_environment_over_mtls_and_the_cli_options(
    config: ServerConfig, pki: Pki, make_server, offline: Offline
) -> None:  # noqa: ANN001
    secured = dict(tls_cert=pki.server.cert, tls_key=pki.server.key, tls_client_ca=pki.ca.cert)
    with mock.patch.dict(os.environ, {TOKENS_ENV: f"device-fleet:{ALICE},{BOB}"}):
        server = make_server(**secured)
    security = ["--tls-ca", str(pki.ca.cert), "--tls-cert", str(pki.client.cert)]
    security += ["--tls-key", str(pki.client.key)]
    args = [sys.executable, "-m", "seqserve.cli", "stream", "--target", server.target, "--model", MODEL]
    args += ["--dataset", "japanese_vowels", "--limit", "20", *security]
    env = {**os.environ, TOKEN_ENV: BOB}
    done = subprocess.run(args, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    assert "accuracy" in done.stdout
    refused = subprocess.run(
        [*args, "--token", "wrong"], capture_output=True, text=True, timeout=120, env=env
    )
    assert refused.returncode != 0 and "UNAUTHENTICATED" in refused.stderr and "wrong" not in refused.stderr
    health = [sys.executable, "-m", "seqserve.cli", "health", "--target", server.target, *security]
    assert subprocess.run(health, capture_output=True, timeout=60).returncode == 0
    # BOB's entry in the variable has no name: it is named after its place, and that name is the label.
    active = {"token": "env-2"}
    assert server.running.metrics.registry.get_sample_value("seqserve_token_streams_active", active) == 0


def test_tokens_file_format_and_its_errors(tmp_path: Path) -> None:
    text = "# comment\n\nalice:one\n  two  \nci.runner-2 : three:with:colons\n"
    table = TokenTable(parse_tokens(text, "file"))
    assert table.names == ["alice", "file-4", "ci.runner-2"]
    assert table.authenticate("/m", [("authorization", "Bearer three:with:colons")]) == "ci.runner-2"
    assert table.authenticate("/m", [("authorization", "bearer two")]) == "file-4"
    with pytest.raises(TokenError, match="line 1: the part before ':' is not a token name") as caught:
        parse_tokens("a secret with spaces:x", "file")
    assert "secret" not in str(caught.value)
    with pytest.raises(TokenError, match="given twice"):
        TokenTable(parse_tokens("a:1\na:2", "file"))
    with pytest.raises(TokenError, match="'a' and 'b' are the same token"):
        TokenTable(parse_tokens("a:1\nb:1", "file"))
    empty = tmp_path / "empty"
    empty.write_text("# no tokens yet\n")
    with pytest.raises(TokenError, match="holds no token"):  # never an open server by mistake
        TokenTable.load(empty, None)
    with pytest.raises(TokenError, match="SEQSERVE_AUTH_TOKENS holds no token"):
        TokenTable.load(None, "")
    with pytest.raises(TokenError, match="needs bearer tokens"):
        ServerThread(ServerConfig(repository=Path("."), port=0, max_streams_per_token=2)).start()
