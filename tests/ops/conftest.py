"""Fixtures of the operations tests: image entrypoints started as servers on the test repository."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .image_entrypoint import ImageServer, serving_image_pythonpath, start_entrypoint


@pytest.fixture
def start_image_server(model_repository: Path, tmp_path: Path) -> Iterator[Callable[..., ImageServer]]:
    """`start(dockerfile, **env_overrides)`: run that image's entrypoint on the test repository until it
    serves; every server still running at teardown is killed."""
    started: list[ImageServer] = []
    blocked = serving_image_pythonpath(tmp_path / "serving-image-pythonpath")

    def start(dockerfile: Path, **overrides: str) -> ImageServer:
        server = start_entrypoint(dockerfile, model_repository, blocked, **overrides)
        started.append(server)
        return server

    yield start
    for server in started:
        server.kill()
