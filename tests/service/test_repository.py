"""Loading a repository: every version served, the highest by default, a pinned one exactly."""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from seqserve.contract import METADATA_FILE, ContractError
from seqserve.service.config import ServerConfig
from seqserve.service.engine.errors import ModelNotFound
from seqserve.service.engine.metrics import ServiceMetrics
from seqserve.service.engine.repository import ModelRepository
from seqserve.service.kinds import kind_for


def _add_version(repository: Path, name: str, version: int) -> None:
    target = shutil.copytree(repository / name / "1", repository / name / str(version))
    info = json.loads((target / METADATA_FILE).read_text())
    (target / METADATA_FILE).write_text(json.dumps({**info, "version": version}))


def _load(repository: Path) -> ModelRepository:
    with ThreadPoolExecutor(1) as executor:
        return ModelRepository.load(ServerConfig(repository=repository), ServiceMetrics(), executor, kind_for)


def test_highest_version_by_default_and_a_pinned_one_exactly(writable_repository: Path) -> None:
    _add_version(writable_repository, "jv-gru", 3)
    repository = _load(writable_repository)
    assert repository.resolve("jv-gru").runtime.info.version == 3
    assert repository.resolve("jv-gru", 1).runtime.info.version == 1
    assert [m.default for m in repository.all() if m.runtime.info.name == "jv-gru"] == [False, True]
    with pytest.raises(ModelNotFound, match="model 'jv-gru' has no version 2; served versions: 1, 3"):
        repository.resolve("jv-gru", 2)
    with pytest.raises(ModelNotFound, match="model 'jv' is not served; served models: bms-gru, jv-bigru"):
        repository.resolve("jv")


def test_model_json_that_disagrees_with_its_folder_is_refused(writable_repository: Path) -> None:
    path = writable_repository / "jv-lstm" / "1" / METADATA_FILE
    path.write_text(json.dumps({**json.loads(path.read_text()), "version": 4}))
    with pytest.raises(ContractError, match="model.json says jv-lstm:4, its folder jv-lstm:1"):
        _load(writable_repository)


def test_an_empty_repository_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ContractError, match="no models found"):
        _load(tmp_path)
