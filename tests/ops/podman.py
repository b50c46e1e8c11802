"""podman from the tests: the project scripts that install it and build the images, and the containers run."""

from __future__ import annotations

import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SERVE_IMAGE = "localhost/seqserve:cpu"
TRAIN_IMAGE = "localhost/seqserve:train"


class ScriptFailed(RuntimeError):
    """A project script exited non-zero; the message holds the end of its output."""


def run_script(name: str, log_dir: Path, timeout_s: float) -> str:
    """Run scripts/<name>, its output to <log_dir>/<name>.log; returns its last stdout line."""
    log_path = log_dir / f"{Path(name).stem}.log"
    with log_path.open("w") as log:
        done = subprocess.run(
            [str(ROOT / "scripts" / name)], cwd=ROOT, stdout=subprocess.PIPE, stderr=log, text=True,
            timeout=timeout_s,
        )  # fmt: skip
    if done.returncode != 0:
        tail = "\n".join(log_path.read_text().splitlines()[-15:])
        raise ScriptFailed(f"scripts/{name} exited {done.returncode}:\n{tail}")
    return done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""


def podman(*args: str, timeout_s: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout_s)
    if check and done.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} exited {done.returncode}:\n{done.stdout}{done.stderr}")
    return done


def image_size_mb(image: str) -> float:
    return int(podman("image", "inspect", "--format", "{{.Size}}", image).stdout) / 1e6


def unique(prefix: str) -> str:
    """A name no other test run on this machine uses at the same time."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@dataclass
class Stopwatch:
    """Seconds each stage of the image test took, printed with the image sizes at the end."""

    stages: dict[str, float] = field(default_factory=dict)
    _started: float = field(default_factory=time.monotonic)

    def lap(self, stage: str) -> None:
        now = time.monotonic()
        self.stages[stage] = now - self._started
        self._started = now
