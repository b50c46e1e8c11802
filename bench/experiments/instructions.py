"""Instructions per message, counted by valgrind's callgrind: the one figure this shared box cannot blur.

    python -m bench.experiments.instructions [--variant NAME=SPEC ...] [--messages 1000] [--protocols v1,v2]
        [--streams 1]

Each server (by default echo, naive and seqserve; `--variant` takes bench.experiments.ab's specs, e.g.
`old=git:main`) runs under `valgrind --tool=callgrind` with counting off; `--streams` streams open and each
sends 300 chunks to warm up, then counting is switched on (`callgrind_control -i on`) for exactly
`--messages` chunk-and-answer round trips in all (each stream one at a time, the streams at once) and off
again. `--protocols v2` sends the same on the KServe V2 endpoint: a sequence per ModelStreamInfer stream,
the requests as perf_analyzer sends them. The count covers every thread of the server process (the event
loop, grpc's threads, onnxruntime), split by shared object, so the interpreter's share (libpython) and
onnxruntime's stand side by side. Wall-clock time under valgrind is meaningless (about 50x slower), and so
is anything that decides by time: seqserve runs with `--inline-max-us 1e9`, so a lone row runs inline as
it does at full speed. With many streams the server under valgrind is slower than its clients, so its
calls hold more rows than at full speed: compare variants with each other, not with wall-clock runs.

Writes bench/results/instructions.json (or `--out`) and prints a table. Needs valgrind (Debian's
`valgrind` package).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Annotated

import grpc
import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from bench.bench_model import BENCH_MODEL, write_bench_model
from bench.experiments.ab import variant_command
from bench.scenarios import BenchConfig, BenchRun
from seqserve.service.server.launch import ServerProcess
from seqserve.v1 import seqserve_pb2 as pb
from seqserve.v1 import seqserve_pb2_grpc as pb_grpc

RESULTS = Path(__file__).resolve().parents[1] / "results" / "instructions.json"
WARMUP_MESSAGES = 300
# Lines of `callgrind_annotate`: "  12,345 (1.2%)  file:function [/path/to/object.so]".
_ANNOTATED = re.compile(r"\s*([\d,]+)\s+\([^)]*\)\s+.*\[(.*)\]\s*$")

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


Send = Callable[[int], Awaitable[None]]


@contextlib.asynccontextmanager
async def _v1_stream(channel: grpc.aio.Channel, chunk: int, features: int) -> AsyncIterator[Send]:
    """One seqserve.v1 Stream; `send(n)` makes n chunk-and-answer round trips."""
    call = pb_grpc.InferenceServiceStub(channel).Stream()
    await call.write(pb.StreamRequest(open=pb.StreamOpen(model=BENCH_MODEL)))
    await call.read()
    values = np.random.default_rng(0).standard_normal(chunk * features, dtype=np.float32).tobytes()
    request = pb.StreamRequest(chunk=pb.StreamChunk(steps=chunk, values=values))

    async def send(count: int) -> None:
        for _ in range(count):
            await call.write(request)
            await call.read()

    yield send
    await call.write(pb.StreamRequest(end=pb.StreamEnd()))
    await call.done_writing()


@contextlib.asynccontextmanager
async def _v2_stream(
    channel: grpc.aio.Channel, chunk: int, features: int, number: int
) -> AsyncIterator[Send]:
    """The same on the KServe V2 endpoint: sequence `number` on its own ModelStreamInfer stream, as
    perf_analyzer sends it (all outputs named, raw contents)."""
    from tritonclient.grpc import service_pb2 as v2
    from tritonclient.grpc import service_pb2_grpc as v2_grpc

    values = np.random.default_rng(0).standard_normal(chunk * features, dtype=np.float32).tobytes()

    def request(start: bool, end: bool) -> v2.ModelInferRequest:
        message = v2.ModelInferRequest(model_name=BENCH_MODEL, id="1")
        message.inputs.add(name="x", datatype="FP32", shape=[1, chunk, features])
        message.raw_input_contents.append(values)
        for name in ("logits", "label", "scores"):
            message.outputs.add(name=name)
        message.parameters["sequence_id"].uint64_param = number + 1
        message.parameters["sequence_start"].bool_param = start
        message.parameters["sequence_end"].bool_param = end
        return message

    call = v2_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer()
    middle = request(False, False)

    async def send(count: int) -> None:
        for _ in range(count):
            await call.write(middle)
            if (await call.read()).error_message:
                raise RuntimeError("V2 request refused")

    await call.write(request(True, False))
    await call.read()
    yield send
    await call.write(request(False, True))
    await call.read()
    await call.done_writing()


async def _round_trips(
    target: str, protocol: str, streams: int, chunk: int, features: int, messages: int, pid: int
) -> None:
    """`streams` streams at once, each warmed up, then `messages` round trips in all counted."""
    async with grpc.aio.insecure_channel(target) as channel, contextlib.AsyncExitStack() as stack:
        sends = [
            await stack.enter_async_context(
                _v2_stream(channel, chunk, features, n)
                if protocol == "v2"
                else _v1_stream(channel, chunk, features)
            )
            for n in range(streams)
        ]
        await asyncio.gather(*(send(WARMUP_MESSAGES) for send in sends))
        subprocess.run(["callgrind_control", "-i", "on", str(pid)], capture_output=True, check=True)
        await asyncio.gather(*(send(messages // streams) for send in sends))
        subprocess.run(["callgrind_control", "-i", "off", str(pid)], capture_output=True, check=True)


def _by_object(profile: Path) -> dict[str, int]:
    listing = subprocess.run(
        ["callgrind_annotate", "--threshold=100", str(profile)], capture_output=True, text=True, check=True
    ).stdout
    totals: collections.Counter[str] = collections.Counter()
    for line in listing.splitlines():
        if match := _ANNOTATED.match(line):
            totals[Path(match[2]).name.split(".")[0]] += int(match[1].replace(",", ""))
    return dict(totals)


def _without_env(command: list[str]) -> tuple[list[str], dict[str, str]]:
    """`env A=1 prog ...` as (prog ..., {A: 1}): valgrind must run the server itself, not `env`."""
    environment = dict(os.environ)
    if command and command[0] == "env":
        command = command[1:]
        while command and "=" in command[0]:
            key, value = command.pop(0).split("=", 1)
            environment[key] = value
    return command, environment


def _count(
    command: list[str],
    chunk: int,
    features: int,
    messages: int,
    work: Path,
    name: str,
    protocol: str,
    streams: int,
) -> dict:
    profile = work / f"{name}-{protocol}-{chunk}-{streams}.callgrind"
    messages -= messages % streams
    valgrind = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={profile}"]
    command, environment = _without_env(command)
    # About 50x slower under valgrind: to start, and to write its profile once stopped.
    server = ServerProcess.start(
        [*valgrind, *command], env=environment, log_path=profile.with_suffix(".log"), timeout_s=600
    )
    try:
        asyncio.run(_round_trips(server.target, protocol, streams, chunk, features, messages, server.pid))
    finally:
        server.terminate(timeout_s=300)
    collected = re.findall(r"Collected : (\d+)", server.output())
    objects = _by_object(profile)
    return {
        "server": name,
        "protocol": protocol,
        "streams": streams,
        "chunk": chunk,
        "messages": messages,
        "instructions_per_message": int(collected[-1]) // messages,
        "by_object_per_message": {
            k: v // messages for k, v in sorted(objects.items(), key=lambda kv: -kv[1])
        },
    }


@app.command()
def main(
    variant: Annotated[
        list[str] | None,
        typer.Option(help="NAME=SPEC as bench.experiments.ab takes them; default echo, naive, seqserve"),
    ] = None,
    chunks: Annotated[
        str, typer.Option(help="Comma-separated chunk sizes, one stream each (32 takes minutes per server).")
    ] = "1",
    messages: Annotated[int, typer.Option(min=10)] = 1000,
    protocols: Annotated[
        str, typer.Option(help="Comma-separated: v1 (Stream), v2 (ModelStreamInfer; seqserve variants only).")
    ] = "v1",
    streams: Annotated[
        int, typer.Option(min=1, help="Streams at once (sequences, for v2), each its own.")
    ] = 1,
    out: Annotated[Path, typer.Option(help="Where the JSON goes.")] = RESULTS,
) -> None:
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise typer.BadParameter("valgrind is not installed: apt-get install valgrind")
    specs = dict(item.split("=", 1) for item in variant or ["echo=@echo", "naive=@naive", "seqserve="])
    console = Console(width=160)
    rows = []
    with tempfile.TemporaryDirectory(prefix="seqserve-instructions-") as tmp:
        work = Path(tmp)
        info = write_bench_model(work / "repository", work)
        run = BenchRun(BenchConfig(), None, work / "repository", info, "cpu", work / "logs")  # type: ignore[arg-type]
        commands = {
            name: variant_command(run, spec, work / "repository", work) for name, spec in specs.items()
        }
        seqserves = {name for name, spec in specs.items() if not spec.startswith(("@", "!"))}
        for name in seqserves:
            commands[name] = [*commands[name], "--inline-max-us", "1e9"]
        for chunk in (int(c) for c in chunks.split(",")):
            for protocol in protocols.split(","):
                for name, command in commands.items():
                    if protocol == "v2" and name not in seqserves:
                        continue
                    rows.append(
                        _count(command, chunk, info.features, messages, work, name, protocol, streams)
                    )
                    console.print(json.dumps(rows[-1]))
    table = Table(title=f"instructions per message (callgrind, whole server process, {streams} at once)")
    columns = (
        "chunk",
        "server",
        "protocol",
        "instructions/msg",
        "libpython",
        "onnxruntime",
        "cygrpc",
        "numpy",
    )
    for column in columns:
        table.add_column(column, justify="right")
    for row in rows:
        parts = row["by_object_per_message"]
        table.add_row(
            str(row["chunk"]), row["server"], row["protocol"], f"{row['instructions_per_message']:,}",
            *(f"{parts.get(key, 0):,}" for key in
              ("libpython3", "onnxruntime_pybind11_state", "cygrpc", "_multiarray_umath")),
        )  # fmt: skip
    console.print(table)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows}, indent=2))


if __name__ == "__main__":
    app()
