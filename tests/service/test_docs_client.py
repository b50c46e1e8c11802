"""The Python client example in docs/client.md runs as printed, against a real server."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from seqserve.service.launch import ServerThread

DOC = Path(__file__).resolve().parents[2] / "docs" / "client.md"


def test_the_documented_python_client_runs(server: ServerThread, tmp_path: Path) -> None:
    code = re.search(r"```python\n(.*?)```", DOC.read_text(), re.S).group(1)
    assert '"127.0.0.1:50051"' in code
    script = tmp_path / "client_example.py"
    script.write_text(code.replace('"127.0.0.1:50051"', repr(server.target)))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("jv-gru:1 many_to_one, 12 features")
    assert sum(line.startswith("chunk ") for line in lines) == 4  # 20 steps in chunks of 5
    assert any(line.startswith("final label ") and "after 20 steps" in line for line in lines)
    assert sum(line.startswith("classified as ") for line in lines) == 2
