"""Generate before and after a change, A/B in one run: two servers side by side on one bench-lm repository,
one on this tree's code and one on REV's, rounds alternated (the order swapped every round), so the box's
drift hits both alike. Each round runs Generate and the client loop on each server at `--generations`.

    python -m bench.experiments.generation_ab --rev 576620a [--rounds 4] [--generations 64] [--tokens 200]

REV's code is laid out as bench.experiments.ab lays out a `git:REV` variant. Prints the medians and writes
bench/results/generation_ab.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from dataclasses import asdict
from pathlib import Path

from bench.bench_model import BENCH_LM, write_bench_language_model
from bench.experiments.ab import at_revision
from bench.generation import GenerationRow, measure_row
from bench.process_costs import cpu_clock
from seqserve.service.server.launch import running_server, serve_command

FIGURES = ("chars_per_s", "server_cpu_us_per_char", "client_cpu_us_per_char", "tokens_per_message")
ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rev", required=True, help="the code to compare against (a commit or branch)")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--generations", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "generation_ab.json")
    args = parser.parse_args()
    rows: dict[str, list[GenerationRow]] = {}
    with tempfile.TemporaryDirectory(prefix="seqserve-generation-ab-") as work:
        repository = Path(work) / "repository"
        write_bench_language_model(repository, Path(work))
        serve = serve_command(repository, "--inference-threads", "1")
        with (
            running_server(at_revision(args.rev, serve, Path(work)), Path(work) / "old.log") as old,
            running_server(serve, Path(work) / "new.log") as new,
        ):
            servers = {"old": old, "new": new}
            for server in servers.values():  # warm both
                measure_row(server.target, cpu_clock(server.pid), BENCH_LM, "generate", 4, 10)
            for index in range(args.rounds):
                order = ("old", "new") if index % 2 == 0 else ("new", "old")
                for variant in ("generate", "client_loop"):
                    for name in order:
                        server = servers[name]
                        row = measure_row(
                            server.target, cpu_clock(server.pid), BENCH_LM, variant, args.generations,
                            args.tokens, index + 1,
                        )  # fmt: skip
                        rows.setdefault(f"{name}_{variant}", []).append(row)
                        print(name, json.dumps(asdict(row)), flush=True)
    summary: dict[str, object] = {"rev": args.rev, "generations": args.generations, "tokens": args.tokens}
    for key, measured in rows.items():
        for figure in FIGURES:
            summary[f"{key}_{figure}"] = statistics.median(getattr(r, figure) for r in measured)
    for name in ("old", "new"):
        pairs = zip(rows[f"{name}_generate"], rows[f"{name}_client_loop"], strict=True)
        summary[f"{name}_generate_vs_client_loop"] = statistics.median(
            g.chars_per_s / c.chars_per_s for g, c in pairs
        )
    summary["new_vs_old_generate"] = statistics.median(
        n.chars_per_s / o.chars_per_s for n, o in zip(rows["new_generate"], rows["old_generate"], strict=True)
    )
    summary["load_average_at_end"] = os.getloadavg()
    args.out.write_text(json.dumps({**summary, "rows": {k: [asdict(r) for r in v] for k, v in rows.items()}},
                                   indent=2) + "\n")  # fmt: skip
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
