"""Wiring: the grpc.aio server with the inference servicer, health (overall and per model), reflection,
the /metrics HTTP server, and the drain that SIGTERM starts.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

import grpc
from grpc_health.v1 import health, health_pb2
from grpc_reflection.v1alpha import reflection, reflection_pb2
from prometheus_client import start_http_server

from seqserve.service.config import ServerConfig
from seqserve.service.engine.checkpoints import StateKeys
from seqserve.service.engine.inference import InferenceEngine
from seqserve.service.engine.metrics import ServiceMetrics
from seqserve.service.engine.repository import ModelRepository
from seqserve.service.engine.state import SHUTDOWN, StateStore
from seqserve.service.frontends import kserve_v2
from seqserve.service.frontends.recording import RecordingInterceptor
from seqserve.service.frontends.registration import add_service, receive_ceiling
from seqserve.service.frontends.seqserve_v1 import InferenceServicer
from seqserve.service.kinds import kind_for
from seqserve.service.server.accept_delay import AcceptDelay
from seqserve.service.server.auth import TOKENS_ENV, BearerTokenInterceptor, ReloadingTokens, TokenError
from seqserve.service.server.tls import CertificateFiles, ReloadingCertificates
from seqserve.v1 import seqserve_pb2

log = logging.getLogger(__name__)

SERVICE = seqserve_pb2.DESCRIPTOR.services_by_name["InferenceService"]
SERVICE_NAME = SERVICE.full_name
HEALTH = health_pb2.DESCRIPTOR.services_by_name["Health"]
REFLECTION = reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"]
# Streams the drain ends after the grace period finish within their current chunk; this bounds the wait.
_INTERRUPT_WAIT_S = 5.0
SERVING = health_pb2.HealthCheckResponse.SERVING
# grpc core's own hard limit on calls waiting to be accepted (grpc.server.max_pending_requests_hard_limit).
_GRPC_PENDING_HARD_LIMIT = 3000
# How long a call may wait in that queue (grpc's default: 30 s, then CANCELLED, counted nowhere). On a
# saturated loop the aio server accepts a few dozen calls a second, so a burst of opens can wait longer;
# a client bounds its own wait with a deadline (DEADLINE_EXCEEDED, which it understands); this bound only
# frees the calls of clients that set none.
ACCEPT_WAIT_S = 300


class ModelHealth:
    """Per-model health from the repository: SERVING while a model's default version is healthy, NOT_SERVING
    after its batcher's run of failed calls or once all its versions are gone from the repository."""

    def __init__(self, servicer: health.aio.HealthServicer, repository: ModelRepository) -> None:
        self.servicer = servicer
        self.repository = repository
        self._known: set[str] = set()
        self._lock = asyncio.Lock()  # publishes in order, each from the state current when it runs
        self._tasks: set[asyncio.Task] = set()
        repository.listeners.append(self.changed)

    async def publish(self) -> None:
        async with self._lock:
            serving = self.repository.serving()
            self._known |= serving.keys()
            for name in sorted(self._known):
                up = serving.get(name, False)
                await self.servicer.set(name, SERVING if up else health_pb2.HealthCheckResponse.NOT_SERVING)

    def changed(self) -> None:
        task = asyncio.get_running_loop().create_task(self.publish())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


async def poll_repository(repository: ModelRepository, every_s: float) -> None:
    """`--poll-repository-s`: rescan forever; a failed scan is logged and the next one tries again."""
    while True:
        await asyncio.sleep(every_s)
        try:
            await repository.rescan()
        except Exception:
            log.exception("rescanning %s failed; serving what is loaded", repository.root)


def listening_line(grpc_address: str, metrics_address: str | None) -> str:
    """The one line `seqserve serve` prints once serving; tests and benchmarks parse it."""
    return f"seqserve listening grpc={grpc_address} metrics={metrics_address or 'off'}"


