"""`pip install seqserve[client]` alone: the wheel and sdist build (`python -m build`, `twine check`), the
wheel holds the generated stubs, and in an empty virtual environment with only the client extra it streams
against a real server, with no onnxruntime, torch or typer there to import.

About a minute: the build, a fresh venv, and pip fetching grpcio, protobuf and numpy. Skipped, saying so,
only where pip cannot reach a package index.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import numpy as np
import pytest

from seqserve import Client
from seqserve.service.server.launch import start_server_process
from seqserve.training.datasets import load_dataset

ROOT = Path(__file__).resolve().parents[2]
# What a newcomer runs after `pip install seqserve[client]` (docs/client.md's first example, in short).
STREAM = """
import sys
import numpy as np
from seqserve import Client

x = np.load(sys.argv[2])
with Client(sys.argv[1]) as client, client.stream("jv-gru") as stream:
    for part in np.array_split(x, 4):
        stream.send(part)
    print(stream.end().label)
from importlib.util import find_spec
found = [name for name in ("onnxruntime", "torch", "typer", "rich") if find_spec(name) is not None]
print("importable:", ",".join(found) or "none")
"""
NOT_SOURCE = (".git", ".venv", "*_cache", "__pycache__", "build", "dist", "*.egg-info", "runs", ".hypothesis")
NOT_SOURCE += ("model_repository", "results", "*_pb2*.py*")
OFFLINE = ("Could not find a version", "No matching distribution", "NewConnectionError", "Temporary failure")


def _run(command: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def test_the_client_wheel_installs_alone_and_streams(model_repository: Path, tmp_path: Path) -> None:
    # Built from a copy: the build writes its stubs, build/ and egg-info beside the sources.
    source = Path(shutil.copytree(ROOT, tmp_path / "source", ignore=shutil.ignore_patterns(*NOT_SOURCE)))
    dist = tmp_path / "dist"
    built = _run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(source)], source
    )
    assert built.returncode == 0, built.stderr[-3000:]
    wheel = next(dist.glob("seqserve-*.whl"))
    assert len(list(dist.glob("seqserve-*.tar.gz"))) == 1
    checked = _run([sys.executable, "-m", "twine", "check", "--strict", *map(str, dist.iterdir())], ROOT)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    names = set(zipfile.ZipFile(wheel).namelist())
    for inside in ("seqserve/v1/seqserve_pb2.py", "seqserve/v1/seqserve_pb2.pyi", "seqserve/py.typed",
                   "seqserve/errors.py", "seqserve/service/client/sync.py"):  # fmt: skip
        assert inside in names, f"{inside} is not in {wheel.name}"

    env = tmp_path / "venv"
    venv.create(env, with_pip=True)
    python = str(env / "bin" / "python")
    installed = _run([python, "-m", "pip", "install", "--quiet", f"{wheel}[client]"], tmp_path)
    if installed.returncode != 0 and any(sign in installed.stderr for sign in OFFLINE):
        pytest.skip(f"pip cannot reach a package index: {installed.stderr.strip().splitlines()[-1]}")
    assert installed.returncode == 0, installed.stderr[-3000:]
    frozen = _run([python, "-m", "pip", "freeze", "--all"], tmp_path).stdout.lower().splitlines()
    got = {line.replace(" @ ", "==").split("==")[0].replace("_", "-") for line in frozen} - {
        "pip",
        "setuptools",
    }
    assert (
        {"seqserve", "grpcio", "protobuf", "numpy"}
        <= got
        <= {"seqserve", "grpcio", "protobuf", "numpy", "typing-extensions"}
    ), got

    x = load_dataset(dataset="japanese_vowels").test.sequences[0]
    np.save(tmp_path / "x.npy", x)
    (tmp_path / "stream.py").write_text(STREAM)
    server = start_server_process(model_repository, "--metrics-port", "-1")
    try:
        done = _run(
            [python, str(tmp_path / "stream.py"), server.target, str(tmp_path / "x.npy")], tmp_path, 120
        )
        with Client(server.target) as client:
            expected = client.predict("jv-gru", x).label
    finally:
        server.terminate()
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [expected, "importable: none"]
