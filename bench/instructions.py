"""Instructions per message, counted by valgrind's callgrind: the one figure this shared box cannot blur.

    python -m bench.instructions [--variant NAME=SPEC ...] [--messages 1000]

Each server (by default echo, naive and seqserve; `--variant` takes bench.ab's specs, e.g. `old=git:main`)
runs under `valgrind --tool=callgrind` with counting off; one stream opens, sends 300 chunks to warm up,
then counting is switched on (`callgrind_control -i on`) for exactly `--messages` chunk-and-answer round
trips and off again. The count covers every thread of the server process (the event loop, grpc's threads,
onnxruntime), split by shared object, so the interpreter's share (libpython) and onnxruntime's stand side
by side. Wall-clock time under valgrind is meaningless (about 50x slower), and so is anything that decides
by time: seqserve runs with `--inline-max-us 1e9`, so its lone row runs inline as it does at full speed.

Writes bench/results/instructions.json and prints a table. Needs valgrind (Debian's `valgrind` package).
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Annotated

import grpc
import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from bench.ab import variant_command
from bench.bench_model import BENCH_MODEL, write_bench_model
from bench.scenarios import BenchConfig, BenchRun
from seqserve.v1 import seqserve_pb2 as pb
from seqserve.v1 import seqserve_pb2_grpc as pb_grpc

RESULTS = Path(__file__).parent / "results" / "instructions.json"
WARMUP_MESSAGES = 300
_LISTENING = re.compile(r"listening grpc=(\S+)")
# Lines of `callgrind_annotate`: "  12,345 (1.2%)  file:function [/path/to/object.so]".
_ANNOTATED = re.compile(r"\s*([\d,]+)\s+\([^)]*\)\s+.*\[(.*)\]\s*$")

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


async def _round_trips(target: str, chunk: int, features: int, messages: int, pid: int) -> None:
    async with grpc.aio.insecure_channel(target) as channel:
        call = pb_grpc.InferenceServiceStub(channel).Stream()
        await call.write(pb.StreamRequest(open=pb.StreamOpen(model=BENCH_MODEL)))
        await call.read()
        values = np.random.default_rng(0).standard_normal(chunk * features, dtype=np.float32).tobytes()
        request = pb.StreamRequest(chunk=pb.StreamChunk(steps=chunk, values=values))

        async def send(count: int) -> None:
            for _ in range(count):
                await call.write(request)
                await call.read()

        await send(WARMUP_MESSAGES)
        subprocess.run(["callgrind_control", "-i", "on", str(pid)], capture_output=True, check=True)
        await send(messages)
        subprocess.run(["callgrind_control", "-i", "off", str(pid)], capture_output=True, check=True)
        await call.write(pb.StreamRequest(end=pb.StreamEnd()))
        await call.done_writing()


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


def _count(command: list[str], chunk: int, features: int, messages: int, work: Path, name: str) -> dict:
    profile = work / f"{name}-{chunk}.callgrind"
    valgrind = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={profile}"]
    command, environment = _without_env(command)
    process = subprocess.Popen(
        [*valgrind, *command], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment
    )
    try:
        target = next((m[1] for line in process.stdout if (m := _LISTENING.search(line))), None)
        if target is None:
            raise RuntimeError(f"{name} exited before it listened: {' '.join(command)}")
        asyncio.run(_round_trips(target, chunk, features, messages, process.pid))
    finally:
        process.terminate()
        output = process.communicate(timeout=300)[0]
    collected = re.findall(r"Collected : (\d+)", output)
    objects = _by_object(profile)
    return {
        "server": name,
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
        list[str] | None, typer.Option(help="NAME=SPEC as bench.ab takes them; default echo, naive, seqserve")
    ] = None,
    chunks: Annotated[
        str, typer.Option(help="Comma-separated chunk sizes, one stream each (32 takes minutes per server).")
    ] = "1",
    messages: Annotated[int, typer.Option(min=10)] = 1000,
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
        for chunk in (int(c) for c in chunks.split(",")):
            for name, spec in specs.items():
                command = variant_command(run, spec, work / "repository", work)
                if not spec.startswith(("@", "!")):
                    command = [*command, "--inline-max-us", "1e9"]
                rows.append(_count(command, chunk, info.features, messages, work, name))
                console.print(json.dumps(rows[-1]))
    table = Table(title="instructions per message (callgrind, whole server process, 1 stream)")
    for column in ("chunk", "server", "instructions/msg", "libpython", "onnxruntime", "cygrpc", "numpy"):
        table.add_column(column, justify="right")
    for row in rows:
        parts = row["by_object_per_message"]
        table.add_row(
            str(row["chunk"]), row["server"], f"{row['instructions_per_message']:,}",
            *(f"{parts.get(key, 0):,}" for key in
              ("libpython3", "onnxruntime_pybind11_state", "cygrpc", "_multiarray_umath")),
        )  # fmt: skip
    console.print(table)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"rows": rows}, indent=2))


if __name__ == "__main__":
    app()