def host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(eq=False)
class RunningServer:
    config: ServerConfig
    server: grpc.aio.Server
    grpc_address: str
    metrics_address: str | None
    engine: InferenceEngine
    metrics: ServiceMetrics
    health: health.aio.HealthServicer
    executor: ThreadPoolExecutor
    metrics_http: WSGIServer | None
    poller: asyncio.Task | None = None
    accept_delay: asyncio.Task | None = None  # keeps store.accept_delay_s current (--max-accept-delay-ms)
    certificates: ReloadingCertificates | None = None  # with TLS: the files it serves, reloaded on change

    @property
    def store(self) -> StateStore:
        return self.engine.store

    def listening_line(self) -> str:
        return listening_line(self.grpc_address, self.metrics_address)

    def stopped_line(self) -> str:
        """The line `seqserve serve` prints after its drain: streams still open (0 unless the drain
        failed) and how many the drain ended with a checkpoint to resume from."""
        return (
            f"seqserve stopped open_streams={self.store.open_count} "
            f"checkpointed_at_shutdown={self.engine.final_checkpoints[SHUTDOWN]}"
        )

    async def drain(self) -> None:
        """Health NOT_SERVING, no new streams, open ones get the grace period, the rest end with SHUTDOWN."""
        log.info("draining: %d open streams get %.1f s to finish", self.store.open_count, self.config.grace_s)
        for task in (self.poller, self.accept_delay):
            if task is not None:
                task.cancel()
        await self.health.enter_graceful_shutdown()
        self.store.begin_drain()
        if not await self.store.wait_empty(self.config.grace_s):
            log.warning("%d streams still open after the grace period: ending them", self.store.open_count)
            self.store.interrupt_all(SHUTDOWN)
            await self.store.wait_empty(_INTERRUPT_WAIT_S)
        await self.server.stop(grace=1.0)
        self.executor.shutdown(wait=True)
        if self.metrics_http is not None:
            self.metrics_http.shutdown()
            self.metrics_http.server_close()
        log.info("stopped")


def _start_metrics_http(
    config: ServerConfig, metrics: ServiceMetrics
) -> tuple[WSGIServer | None, str | None]:
    if config.metrics_port < 0:
        return None, None
    try:
        metrics_http, _ = start_http_server(
            config.metrics_port, addr=config.metrics_host, registry=metrics.registry
        )
    except OSError as exc:
        raise OSError(
            f"cannot serve metrics on {host_port(config.metrics_host, config.metrics_port)}: {exc}"
        ) from exc
    return metrics_http, host_port(config.metrics_host, metrics_http.server_port)


def _interceptors(config: ServerConfig) -> list[grpc.aio.ServerInterceptor]:
    """The bearer-token check when the server has tokens (file or SEQSERVE_AUTH_TOKENS), else none."""
    if config.auth_tokens_file is None and TOKENS_ENV not in os.environ:
        if config.max_streams_per_token:
            raise TokenError(
                f"max_streams_per_token {config.max_streams_per_token} needs bearer tokens: give "
                f"--auth-tokens-file or {TOKENS_ENV}"
            )
        return []
    tokens = ReloadingTokens(config.auth_tokens_file, os.environ.get(TOKENS_ENV))
    if config.tls_cert is None:
        log.warning("bearer tokens over plaintext gRPC cross the network readable: serve TLS (--tls-cert)")
    log.info("bearer tokens required on every inference RPC: %d tokens", len(tokens.table))
    return [BearerTokenInterceptor(tokens)]


def pending_call_limit(max_streams: int) -> int:
    """How many calls grpc core may hold that this process has not accepted yet.

    The aio server accepts one call per turn of the event loop, so a burst of stream opens on a busy loop
    waits in core's pending queue. By default core sheds that queue at random from 1,000 waiting calls
    (all of them from 3,000): the shed calls end CANCELLED (or INTERNAL, when the client's first write
    races the reset, grpc/grpc#36066) before any handler sees them, so no metric counts them. Refusing
    streams is `max_streams`'s job (RESOURCE_EXHAUSTED, counted): core sheds only beyond it, never at
    random (soft and hard limit equal), and never below its own default hard limit.
    """
    return max(max_streams, _GRPC_PENDING_HARD_LIMIT)


def _certificates(config: ServerConfig) -> ReloadingCertificates | None:
    if config.tls_cert is None:
        return None
    return ReloadingCertificates(CertificateFiles(config.tls_cert, config.tls_key, config.tls_client_ca))


