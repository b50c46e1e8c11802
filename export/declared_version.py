"""A graph seqserve did not write, put into a repository as `<repo>/<name>/<version>/`: model.onnx, its
declaration.json, and any .npy file of initial state the declaration names. Whole or absent, as
export/repository.py writes seqserve's own versions: everything goes into a hidden temp folder beside the
version (same file system), is fsynced, and is renamed into place; readers skip the temp folder.

Standard library only (no onnx, no torch), so that `seqserve inspect --write` runs in the serving image.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from seqserve import contract
from seqserve import declaration as declarations
from seqserve.export.errors import ExportInputError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VersionTarget:
    """Where a version goes: `<repository>/<name>/<version>`."""

    repository: Path
    name: str
    version: int

    @property
    def folder(self) -> Path:
        return contract.version_dir(self.repository, self.name, self.version)

    @classmethod
    def parse(cls, path: Path) -> VersionTarget:
        """`models/vad/1` -> repository `models`, name `vad`, version 1."""
        path = Path(path)
        if not path.name.isdigit() or int(path.name) < 1:
            raise ExportInputError(
                f"--write {path}: the last folder is the version, a number >= 1; expected "
                "<repository>/<name>/<version>, e.g. models/vad/1"
            )
        try:
            name = contract.check_model_name(path.parent.name)
        except contract.ContractError as error:
            raise ExportInputError(f"--write {path}: {error}") from error
        return cls(path.parent.parent, name, int(path.name))


def initial_files(declaration: dict[str, Any]) -> list[str]:
    """The .npy files of initial state a (resolved) declaration names, relative to its version folder."""
    return [s["initial"] for s in declaration.get("states", []) if s.get("initial", "zeros") != "zeros"]


def write_version(
    target: VersionTarget, model: Path, declaration: dict[str, Any], force: bool = False
) -> Path:
    """Copy `model` (and the initial-state files its declaration names, from the model's folder) and write
    `declaration` into `target`; an existing version is refused unless `force`. Returns the folder."""
    folder = target.folder
    if folder.exists() and not force:
        raise ExportInputError(
            f"version {target.version} of model {target.name} already exists at {folder}; pass --force to "
            "replace it"
        )
    if target.repository.exists() and not target.repository.is_dir():
        raise ExportInputError(f"repository {target.repository} is a file, expected a folder")
    for name in initial_files(declaration):
        if not (Path(model).parent / name).is_file():
            raise ExportInputError(
                f"{Path(model).parent / name} does not exist; the declaration names it as a state's initial "
                "value (a .npy file beside the model)"
            )
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = folder.parent / f".tmp-{target.version}-{uuid.uuid4().hex}"
    staging.mkdir()
    try:
        _copy_synced(model, staging / contract.MODEL_FILE)
        for name in initial_files(declaration):
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            _copy_synced(Path(model).parent / name, staging / name)
        text = json.dumps(declaration, indent=2) + "\n"
        write_synced(staging / declarations.DECLARATION_FILE, text.encode())
        sync_folder(staging)
        retired = move_into_place(staging, folder)
        sync_folder(folder.parent)
        if retired is not None:
            shutil.rmtree(retired)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("wrote %s", folder)
    return folder


def _copy_synced(source: Path, destination: Path) -> None:
    with open(source, "rb") as reading, open(destination, "wb") as writing:
        shutil.copyfileobj(reading, writing, 1 << 20)
        writing.flush()
        os.fsync(writing.fileno())


def write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def sync_folder(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def move_into_place(staging: Path, folder: Path) -> Path | None:
    """Rename `staging` to `folder`. An existing folder steps aside first (a folder cannot be renamed over a
    non-empty one) and its new path is returned for the caller to remove, or comes back if the rename
    fails."""
    retired = folder.with_name(f".old-{folder.name}-{uuid.uuid4().hex}") if folder.exists() else None
    if retired is not None:
        folder.rename(retired)
    try:
        staging.rename(folder)
    except BaseException:
        if retired is not None:
            retired.rename(folder)
        raise
    return retired
