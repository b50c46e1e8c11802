"""`mypy --strict` on the client package (service/client/ and seqserve/errors.py), run by `make lint`.

The folders install under other names (service/ is seqserve.service: setup's package-dir), which mypy
cannot follow from the source tree, so it checks a tree of links laid out as the installed package.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = {"service": "service", "training": "training", "export": "export"}


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="seqserve-mypy-") as work:
        package = Path(work) / "seqserve"
        package.mkdir()
        for entry in (ROOT / "seqserve").iterdir():
            if entry.name != "__pycache__":
                (package / entry.name).symlink_to(entry)
        for name, folder in STAGES.items():
            (package / name).symlink_to(ROOT / folder)
        command = [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml")]
        command += ["--cache-dir", str(ROOT / ".mypy_cache")]
        command += ["-p", "seqserve.service.client", "-m", "seqserve.errors"]
        return subprocess.run(command, cwd=work).returncode


if __name__ == "__main__":
    sys.exit(main())