def _listen(server: grpc.aio.Server, config: ServerConfig, certificates: ReloadingCertificates | None) -> int:
    address = host_port(config.host, config.port)
    try:
        if certificates is None:
            return server.add_insecure_port(address)
        return server.add_secure_port(address, certificates.credentials)
    except RuntimeError as exc:  # grpc's way of saying the address is taken or invalid
        raise OSError(f"cannot listen for gRPC on {address}: {exc}") from exc


async def start_server(config: ServerConfig) -> RunningServer:
    metrics = ServiceMetrics()
    # Tokens and certificates first: a bad file fails the start before any model loads.
    interceptors = _interceptors(config)
    certificates = _certificates(config)
    # Threads are made on demand; each model version has at most `calls_in_flight` calls running.
    executor = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="seqserve-ort")
    repository = ModelRepository.load(config, metrics, executor, kind_for)
    store = StateStore(
        config.max_streams,
        config.stream_id_prefix,
        config.max_streams_per_token,
        metrics.token_streams_active,
        config.max_accept_delay_ms / 1000,
    )
    keys = StateKeys.load(config.state_key_file)
    engine = InferenceEngine(repository, store, config, keys, metrics)
    limit = config.max_message_bytes
    server = grpc.aio.server(
        # Recording outermost, so every outcome is counted, whatever interceptor or handler decided it; the
        # token check's refusals too.
        interceptors=[RecordingInterceptor(metrics), *interceptors],
        options=[
            ("grpc.max_receive_message_length", receive_ceiling(limit)),
            ("grpc.so_reuseport", int(config.reuse_port)),
            ("grpc.server.max_pending_requests", pending_call_limit(config.max_streams)),
            ("grpc.server.max_pending_requests_hard_limit", pending_call_limit(config.max_streams)),
            ("grpc.server_max_unrequested_time_in_server", ACCEPT_WAIT_S),
        ],
    )
    add_service(server, InferenceServicer(engine), SERVICE, limit)
    # The KServe V2 / Triton protocol on the same port, over the same engine.
    add_service(server, kserve_v2.KServeV2Servicer(engine, metrics), kserve_v2.SERVICE, limit)
    health_servicer = health.aio.HealthServicer()
    add_service(server, health_servicer, HEALTH, limit)
    for name in ("", SERVICE_NAME, kserve_v2.SERVICE.full_name):
        await health_servicer.set(name, SERVING)
    await ModelHealth(health_servicer, repository).publish()
    services = (SERVICE_NAME, kserve_v2.SERVICE.full_name, HEALTH.full_name, reflection.SERVICE_NAME)
    add_service(server, reflection.aio.ReflectionServicer(services), REFLECTION, limit)
    port = _listen(server, config, certificates)
    metrics_http, metrics_address = _start_metrics_http(config, metrics)
    await server.start()
    grpc_address = host_port(config.host, port)
    running = RunningServer(
        config,
        server,
        grpc_address,
        metrics_address,
        engine,
        metrics,
        health_servicer,
        executor,
        metrics_http,
        certificates=certificates,
    )
    if config.max_accept_delay_ms > 0:
        probe = AcceptDelay(store, metrics.accept_delay)
        running.accept_delay = asyncio.get_running_loop().create_task(probe.run())
    if config.poll_repository_s > 0:
        running.poller = asyncio.get_running_loop().create_task(
            poll_repository(repository, config.poll_repository_s)
        )
    served, metrics_text = len(repository.all()), metrics_address or "off"
    transport = "plaintext" if certificates is None else "mTLS" if config.tls_client_ca else "TLS"
    checkpointing = "on" if keys else "off: no state key"
    log.info(
        "serving %d model versions on %s (%s, metrics %s, checkpoints %s)", served, grpc_address, transport,
        metrics_text, checkpointing,
    )  # fmt: skip
    return running


async def serve(config: ServerConfig, announce: Callable[[RunningServer], None]) -> RunningServer:
    """Run until SIGTERM or SIGINT, then drain; `announce` is called once the server is serving."""
    running = await start_server(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    announce(running)
    await stop.wait()
    await running.drain()
    return running
