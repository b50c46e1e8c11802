"""Generation throughput: server-side `Generate` against two client-side loops, at 1, 16 and 64 generations.

    python -m bench.generation --repository REPO --model shakespeare-gru [--tokens 100]

- generate: one Generate call per generation, greedy; the server feeds each character back itself.
- client loop (a): one Stream per generation, the prompt as one chunk, then one chunk of one token per
  character, the client choosing the argmax of each answer and sending it back.
- stateless (b): one Classify per character with the whole text so far (what a stateless server needs).

Every variant makes the same greedy text. Reported: characters per second over all generations, and the
p50 / p99 time per character (between consecutive characters of one generation). Writes
bench/results/generation.json and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

import grpc
import numpy as np

from seqserve.service.client import CHANNEL_OPTIONS, generate
from seqserve.service.launch import start_server_process
from seqserve.v1 import seqserve_pb2 as pb
from seqserve.v1 import seqserve_pb2_grpc as pb_grpc

PROMPT = "Ham.\n"
RESULTS = Path(__file__).parent / "results" / "generation.json"


async def _generate(stub, model: str, tokens: int) -> list[float]:
    result = await generate(stub, model, PROMPT, tokens, temperature=0.0)
    return result.arrivals_s


async def _client_loop(stub, model: str, tokens: int, vocabulary: list[str]) -> list[float]:
    call = stub.Stream()
    await call.write(pb.StreamRequest(open=pb.StreamOpen(model=model)))
    await call.read()
    ids = [vocabulary.index(c) for c in PROMPT]
    arrivals, sent = [], time.perf_counter()
    chunk = ids
    for _ in range(tokens):
        await call.write(pb.StreamRequest(chunk=pb.StreamChunk(steps=len(chunk), tokens=chunk)))
        answer = await call.read()
        chunk = [answer.chunk.results[-1].label_index]
        arrivals.append(time.perf_counter() - sent)
    await call.write(pb.StreamRequest(end=pb.StreamEnd()))
    await call.done_writing()
    while await call.read() is not grpc.aio.EOF:
        pass
    return arrivals


async def _stateless(stub, model: str, tokens: int, vocabulary: list[str]) -> list[float]:
    ids = [vocabulary.index(c) for c in PROMPT]
    arrivals, sent = [], time.perf_counter()
    for _ in range(tokens):
        request = pb.ClassifyRequest(model=model, sequences=[pb.Sequence(steps=len(ids), tokens=ids)])
        response = await stub.Classify(request)
        ids.append(response.results[0].results[-1].label_index)
        arrivals.append(time.perf_counter() - sent)
    return arrivals


async def _run(target: str, model: str, variant: str, concurrency: int, tokens: int) -> dict:
    async with grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        vocabulary = list((await stub.GetModel(pb.GetModelRequest(model=model))).model.vocabulary)
        one = {
            "generate": lambda: _generate(stub, model, tokens),
            "client_loop": lambda: _client_loop(stub, model, tokens, vocabulary),
            "stateless": lambda: _stateless(stub, model, tokens, vocabulary),
        }[variant]
        started = time.perf_counter()
        arrivals = await asyncio.gather(*(one() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    gaps = np.concatenate([np.diff([0.0, *a]) for a in arrivals])
    return {
        "variant": variant,
        "generations": concurrency,
        "tokens_each": tokens,
        "chars_per_s": round(concurrency * tokens / elapsed, 1),
        "p50_ms_per_char": round(float(np.percentile(gaps, 50)) * 1e3, 3),
        "p99_ms_per_char": round(float(np.percentile(gaps, 99)) * 1e3, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, required=True)
    parser.add_argument("--model", default="shakespeare-gru")
    parser.add_argument("--tokens", type=int, default=100)
    parser.add_argument("--concurrency", default="1,16,64")
    args = parser.parse_args()
    server = start_server_process(args.repository, "--metrics-port", "-1")
    rows = []
    try:
        for concurrency in [int(c) for c in args.concurrency.split(",")]:
            for variant in ("generate", "client_loop", "stateless"):
                row = asyncio.run(_run(server.target, args.model, variant, concurrency, args.tokens))
                rows.append(row)
                print(json.dumps(row), flush=True)
    finally:
        server.terminate()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"model": args.model, "prompt": PROMPT, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
