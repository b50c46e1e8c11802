"""Run a serving image's exact entrypoint outside Docker (there is no Docker engine in CI).

The serve stage of a Dockerfile is read for its ENV, ENTRYPOINT, CMD and HEALTHCHECK; the test then runs
that command with the image's environment, moving only what a container would mount or publish (the
model repository, the listen address, the ports) and hiding the training stack the image does not have.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from seqserve.service.server.launch import ServerProcess, ServerStartError

DOCKER_DIR = Path(__file__).resolve().parents[2] / "docker"
# In the `train` extra only: the serving image has none of them, so the served process must not need them.
NOT_IN_SERVING_IMAGE = ("torch", "onnx", "matplotlib")
START_TIMEOUT_S = 60.0


@dataclass
class ServeStage:
    """What a Dockerfile's last stage runs: its environment, command line and health check."""

    env: dict[str, str]
    command: list[str]
    healthcheck: list[str]
    exposed: list[int]


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with continuation lines joined and comments dropped, as Docker reads."""
    logical: list[str] = []
    pending = ""
    for line in dockerfile.read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        logical.append(pending.strip())
        pending = ""
    return [(text.split(None, 1)[0].upper(), text.split(None, 1)[1]) for text in logical]


def parse_serve_stage(dockerfile: Path) -> ServeStage:
    instructions = _instructions(dockerfile)
    last_from = max(i for i, (name, _) in enumerate(instructions) if name == "FROM")
    stage = ServeStage(env={}, command=[], healthcheck=[], exposed=[])
    entrypoint: list[str] = []
    cmd: list[str] = []
    for name, args in instructions[last_from + 1 :]:
        if name == "ENV":
            stage.env.update(pair.split("=", 1) for pair in shlex.split(args))
        elif name == "ENTRYPOINT":
            entrypoint = json.loads(args)
        elif name == "CMD":
            cmd = json.loads(args)
        elif name == "HEALTHCHECK":
            stage.healthcheck = json.loads(args.split(" CMD ", 1)[1])
        elif name == "EXPOSE":
            stage.exposed = [int(port.split("/")[0]) for port in args.split()]
    stage.command = entrypoint + cmd
    return stage


@dataclass
class ImageServer(ServerProcess):
    """A server started from an image's entrypoint, with the image's HEALTHCHECK."""

    healthcheck: list[str] = field(default_factory=list)

    def run_healthcheck(self) -> subprocess.CompletedProcess:
        """The image's HEALTHCHECK, in the container's environment with the port the server took."""
        env = {**self.env, "SEQSERVE_SERVE_PORT": self.target.rsplit(":", 1)[1]}
        return subprocess.run(self.healthcheck, env=env, capture_output=True, text=True, timeout=30)


def serving_image_pythonpath(root: Path) -> Path:
    """A PYTHONPATH entry under which importing a train-only package fails, as it would in the image."""
    root.mkdir(parents=True, exist_ok=True)
    for package in NOT_IN_SERVING_IMAGE:
        (root / f"{package}.py").write_text(f"raise ImportError('{package} is not in the serving image')\n")
    return root


def image_environment(stage: ServeStage, repository: Path, blocked: Path, **overrides: str) -> dict[str, str]:
    """The container's environment on this machine: the image's ENV less PATH, plus the mounted paths."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("SEQSERVE_")}
    env.update({key: value for key, value in stage.env.items() if key != "PATH"})
    env.update(
        SEQSERVE_SERVE_REPOSITORY=str(repository),
        SEQSERVE_SERVE_HOST="127.0.0.1",
        SEQSERVE_SERVE_METRICS_HOST="127.0.0.1",
        SEQSERVE_SERVE_PORT="0",
        SEQSERVE_SERVE_METRICS_PORT="0",
        **overrides,
    )
    # The console scripts of this interpreter's environment stand in for the image's.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONPATH"] = str(blocked)
    return env


def start_entrypoint(dockerfile: Path, repository: Path, blocked: Path, **overrides: str) -> ImageServer:
    """Start the image's ENTRYPOINT + CMD and wait for its listening line; fail the test if none comes."""
    stage = parse_serve_stage(dockerfile)
    env = image_environment(stage, repository, blocked, **overrides)
    try:
        server = ImageServer.start(stage.command, env=env, timeout_s=START_TIMEOUT_S)
    except ServerStartError as error:
        pytest.fail(str(error))
    server.healthcheck = stage.healthcheck
    return server
