"""Find and load the models of a repository (Triton's layout, `seqserve.contract` helpers), at start and,
with `--poll-repository-s`, again while serving.

Every version of every model is loaded, each with its own onnxruntime session, batcher and metrics; a
request with version 0 gets the highest version, a pinned one gets exactly that version or NOT_FOUND.

Live changes (`rescan`): a new version is loaded off the event loop and put in place only once its
session is ready, so no request ever sees it half-loaded; from then on it is the default for new streams
if it is the highest. Streams keep the `ServedModel` they opened on. A version gone from disk is retired:
no new stream or call resolves to it, and it is unloaded (metrics dropped, session freed with the last
reference) at the first rescan that finds no stream on it. A version whose files fail the contract is
refused with one log line and `seqserve_repository_events_total{event="refused"}`, and tried again only
when its files change; everything else keeps serving. Versions are immutable once in place (the exporter
renames a finished folder into place): a changed version is not reloaded, remove it and add a new number.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path

from seqserve import contract
from seqserve import declaration as declarations
from seqserve.contract import (
    METADATA_FILE,
    MODEL_FILE,
    ContractError,
    list_models,
    list_versions,
    read_model_info,
    version_dir,
)
from seqserve.declaration import DeclarationError
from seqserve.service.config import ServerConfig
from seqserve.service.engine.batcher import Batcher
from seqserve.service.engine.errors import ModelNotFound
from seqserve.service.engine.kind import KindFor, ModelKind
from seqserve.service.engine.metrics import ModelMetrics, ServiceMetrics
from seqserve.service.engine.runtime import ModelRuntime

log = logging.getLogger(__name__)


@dataclass(eq=False)
class ServedModel:
    runtime: ModelRuntime
    kind: ModelKind
    batcher: Batcher
    metrics: ModelMetrics
    default: bool
    open_streams: int = 0  # kept by the state store; a retired version unloads at 0
    open_generations: int = 0  # of those, Generate calls still stepping (service/kinds/language_model.py)
    retired: bool = False
    # A model of two graphs (a seq2seq's encoder, beside its decoder step, which is `runtime` and `batcher`
    # above): the encoder's own runtime and batcher, so its rows batch across requests too.
    encoder: ModelRuntime | None = None
    encoder_batcher: Batcher | None = None

    # Cached: read per request, and the runtime's info never changes.
    @functools.cached_property
    def key(self) -> str:
        return f"{self.runtime.info.name}:{self.runtime.info.version}"

    @functools.cached_property
    def streamable(self) -> bool:
        return self.runtime.info.streamable

    @functools.cached_property
    def declared(self) -> bool:
        """A graph seqserve did not write: it takes and answers named tensors."""
        return self.runtime.info.task == contract.DECLARED

    @functools.cached_property
    def named_tensors(self) -> bool:
        """Its requests and answers are named tensors on the KServe V2 door: a declared graph, a forecaster
        (`y` in, `loc` and `scale` out)."""
        return self.runtime.info.task in (contract.DECLARED, contract.FORECAST)

    @functools.cached_property
    def output_shapes(self) -> dict[str, list[int]]:
        """Each answer output's shape less its batch axis, as the graph declares it (-1: varies)."""
        graph = {o.name: o.shape for o in self.runtime.session.get_outputs()}
        return {
            o.name: [
                d if isinstance(d, int) else -1 for a, d in enumerate(graph[o.name]) if a != o.batch_axis
            ]
            for o in self.runtime.declaration.outputs
        }

    @functools.cached_property
    def default_key(self) -> tuple:
        """The constants of a stream that chose none (Declaration.constant_key)."""
        return self.runtime.declaration.constant_key({})

    @functools.cached_property
    def contexts(self) -> tuple[tuple[int, tuple] | None, ...]:
        """Per stream input: the row axis its context is carried along and the indexer of the last
        `context` items along it, or None (layout.py's rows)."""
        return tuple(
            None if not spec.context else (
                spec.row_axis(spec.context_axis),
                (slice(None),) * spec.row_axis(spec.context_axis) + (slice(-spec.context, None),),
            )
            for spec in self.runtime.declaration.inputs
        )  # fmt: skip

    @functools.cached_property
    def frames(self) -> bool:
        """A frame model: each step of a chunk is its own call."""
        return self.runtime.declaration.frame_model


