"""A ModelStreamInfer client that sends and never reads, against `seqserve serve`: how many requests it gets
out before gRPC's flow control stalls it, how many the server read, how many answers sit unwritten, and the
server's RSS before and after (the memory bound of docs/triton.md, "Sequences").

    python -m bench.experiments.v2_flood                      # this checkout
    python -m bench.experiments.v2_flood --variant git:REV    # seqserve as committed at REV, to compare

Writes bench/results/v2_flood.json (or `--out`).
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path
from typing import Annotated

import grpc
import numpy as np
import typer
from tritonclient.grpc import service_pb2 as pb

from bench.bench_model import BENCH_MODEL, write_bench_model
from bench.experiments.ab import variant_command
from bench.process_costs import rss_mb
from bench.prometheus_scrape import sample_value
from bench.scenarios import BenchConfig, BenchRun
from seqserve.service.server.launch import ServerProcess, running_server

app = typer.Typer(add_completion=False)
ANSWERS = ("seqserve_requests_total", {"rpc": "ModelStreamInfer.response", "code": "OK"})
READ = ("seqserve_steps_total", {"model": BENCH_MODEL, "version": "1"})


def _requests(count: int, features: int) -> list[bytes]:
    """One sequence of one-step requests, serialised once each."""
    x = np.zeros(features, np.float32).tobytes()
    requests = []
    for index in range(count):
        request = pb.ModelInferRequest(model_name=BENCH_MODEL, id=str(index))
        request.parameters["sequence_id"].uint64_param = 7
        request.parameters["sequence_start"].bool_param = index == 0
        request.inputs.add(name="x", datatype="FP32", shape=[1, 1, features])
        request.raw_input_contents.append(x)
        requests.append(request.SerializeToString())
    return requests


async def _flood(target: str, requests: list[bytes], stall_s: float) -> int:
    """Write until every request is out or one write waits `stall_s`; returns how many went out."""
    async with grpc.aio.insecure_channel(target) as channel:
        method = channel.stream_stream(
            "/inference.GRPCInferenceService/ModelStreamInfer",
            request_serializer=lambda raw: raw,
            response_deserializer=pb.ModelStreamInferResponse.FromString,
        )
        call = method()
        sent = 0
        try:
            for raw in requests:
                await asyncio.wait_for(call.write(raw), stall_s)
                sent += 1
        except TimeoutError:
            pass
        call.cancel()
        return sent


def flood(server: ServerProcess, count: int, features: int, stall_s: float) -> dict[str, float]:
    rss_before = rss_mb(server.pid)
    sent = asyncio.run(_flood(server.target, _requests(count, features), stall_s))
    read, written = (sample_value(server.metrics_url, *wanted) for wanted in (READ, ANSWERS))
    return {
        "requests": count,
        "sent_before_stall": sent,
        "server_read": read,
        "answers_written": written,
        "answers_unwritten": read - written,
        "rss_before_mb": rss_before,
        "rss_after_mb": rss_mb(server.pid),
    }


@app.command()
def main(
    variant: Annotated[str, typer.Option(help="'' for this checkout, or git:REV.")] = "",
    requests: Annotated[int, typer.Option(help="Requests the client tries to send.", min=1)] = 200_000,
    stall_s: Annotated[float, typer.Option(help="A write waiting this long counts as stalled.")] = 5.0,
    out: Annotated[Path, typer.Option(help="JSON file for the figures.")] = Path(
        "bench/results/v2_flood.json"
    ),
) -> None:
    with tempfile.TemporaryDirectory(prefix="seqserve-flood-") as work:
        repository = Path(work) / "repository"
        info = write_bench_model(repository, Path(work))
        run = BenchRun(BenchConfig(), None, repository, info, "cpu", Path(work) / "logs")
        command = variant_command(run, variant, repository, Path(work))
        with running_server(command, Path(work) / "logs" / "seqserve.log") as server:
            figures = {"variant": variant or "checkout", **flood(server, requests, info.features, stall_s)}
    for key, value in figures.items():
        print(f"{key:20s} {value:,.1f}" if isinstance(value, float) else f"{key:20s} {value}")
    out.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    app()
