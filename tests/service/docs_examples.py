"""The docs' code blocks as tested artifacts: found in the Markdown, pointed at a test server, run as printed.

A doc's examples call `127.0.0.1:50051`, the README's port; the tests replace only that address with the
test server's (port 0), so what runs is what a reader pastes.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parents[2] / "docs"
DOCUMENTED_TARGET = "127.0.0.1:50051"


def code_blocks(doc: str, language: str = "") -> list[str]:
    """The fenced blocks of docs/<doc> whose info string is `language` ("" for a bare fence), in order.

    Fences are paired walking the lines: a pattern would take a block's closing fence for an opening one.
    """
    blocks, info, lines = [], "", None
    for line in (DOCS / doc).read_text().splitlines(keepends=True):
        if not line.startswith("```"):
            if lines is not None:
                lines.append(line)
        elif lines is None:
            info, lines = line[3:].strip(), []
        else:
            if info == language:
                blocks.append("".join(lines))
            lines = None
    return blocks


def run_python_example(code: str, target: str, script: Path) -> list[str]:
    """Runs a documented program against `target`, in the script's folder (where a test puts the files the
    program reads), and returns its stdout lines; fails with its stderr."""
    assert f'"{DOCUMENTED_TARGET}"' in code, "the example no longer calls the documented address"
    script.write_text(code.replace(f'"{DOCUMENTED_TARGET}"', repr(target)))
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, cwd=script.parent
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def shell_command(doc: str, program: str, target: str) -> list[str]:
    """The documented command line that starts with `program` (backslash continuations joined), as argv,
    with the documented address replaced by `target`."""
    for block in code_blocks(doc):
        for line in block.replace("\\\n", " ").splitlines():
            if line.startswith(program):
                assert DOCUMENTED_TARGET in line, "the command no longer calls the documented address"
                return shlex.split(line.replace(DOCUMENTED_TARGET, target))
    raise AssertionError(f"docs/{doc} has no command line starting with {program}")
