"""Find and load the models of a repository (Triton's layout, `seqserve.contract` helpers).

Every version of every model is loaded, each with its own onnxruntime session, batcher and metrics; a
request with version 0 gets the highest version, a pinned one gets exactly that version or NOT_FOUND.
"""

from __future__ import annotations

import logging
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path

from seqserve.contract import (
    MODEL_FILE,
    ContractError,
    list_models,
    list_versions,
    read_model_info,
    version_dir,
)
from seqserve.service.batcher import Batcher
from seqserve.service.config import ServerConfig
from seqserve.service.errors import ModelNotFound
from seqserve.service.metrics import ModelMetrics, ServiceMetrics
from seqserve.service.runtime import ModelRuntime

log = logging.getLogger(__name__)


@dataclass(eq=False)
class ServedModel:
    runtime: ModelRuntime
    batcher: Batcher
    metrics: ModelMetrics
    default: bool

    @property
    def key(self) -> str:
        return f"{self.runtime.info.name}:{self.runtime.info.version}"

    @property
    def streamable(self) -> bool:
        return self.runtime.info.streamable


class ModelRepository:
    def __init__(self, models: dict[str, dict[int, ServedModel]]) -> None:
        self._models = models

    @classmethod
    def load(cls, config: ServerConfig, metrics: ServiceMetrics, executor: Executor) -> ModelRepository:
        root = Path(config.repository)
        names = list_models(root)
        if not names:
            raise ContractError(
                f"{root}: no models found; expected <repository>/<model>/<version>/{MODEL_FILE}"
            )
        models: dict[str, dict[int, ServedModel]] = {}
        for name in names:
            versions = list_versions(root, name)
            models[name] = {}
            for version in versions:
                path = version_dir(root, name, version)
                info = read_model_info(path)
                if info.name != name or info.version != version:
                    raise ContractError(
                        f"{path}: model.json says {info.name}:{info.version}, its folder {name}:{version}"
                    )
                runtime = ModelRuntime(info, path / MODEL_FILE, config.device, config.inference_threads)
                bound = metrics.for_model(
                    name, version, info.cell, info.task, info.precision, runtime.provider
                )
                batcher = Batcher(
                    runtime,
                    executor,
                    bound,
                    config.max_batch,
                    config.max_delay_ms / 1000.0,
                    max_in_flight=config.calls_in_flight,
                    inline_budget_s=config.inline_max_us / 1e6,
                )
                models[name][version] = ServedModel(runtime, batcher, bound, default=version == versions[-1])
                log.info("loaded %s (%s, %s, %s) on %s%s", models[name][version].key, info.cell, info.task,
                         info.precision, runtime.provider,
                         ", the default" if version == versions[-1] else "")  # fmt: skip
        return cls(models)

    def resolve(self, name: str, version: int = 0) -> ServedModel:
        versions = self._models.get(name)
        if not versions:
            served = ", ".join(sorted(self._models)) or "none"
            raise ModelNotFound(f"model {name!r} is not served; served models: {served}")
        if version == 0:
            return versions[max(versions)]
        if version not in versions:
            served = ", ".join(map(str, sorted(versions)))
            raise ModelNotFound(f"model {name!r} has no version {version}; served versions: {served}")
        return versions[version]

    def names(self) -> list[str]:
        return sorted(self._models)

    def all(self) -> list[ServedModel]:
        return [self._models[name][v] for name in sorted(self._models) for v in sorted(self._models[name])]
