"""Generation throughput: server-side `Generate` against two client-side loops, at 1, 16 and 64 generations.

`make bench` runs these rows (bench/run.py) on `bench-lm`, a seeded GRU language model of the README
model's shape (bench/bench_model.py: speed does not depend on the weights, so the bench trains nothing).
Alone, on a model of your own:

    python -m bench.generation [--repository REPO --model shakespeare-gru] [--tokens 200] [--rounds 3]

- generate: one Generate call per generation, greedy; the server feeds each character back itself.
- client loop (a): one Stream per generation, the prompt as one chunk, then one chunk of one token per
  character, the client choosing the argmax of each answer and sending it back.
- stateless (b): one Classify per character with the whole text so far (what a stateless server needs).

Every variant makes the same greedy text. Reported per row: characters per second over all generations,
the p50 / p99 time per character (the gaps between consecutive characters of one generation; characters
that arrive in one message have a gap of 0), server and client CPU per character (from /proc and the
client process's own times: client and server share the box), and Generate's tokens per message. At the
top concurrency the generate / client-loop pair runs `rounds` times, alternated, and the ratio is their
median: the target is generate >= 3x the client loop at 64 generations.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.process_costs import cpu_clock
from bench.report import TextTable, print_and_write
from bench.scenarios import BenchRun
from seqserve.service.client.client import AsyncClient
from seqserve.service.client.load import generate
from seqserve.service.server.launch import running_server, serve_command

PROMPT = "Ham.\n"
VARIANTS = ("generate", "client_loop", "stateless")
TARGET_GENERATIONS = 64
TARGET_RATIO = 3.0
RESULTS = Path(__file__).parent / "results" / "generation.json"


async def _generate(
    client: AsyncClient, model: str, tokens: int, vocabulary: list[str]
) -> tuple[list[float], int]:
    result = await generate(client, model, PROMPT, tokens, temperature=0.0)
    return result.arrivals_s, result.messages


async def _client_loop(
    client: AsyncClient, model: str, tokens: int, vocabulary: list[str]
) -> tuple[list[float], int]:
    chunk = [vocabulary.index(c) for c in PROMPT]
    arrivals, sent = [], time.perf_counter()
    async with client.stream(model) as stream:
        for _ in range(tokens):
            answer = await stream.send(chunk)
            chunk = [int(answer.label_indexes[-1])]
            arrivals.append(time.perf_counter() - sent)
    return arrivals, tokens


async def _stateless(
    client: AsyncClient, model: str, tokens: int, vocabulary: list[str]
) -> tuple[list[float], int]:
    ids = [vocabulary.index(c) for c in PROMPT]
    arrivals, sent = [], time.perf_counter()
    for _ in range(tokens):
        answer = await client.predict(model, ids)
        ids.append(int(answer.label_indexes[-1]))
        arrivals.append(time.perf_counter() - sent)
    return arrivals, tokens


_RUNNERS = {"generate": _generate, "client_loop": _client_loop, "stateless": _stateless}


@dataclass
class GenerationRow:
    variant: str
    generations: int
    tokens_each: int
    round: int
    chars_per_s: float
    p50_ms_per_char: float
    p99_ms_per_char: float
    server_cpu_us_per_char: float
    client_cpu_us_per_char: float
    tokens_per_message: float  # answers per character for the two loops: 1
    load_average: float


def _client_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


async def _run(target: str, model: str, variant: str, concurrency: int, tokens: int) -> dict[str, Any]:
    async with AsyncClient(target) as client:
        vocabulary = list((await client.model(model)).vocabulary)
        one = _RUNNERS[variant]
        started = time.perf_counter()
        done = await asyncio.gather(*(one(client, model, tokens, vocabulary) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    gaps = np.concatenate([np.diff([0.0, *arrivals]) for arrivals, _ in done])
    return {
        "elapsed_s": elapsed,
        "p50": float(np.percentile(gaps, 50)),
        "p99": float(np.percentile(gaps, 99)),
        "messages": sum(messages for _, messages in done),
    }


def measure_row(
    target: str, server_cpu_s: Callable[[], float], model: str, variant: str, concurrency: int, tokens: int,
    round_: int = 1,
) -> GenerationRow:  # fmt: skip
    """One variant at one concurrency, on its own event loop (as a fresh client would be)."""
    server_before, client_before = server_cpu_s(), _client_cpu_seconds()
    figures = asyncio.run(_run(target, model, variant, concurrency, tokens))
    chars = concurrency * tokens
    return GenerationRow(
        variant=variant,
        generations=concurrency,
        tokens_each=tokens,
        round=round_,
        chars_per_s=round(chars / figures["elapsed_s"], 1),
        p50_ms_per_char=round(figures["p50"] * 1e3, 3),
        p99_ms_per_char=round(figures["p99"] * 1e3, 3),
        server_cpu_us_per_char=round((server_cpu_s() - server_before) / chars * 1e6, 1),
        client_cpu_us_per_char=round((_client_cpu_seconds() - client_before) / chars * 1e6, 1),
        tokens_per_message=round(chars / figures["messages"], 2),
        load_average=round(os.getloadavg()[0], 2),
    )


def measure_rows(
    target: str, server_cpu_s: Callable[[], float], model: str, counts: tuple[int, ...], tokens: int,
    rounds: int, advance: Callable[[str], None] = lambda name: None,
) -> list[GenerationRow]:  # fmt: skip
    """Every variant at every count; at the top count the generate / client-loop pair `rounds` times,
    the order swapped every round, so the box's drift hits both alike."""
    # Warm the server (sessions, channel code paths) so the first row does not pay for it.
    asyncio.run(_run(target, model, "generate", 2, min(tokens, 10)))
    rows = []
    for count in counts:
        repeats = rounds if count == max(counts) else 1
        for index in range(repeats):
            pair = ("generate", "client_loop") if index % 2 == 0 else ("client_loop", "generate")
            variants = (*pair, "stateless") if index == 0 else pair
            for variant in variants:
                advance(f"generation: {variant} x {count}, round {index + 1}")
                rows.append(measure_row(target, server_cpu_s, model, variant, count, tokens, index + 1))
    return rows