def _shown(name: str) -> str:
    """A client's model name as error messages quote it: whole when short, cut when long."""
    return repr(name) if len(name) <= 80 else f"{name[:80]!r}... ({len(name)} characters)"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _signature(path: Path) -> tuple:
    """What a refused version is remembered by: it is tried again once its files change."""
    stats = [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in sorted(path.iterdir()) if f.is_file()]
    return tuple(stats)


class ModelRepository:
    def __init__(
        self, config: ServerConfig, metrics: ServiceMetrics, executor: Executor, kind_for: KindFor
    ) -> None:
        self.root = Path(config.repository)
        self.config = config
        self.kind_for = kind_for  # the model kinds this server knows (seqserve.service.kinds.kind_for)
        self.service_metrics = metrics
        self.executor = executor
        self._models: dict[str, dict[int, ServedModel]] = {}
        self._retired: list[ServedModel] = []
        self._refused: dict[tuple[str, int], tuple] = {}
        # Called on the event loop whenever what is served, or its health, changes.
        self.listeners: list[Callable[[], None]] = []

    @classmethod
    def load(
        cls, config: ServerConfig, metrics: ServiceMetrics, executor: Executor, kind_for: KindFor
    ) -> ModelRepository:
        """Load every version on disk; at start a version that fails the contract stops the server."""
        repository = cls(config, metrics, executor, kind_for)
        on_disk = repository._on_disk()
        if not on_disk:
            raise ContractError(
                f"{repository.root}: no models found; expected <repository>/<model>/<version>/{MODEL_FILE}"
            )
        for (name, version), path in on_disk.items():
            try:
                served = repository._load_version(name, version, path)
            except DeclarationError as error:  # a user's graph that does not fit its declaration: it alone
                repository._refuse(name, version, path, error)
                continue
            repository._models.setdefault(name, {})[version] = served
        if not repository._models:
            raise ContractError(
                f"{repository.root}: no model could be loaded (see the refusals logged above)"
            )
        repository._update_defaults()
        for served in repository.all():
            repository._log_loaded(served)
        return repository

    def _on_disk(self) -> dict[tuple[str, int], Path]:
        return {
            (name, version): version_dir(self.root, name, version)
            for name in list_models(self.root)
            for version in list_versions(self.root, name)
        }

    def _load_version(self, name: str, version: int, path: Path) -> ServedModel:
        if (path / METADATA_FILE).is_file():
            info = read_model_info(path)
            if info.name != name or info.version != version:
                raise ContractError(
                    f"{path}: model.json says {info.name}:{info.version}, its folder {name}:{version}"
                )
        else:  # a graph seqserve did not write: its declaration (or the graph's names) say the rest
            info = contract.declared(name, version, _sha256(path / MODEL_FILE))
        device, threads = self.config.device, self.config.inference_threads
        encoder = None
        if info.task == contract.SEQ2SEQ:  # two graphs, each declared by the contract
            encoder = ModelRuntime(info, path / contract.ENCODER_FILE, device, threads)
            runtime = ModelRuntime(info, path / contract.DECODER_FILE, device, threads)
        else:
            runtime = ModelRuntime(info, path / MODEL_FILE, device, threads, declarations.read(path))
        if info.task == contract.DECLARED and runtime.declaration.batchable:
            runtime.probe()
        bound = self.service_metrics.for_model(
            name, version, info.cell, info.task, info.precision, runtime.provider,
            runtime.declaration.batchable,
        )  # fmt: skip
        kind = self.kind_for(runtime.declaration)
        served = ServedModel(runtime, kind, self._batcher(runtime, kind, bound), bound, default=False)
        if encoder is not None:
            served.encoder = encoder
            served.encoder_batcher = self._batcher(encoder, self.kind_for(encoder.declaration), bound)
        return served

    def _batcher(self, runtime: ModelRuntime, kind: ModelKind, metrics: ModelMetrics) -> Batcher:
        """A graph's batcher under the server's batching flags; its health is the model's."""
        config = self.config
        batcher = Batcher(
            runtime,
            kind,
            self.executor,
            metrics,
            config.max_batch,
            config.max_delay_ms / 1000.0,
            max_in_flight=config.calls_in_flight,
            inline_budget_s=config.inline_max_us / 1e6,
        )
        batcher.on_health_change = self._notify
        return batcher

    @staticmethod
    def _log_loaded(served: ServedModel) -> None:
        info = served.runtime.info
        note = served.runtime.batch_note
        log.info("loaded %s (%s, %s, %s) on %s%s%s", served.key, info.cell, info.task, info.precision,
                 served.runtime.provider, ", the default" if served.default else "",
                 f"; one row per call: {note}" if note else "")  # fmt: skip

    async def rescan(self) -> bool:
        """Bring the served versions in line with the disk; True when anything changed."""
        loop = asyncio.get_running_loop()
        on_disk = self._on_disk()
        loaded = {(name, version) for name, versions in self._models.items() for version in versions}
        changed = False
        added = []
        for name, version in sorted(on_disk.keys() - loaded):
            path = on_disk[name, version]
            signature = _signature(path)
            if self._refused.get((name, version)) == signature:
                continue
            try:
                served = await loop.run_in_executor(self.executor, self._load_version, name, version, path)
            except Exception as error:  # whatever the files do wrong, the rest keeps serving
                self._refuse(name, version, path, error)
                continue
            self._refused.pop((name, version), None)
            self._models.setdefault(name, {})[version] = served
            self.service_metrics.repository_event("loaded")
            added.append(served)
            changed = True
        for name, version in sorted(loaded - on_disk.keys()):
            self._retire(name, version)
            changed = True
        self._unload_idle()
        if changed:
            self._update_defaults()
            for served in added:
                self._log_loaded(served)
            self._notify()
        return changed

    def _refuse(self, name: str, version: int, path: Path, error: Exception) -> None:
        self._refused[name, version] = _signature(path)
        self.service_metrics.repository_event("refused")
        log.warning("refused %s:%d from %s: %s", name, version, path, error)

    def _retire(self, name: str, version: int) -> None:
        served = self._models[name].pop(version)
        if not self._models[name]:
            del self._models[name]
        served.retired = True
        self._retired.append(served)
        self.service_metrics.repository_event("retired")
        log.info("retired %s (gone from disk): no new streams; %d open", served.key, served.open_streams)

    def _unload_idle(self) -> None:
        for served in [s for s in self._retired if s.open_streams == 0]:
            self._retired.remove(served)
            info = served.runtime.info
            if info.version not in self._models.get(info.name, {}):  # not put back meanwhile
                self.service_metrics.forget_model(info.name, info.version)
            self.service_metrics.repository_event("unloaded")
            log.info("unloaded %s", served.key)

    def _update_defaults(self) -> None:
        for versions in self._models.values():
            highest = max(versions)
            for version, served in versions.items():
                served.default = version == highest

    def _notify(self) -> None:
        for listener in self.listeners:
            listener()

    def resolve(self, name: str, version: int = 0) -> ServedModel:
        versions = self._models.get(name)
        if not versions:
            served = ", ".join(sorted(self._models)) or "none"
            raise ModelNotFound(f"model {_shown(name)} is not served; served models: {served}")
        if version == 0:
            return versions[max(versions)]
        if version not in versions:
            served = ", ".join(map(str, sorted(versions)))
            raise ModelNotFound(f"model {_shown(name)} has no version {version}; served versions: {served}")
        return versions[version]

    def names(self) -> list[str]:
        return sorted(self._models)

    def all(self) -> list[ServedModel]:
        """The versions that take new streams (retired ones still finishing theirs are left out)."""
        return [self._models[name][v] for name in sorted(self._models) for v in sorted(self._models[name])]

    def retired(self) -> list[ServedModel]:
        return list(self._retired)

    def serving(self) -> dict[str, bool]:
        """Per model: whether its default version is healthy (fewer failed calls in a row than the
        batcher's threshold, on each of its graphs)."""
        return {name: _healthy(self.resolve(name)) for name in self._models}


def _healthy(served: ServedModel) -> bool:
    return served.batcher.healthy and (served.encoder_batcher is None or served.encoder_batcher.healthy)
