"""Atomic version writes, version numbering and refusals."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from seqserve import contract
from seqserve.declaration import DECLARATION_FILE
from seqserve.export import repository
from seqserve.export.errors import ExportInputError
from seqserve.export.graph import build_model
from seqserve.export.repository import VersionFiles, check_version_free, next_version, write_versions

from .tiny_models import make_model


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def version_files(version: int, precision: str = "fp32") -> VersionFiles:
    model, info = make_model("gru", 1, "many_to_one")
    info.version, info.precision = version, precision
    return VersionFiles(build_model(model, info), info)


def test_write_puts_model_and_json_in_place_with_sha(tmp_path: Path) -> None:
    [(path, info)] = write_versions(tmp_path, [version_files(1)])
    assert path == tmp_path / "t-gru" / "1"
    files = [DECLARATION_FILE, contract.METADATA_FILE, contract.MODEL_FILE]
    assert sorted(p.name for p in path.iterdir()) == files
    assert json.loads((path / DECLARATION_FILE).read_text()) == contract.declaration_for(info)
    data = (path / contract.MODEL_FILE).read_bytes()
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    assert json.loads((path / contract.METADATA_FILE).read_text())["sha256"] == info.sha256
    assert contract.read_model_info(path) == info
    assert [p.name for p in (tmp_path / "t-gru").iterdir()] == ["1"]  # no temp folder left


def test_next_version_is_one_above_the_highest_folder(tmp_path: Path) -> None:
    assert next_version(tmp_path, "m") == 1
    for name in ("1", "3", ".tmp-9-abc", "notes"):
        (tmp_path / "m" / name).mkdir(parents=True)
    # "3" has no model file, yet is counted so a half-written folder is never reused.
    assert next_version(tmp_path, "m") == 4


def test_existing_version_is_refused_unless_forced(tmp_path: Path) -> None:
    write_versions(tmp_path, [version_files(1)])
    with pytest.raises(ExportInputError, match=r"version 1 of model t-gru already exists .*--force"):
        check_version_free(tmp_path, "t-gru", 1, force=False)
    check_version_free(tmp_path, "t-gru", 1, force=True)
    with pytest.raises(ExportInputError, match="--force"):
        write_versions(tmp_path, [version_files(1)])


def test_force_replaces_a_version(tmp_path: Path) -> None:
    write_versions(tmp_path, [version_files(1)])
    replacement = version_files(1)
    replacement.info.labels = ["x", "y", "z"]
    write_versions(tmp_path, [replacement], force=True)
    assert contract.read_model_info(tmp_path / "t-gru" / "1").labels == ["x", "y", "z"]
    assert [p.name for p in (tmp_path / "t-gru").iterdir()] == ["1"]


def test_a_failed_write_leaves_the_repository_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_versions(tmp_path, [version_files(1)])
    before = tree(tmp_path)
    calls = []

    def fail_on_third_file(path: Path, data: bytes) -> None:
        calls.append(path)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        path.write_bytes(data)

    monkeypatch.setattr(repository, "write_synced", fail_on_third_file)
    with pytest.raises(OSError, match="No space"):
        write_versions(tmp_path, [version_files(2), version_files(3, "int8")])
    assert tree(tmp_path) == before
    assert sorted(p.name for p in (tmp_path / "t-gru").iterdir()) == ["1"]


def test_a_failed_forced_write_restores_the_old_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_versions(tmp_path, [version_files(1), version_files(2)])
    before = tree(tmp_path)
    moves = []
    real_move = repository._move_into_place

    def fail_on_second_move(staging: Path, target: Path, force: bool) -> Path | None:
        moves.append(target)
        if len(moves) == 2:
            raise OSError("rename failed")
        return real_move(staging, target, force)

    monkeypatch.setattr(repository, "_move_into_place", fail_on_second_move)
    with pytest.raises(OSError, match="rename failed"):
        write_versions(tmp_path, [version_files(1), version_files(2)], force=True)
    assert tree(tmp_path) == before


def test_a_failed_first_write_leaves_no_model_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_space(path: Path, data: bytes) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(repository, "write_synced", no_space)
    with pytest.raises(OSError):
        write_versions(tmp_path, [version_files(1)])
    assert list(tmp_path.iterdir()) == []


def test_a_repository_that_is_a_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "repo"
    path.write_text("not a folder")
    with pytest.raises(ExportInputError, match=f"repository {path} is a file"):
        write_versions(path, [version_files(1)])
    assert path.read_text() == "not a folder"
