"""Generate before and after a change, A/B in one run: two servers side by side on one bench-lm repository,
one on this tree's code and one on REV's, rounds alternated (the order swapped every round), so the box's
drift hits both alike. Each round runs Generate and the client loop on each server at `--generations`.

    python -m bench.generation_ab --rev 576620a [--rounds 4] [--generations 64] [--tokens 200]

REV's `seqserve/`, `service/`, `training/` and `export/` are checked out with `git archive` into a package
folder that the old server imports first (PYTHONPATH, started from that folder); the gRPC stubs are this
tree's (generated at install). Prints the medians and writes bench/results/generation_ab.json.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import asdict
from pathlib import Path

from bench.bench_model import BENCH_LM, write_bench_language_model
from bench.generation import GenerationRow, measure_row
from bench.server_process import running_server

FIGURES = ("chars_per_s", "server_cpu_us_per_char", "client_cpu_us_per_char", "tokens_per_message")
ROOT = Path(__file__).resolve().parents[1]
# The repository's folders and the package names they install as (pyproject's package-dir).
PACKAGES = {"seqserve": "seqserve", "service": "seqserve/service", "training": "seqserve/training",
            "export": "seqserve/export"}  # fmt: skip


def checkout_package(rev: str, into: Path) -> Path:
    """REV's code laid out as the installed `seqserve` package, under `into`."""
    for folder, package in PACKAGES.items():
        archive = subprocess.run(["git", "archive", rev, folder], cwd=ROOT, check=True, capture_output=True)
        with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
            for member in tar.getmembers():
                member.name = package + member.name[len(folder) :]
            tar.extractall(into, filter="data")
    shutil.copytree(ROOT / "seqserve" / "v1", into / "seqserve" / "v1", dirs_exist_ok=True)
    return into


def _serve(repository: Path, package: Path | None = None) -> list[str]:
    command = [sys.executable, "-m", "seqserve.cli", "serve", "--repository", str(repository),
               "--port", "0", "--metrics-port", "0", "--inference-threads", "1"]  # fmt: skip
    if package is None:
        return command
    # From the package folder, so `python -m` puts it first on sys.path, ahead of the editable install.
    return ["env", "-C", str(package), f"PYTHONPATH={package}", *command]


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
        package = checkout_package(args.rev, Path(work) / "old")
        with (
            running_server(_serve(repository, package), Path(work) / "old.log") as old,
            running_server(_serve(repository), Path(work) / "new.log") as new,
        ):
            servers = {"old": old, "new": new}
            for server in servers.values():  # warm both
                measure_row(server.target, server.cpu_seconds, BENCH_LM, "generate", 4, 10)
            for index in range(args.rounds):
                order = ("old", "new") if index % 2 == 0 else ("new", "old")
                for variant in ("generate", "client_loop"):
                    for name in order:
                        server = servers[name]
                        row = measure_row(
                            server.target, server.cpu_seconds, BENCH_LM, variant, args.generations,
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
