"""Writing model versions into a Triton-layout repository, atomically: a version is whole or absent.

Each version is written into a hidden temp folder inside the model's folder (same file system, so the
rename is atomic), its files fsynced, then renamed to `<repo>/<model>/<version>`. Readers
(`contract.list_versions`) skip anything that is not a numeric folder holding a model file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path

import onnx

from seqserve import contract
from seqserve import declaration as declarations
from seqserve.contract import ModelInfo
from seqserve.export.declared_version import move_into_place, sync_folder, write_synced
from seqserve.export.errors import ExportInputError

log = logging.getLogger(__name__)


@dataclass
class VersionFiles:
    """One version to write: the serialized graph and its model.json record (sha256 is filled in here).
    A model of several graphs (a seq2seq's encoder and decoder step) gives `graphs`, file name -> graph,
    in place of `model`: they are written in that order, sha256 is of their bytes in that order, and no
    declaration.json is written (a declaration describes one graph)."""

    model: onnx.ModelProto | None
    info: ModelInfo
    graphs: dict[str, onnx.ModelProto] = field(default_factory=dict)


def check_repository(repository: Path) -> Path:
    repository = Path(repository)
    if repository.exists() and not repository.is_dir():
        raise ExportInputError(f"repository {repository} is a file, expected a folder (or a path to create)")
    return repository


def next_version(repository: Path, name: str) -> int:
    """One above the highest numeric folder, counting folders without a model file so none is reused."""
    model_dir = Path(repository) / contract.check_model_name(name)
    taken = (
        [int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()]
        if model_dir.is_dir()
        else []
    )
    return max(taken, default=0) + 1


def check_version_free(repository: Path, name: str, version: int, force: bool) -> None:
    target = contract.version_dir(repository, name, version)
    if target.exists() and not force:
        raise ExportInputError(
            f"version {version} of model {name} already exists at {target}; pass --force to replace"
        )


def _stage(staging: Path, files: VersionFiles) -> ModelInfo:
    """Write one version into the empty folder `staging`; returns the info with its sha256 filled in."""
    graphs = files.graphs or {contract.MODEL_FILE: files.model}
    digest = hashlib.sha256()
    for file_name, graph in graphs.items():
        if graph is None:
            raise ValueError(f"{files.info.name} v{files.info.version}: no graph given for {file_name}")
        data = graph.SerializeToString()
        digest.update(data)
        write_synced(staging / file_name, data)
    info = replace(files.info, sha256=digest.hexdigest())
    write_synced(staging / contract.METADATA_FILE, (info.to_json() + "\n").encode())
    if not files.graphs:
        # What the server reads to know the graph's states and inputs: the same map for every graph it serves.
        declaration = json.dumps(contract.declaration_for(info), indent=2) + "\n"
        write_synced(staging / declarations.DECLARATION_FILE, declaration.encode())
    sync_folder(staging)
    return info


def _move_into_place(staging: Path, target: Path, force: bool) -> Path | None:
    """Rename `staging` to `target`; an existing target (force) steps aside and its new path is returned."""
    if target.exists() and not force:
        raise ExportInputError(f"{target} appeared while exporting; pass --force to replace it")
    return move_into_place(staging, target)


def write_versions(
    repository: Path, versions: list[VersionFiles], force: bool = False
) -> list[tuple[Path, ModelInfo]]:
    """Write versions of one or more models (an fp32 model and its `-int8` twin): all staged, then renamed;
    on failure the repository is as before."""
    repository = check_repository(repository)
    model_dirs = [repository / contract.check_model_name(files.info.name) for files in versions]
    created = [d for d in dict.fromkeys(model_dirs) if not d.exists()]
    stagings: list[Path] = []
    staged: list[tuple[Path, ModelInfo]] = []
    written: list[tuple[Path, Path | None]] = []
    try:
        for model_dir, files in zip(model_dirs, versions, strict=True):
            model_dir.mkdir(parents=True, exist_ok=True)
            stagings.append(model_dir / f".tmp-{files.info.version}-{uuid.uuid4().hex}")
            stagings[-1].mkdir()
            staged.append((stagings[-1], _stage(stagings[-1], files)))
        for model_dir, (staging, info) in zip(model_dirs, staged, strict=True):
            target = model_dir / str(info.version)
            written.append((target, _move_into_place(staging, target, force)))
        for model_dir in dict.fromkeys(model_dirs):
            sync_folder(model_dir)
    except BaseException:
        for target, retired in reversed(written):
            shutil.rmtree(target, ignore_errors=True)
            if retired is not None:
                retired.rename(target)
        for staging in stagings:
            shutil.rmtree(staging, ignore_errors=True)
        for model_dir in created:
            shutil.rmtree(model_dir, ignore_errors=True)
        raise
    for (target, retired), (_, info) in zip(written, staged, strict=True):
        if retired is not None:
            shutil.rmtree(retired)
        log.info("wrote %s (%s, sha256 %s)", target, info.precision, info.sha256[:12])
    return [(target, info) for (target, _), (_, info) in zip(written, staged, strict=True)]
