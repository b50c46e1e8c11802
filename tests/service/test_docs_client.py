"""The Python client example in docs/client.md runs as printed, against a real server."""

from __future__ import annotations

from pathlib import Path

from seqserve.service.server.launch import ServerThread

from .docs_examples import code_blocks, run_python_example


def test_the_documented_python_client_runs(server: ServerThread, tmp_path: Path) -> None:
    code = code_blocks("client.md", "python")[0]
    lines = run_python_example(code, server.target, tmp_path / "client_example.py")
    assert lines[0].startswith("jv-gru:1 many_to_one, 12 features")
    assert sum(line.startswith("chunk ") for line in lines) == 4  # 20 steps in chunks of 5
    assert any(line.startswith("final label ") and "after 20 steps" in line for line in lines)
    assert sum(line.startswith("classified as ") for line in lines) == 2
