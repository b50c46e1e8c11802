"""`make demo`: the whole pipeline through the real `seqserve` command, each step printed as typed.

Train a JapaneseVowels GRU (many-to-one) and a basic_motions_stream GRU (many-to-many), export both into a
model repository, start the server, stream both test sets at once, show a few Prometheus lines, and stop
the server with SIGTERM. Everything is written under `runs/demo/` (git-ignored) and rebuilt on each run.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from seqserve.service.server.launch import start_server_process

WORKDIR = Path("runs/demo")
REPOSITORY = WORKDIR / "repository"
SERVER_LOG = WORKDIR / "seqserve-serve.log"
MODELS = {
    "jv-gru": ["--dataset", "japanese_vowels", "--cell", "gru"],
    "bms-gru": ["--dataset", "basic_motions_stream", "--cell", "gru"],
}
SEQSERVE = [sys.executable, "-m", "seqserve.cli"]
METRIC_PREFIXES = (
    "seqserve_streams_total",
    "seqserve_steps_total",
    "seqserve_batch_size_sum",
    "seqserve_batch_size_count",
    "seqserve_streams_active",
)


def _show(args: list[str]) -> None:
    print(f"\n$ seqserve {shlex.join(args)}", flush=True)


def _seqserve(*args: str) -> None:
    _show(list(args))
    subprocess.run([*SEQSERVE, *args], check=True)


def _metrics_lines(metrics_target: str) -> list[str]:
    with urllib.request.urlopen(f"http://{metrics_target}/metrics", timeout=10) as response:
        text = response.read().decode()
    return [line for line in text.splitlines() if line.startswith(METRIC_PREFIXES)]


def main() -> None:
    started = time.perf_counter()
    shutil.rmtree(WORKDIR, ignore_errors=True)
    for name, flags in MODELS.items():
        _seqserve("train", *flags, "--out", str(WORKDIR / name))
    _seqserve("export", *(str(WORKDIR / name) for name in MODELS), "--repository", str(REPOSITORY))
    _seqserve("models", "--repository", str(REPOSITORY))

    _show(["serve", "--repository", str(REPOSITORY), "--port", "0", "--metrics-port", "0"])
    server = start_server_process(REPOSITORY, log_path=SERVER_LOG)
    print(f"serving on {server.target}, metrics on {server.metrics_url}; its log: {SERVER_LOG}", flush=True)
    try:
        clients = []
        for name, flags in MODELS.items():
            args = ["stream", "--target", server.target, "--model", name, flags[0], flags[1]]
            args += ["--chunk", "8", "--concurrency", "16"]
            _show(args)
            clients.append(subprocess.Popen([*SEQSERVE, *args]))
        failed = [client.args for client in clients if client.wait() != 0]
        if failed:
            raise SystemExit(f"demo: a stream client failed: {failed}")
        print("\nA few of the server's Prometheus metrics:")
        for line in _metrics_lines(server.metrics_target):
            print(f"  {line}")
    finally:
        code = server.terminate()
        print(f"\nserver stopped with SIGTERM, exit code {code}")
    print(f"demo finished in {time.perf_counter() - started:.0f} s")
    print(
        "next: `source .venv/bin/activate` (then `seqserve --help`), and the README's "
        '"The pipeline by hand"; the demo\'s models are in runs/demo/repository'
    )


if __name__ == "__main__":
    main()