@dataclass
class Generation:
    """The generation rows: Generate, the client loop and the stateless loop at each count of generations."""

    rows: list[GenerationRow]
    model: str
    key: str = "generation"

    def _by(self, variant: str, count: int) -> list[GenerationRow]:
        return [r for r in self.rows if r.variant == variant and r.generations == count]

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "prompt": PROMPT, "rows": [asdict(r) for r in self.rows]}

    def ratios(self) -> dict[str, float]:
        if not self.rows:
            return {}
        top = max(r.generations for r in self.rows)
        generated, loop, stateless = (self._by(v, top) for v in VARIANTS)
        by_round = {r.round: r for r in loop}
        pairs = [g.chars_per_s / by_round[g.round].chars_per_s for g in generated if g.round in by_round]
        ratios = {f"generate_vs_client_loop_{top}": statistics.median(pairs)}
        if stateless:
            median = statistics.median(g.chars_per_s for g in generated)
            ratios[f"generate_vs_stateless_{top}"] = median / stateless[0].chars_per_s
        return ratios

    def targets(self) -> dict[str, tuple[str, float]]:
        key = f"generate_vs_client_loop_{TARGET_GENERATIONS}"
        return {key: (">=", TARGET_RATIO)} if key in self.ratios() else {}

    def tables(self) -> list[TextTable]:
        title = (
            f"Generation on {self.model} (greedy, prompt {PROMPT!r}; ratio: median of the top count's rounds)"
        )
        columns = ("generations", "variant", "round", "chars/s", "p50 ms/char", "p99 ms/char",
                   "server cpu us/char", "client cpu us/char", "tokens/msg", "load avg")  # fmt: skip
        table = TextTable(title, columns)
        for r in self.rows:
            table.add_row(
                str(r.generations), r.variant, str(r.round), f"{r.chars_per_s:,.0f}",
                f"{r.p50_ms_per_char:.2f}", f"{r.p99_ms_per_char:.2f}", f"{r.server_cpu_us_per_char:.0f}",
                f"{r.client_cpu_us_per_char:.0f}", f"{r.tokens_per_message:.2f}", f"{r.load_average:.1f}",
            )  # fmt: skip
        return [table]


def measure(run: BenchRun, lm_repository: Path, model: str) -> Generation:
    """The rows against a `seqserve serve` of its own on the language model's repository."""
    config = run.config
    command = run.command("seqserve", lm_repository)
    with running_server(command, run.logs / "seqserve-generation.log") as server:
        rows = measure_rows(
            server.target, cpu_clock(server.pid), model, config.generation_counts, config.generation_tokens,
            config.ratio_rounds, run.advance,
        )  # fmt: skip
    return Generation(rows, model)


def main() -> None:
    from bench.bench_model import BENCH_LM, write_bench_language_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, help="a repository with the model (default: bench-lm)")
    parser.add_argument("--model", default=BENCH_LM)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    counts = tuple(int(c) for c in args.concurrency.split(","))
    with tempfile.TemporaryDirectory(prefix="seqserve-bench-generation-") as work:
        repository = args.repository
        if repository is None:
            repository = Path(work) / "repository"
            write_bench_language_model(repository, Path(work))
        command = serve_command(repository, "--inference-threads", "1")
        with running_server(command, Path(work) / "seqserve.log") as server:
            rows = measure_rows(
                server.target, cpu_clock(server.pid), args.model, counts, args.tokens, args.rounds,
                lambda name: print(name, flush=True),
            )  # fmt: skip
    section = Generation(rows, args.model)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"cpu_count": os.cpu_count(), "load_average_at_end": os.getloadavg()[0]}
    payload = {"meta": meta, **section.to_dict(), "ratios": section.ratios()}
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print_and_write(section, None)


if __name__ == "__main__":
    main()
