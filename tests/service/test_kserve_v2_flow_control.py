"""A ModelStreamInfer client that sends and never reads: the server stops reading its stream once
MAX_IN_FLIGHT_PER_STREAM answers are unwritten, so its answers cannot pile up in server memory, and every
other stream goes on exactly."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from seqserve.service.frontends import kserve_v2

from .reference import Offline
from .triton_requests import infer_request

LIMIT = 8
FLOOD = 3000  # far more one-step requests than the client's 64 KiB receive window holds answers for
LABELS = {"model": "jv-gru", "version": "1"}
ANSWERED = {"rpc": kserve_v2.STREAM_RESPONSE, "code": "OK"}


def _unwritten(registry) -> float:
    """Requests the server has read (each one step here) less the answers it has written."""
    read = registry.get_sample_value("seqserve_steps_total", LABELS) or 0.0
    return read - (registry.get_sample_value("seqserve_requests_total", ANSWERED) or 0.0)


async def _settled(registry, timeout_s: float = 20.0) -> float:
    """Steps read once they stop growing for half a second (the server has stopped reading)."""
    last, still_since = -1.0, None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        now = registry.get_sample_value("seqserve_steps_total", LABELS) or 0.0
        if now != last:
            last, still_since = now, loop.time()
        elif loop.time() - still_since >= 0.5:
            return now
        await asyncio.sleep(0.05)
    raise AssertionError(f"the server kept reading the flooding stream for {timeout_s} s ({last} steps)")


def test_a_client_that_never_reads_stalls_without_piling_answers_up(
    make_server, monkeypatch: pytest.MonkeyPatch, sequences: dict, offline: Offline
) -> None:
    monkeypatch.setattr(kserve_v2, "MAX_IN_FLIGHT_PER_STREAM", LIMIT)
    running = make_server(grace_s=1.0)  # the flooding sequence is still open at the drain
    registry = running.running.metrics.registry
    x = sequences["japanese_vowels"][0]
    flood = [infer_request("jv-gru", x[:1], f"f{i}", 77, i == 0) for i in range(FLOOD)]

    async def run() -> tuple[float, float, list[pb.ModelStreamInferResponse]]:
        # No BDP probing: the client's receive window stays at 64 KiB, so the answers it can hold without
        # reading are far fewer than FLOOD.
        options = [("grpc.http2.bdp_probe", 0)]
        async with grpc.aio.insecure_channel(running.target, options=options) as flooding:
            call = pb_grpc.GRPCInferenceServiceStub(flooding).ModelStreamInfer()

            async def send_all() -> None:
                for request in flood:
                    await call.write(request)

            sender = asyncio.create_task(send_all())
            read = await _settled(registry)
            unwritten = _unwritten(registry)
            # Another client, meanwhile, on its own connection: a whole sequence, answered exactly.
            async with grpc.aio.insecure_channel(running.target) as other:
                stream = pb_grpc.GRPCInferenceServiceStub(other).ModelStreamInfer()
                parts = [(0, 4), (4, 9), (9, len(x))]
                for number, (start, stop) in enumerate(parts):
                    first, last = number == 0, number == len(parts) - 1
                    await stream.write(infer_request("jv-gru", x[start:stop], f"o{number}", 78, first, last))
                answers = [await stream.read() for _ in parts]
                await stream.done_writing()
                assert await stream.code() == grpc.StatusCode.OK
            call.cancel()
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
            return read, unwritten, answers

    read, unwritten, answers = running.call(run(), timeout_s=60)
    assert read < FLOOD / 2, f"the server read {read} of {FLOOD} requests from a client that never reads"
    # The outbox and the engine hold at most LIMIT, plus the answer grpc is writing.
    assert unwritten <= LIMIT + 1, f"{unwritten} answers unwritten, the limit is {LIMIT}"
    assert [a.error_message for a in answers] == ["", "", ""]
    final = answers[-1].infer_response
    scores = np.frombuffer(final.raw_output_contents[2], "<f4").reshape(1, -1)
    assert [o.name for o in final.outputs] == ["logits", "label", "scores"]
    np.testing.assert_allclose(scores, offline.scores("jv-gru", x), atol=1e-5)
