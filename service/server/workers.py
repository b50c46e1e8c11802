"""`seqserve serve --workers N`: N server processes on one port, one /metrics, one drain.

Each worker is a whole server (its own event loop, batcher and onnxruntime session per model version) bound
with SO_REUSEPORT to the port this supervisor reserved, the way grpc's multiprocessing example does it: the
kernel spreads connections across the workers, and a stream stays in the process that accepted its
connection. The supervisor loads no model and serves no RPC; it:
- splits `--max-streams` across the workers (each refuses beyond its share),
- serves one /metrics for all of them (prometheus-client's multiprocess mode: every worker writes its
  values to files in a private folder, the supervisor sums them at scrape time),
- prints the listening line once every worker serves, so health is SERVING on every worker from then on,
- forwards SIGTERM / SIGINT to every worker, each drains as a lone server does, and exits 0 when all did;
- if a worker dies, stops the others and exits 1: a half-served port would answer health on some
  connections and not on others, so the whole server goes and its supervisor (Kubernetes) restarts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import replace
from multiprocessing.connection import Connection, wait

from seqserve.service.config import ServerConfig
from seqserve.service.engine.metrics import MULTIPROC_ENV

log = logging.getLogger(__name__)

# A worker still alive this long after its drain should have ended is killed (the exit code says so).
_EXIT_MARGIN_S = 10.0
_START_TIMEOUT_S = 120.0


def stream_share(max_streams: int, workers: int, index: int) -> int:
    """Worker `index`'s share of the open-stream limit; the shares add up to `max_streams`."""
    base, extra = divmod(max_streams, workers)
    return base + (index < extra)


def worker_config(config: ServerConfig, index: int, port: int) -> ServerConfig:
    return replace(
        config,
        port=port,
        metrics_port=-1,  # the supervisor serves /metrics for all
        workers=1,
        reuse_port=True,
        max_streams=stream_share(config.max_streams, config.workers, index),
        stream_id_prefix=f"w{index}-",
    )


@contextlib.contextmanager
def reserved_port(host: str, port: int) -> Iterator[int]:
    """Bind (not listen) with SO_REUSEPORT for the supervisor's lifetime: port 0 becomes one fixed port that
    no other program takes, and only the workers' listening sockets get connections."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise OSError(f"cannot reserve port {port} on {host} for the workers: {exc}") from exc
        yield sock.getsockname()[1]


def _worker_main(config: ServerConfig, conn: Connection) -> None:
    """A worker process: one lone server; tells the supervisor its address once it serves."""
    from seqserve.service.server.grpc_server import serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(serve(config, lambda running: conn.send(("serving", running.grpc_address))))
    except Exception as exc:  # the supervisor reports it and stops the others
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))
        raise


def _metrics_http(config: ServerConfig, folder: str):  # noqa: ANN202 - a WSGIServer
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=folder)
    try:
        server, _ = start_http_server(config.metrics_port, addr=config.metrics_host, registry=registry)
    except OSError as exc:
        raise OSError(f"cannot serve metrics on {config.metrics_host}:{config.metrics_port}: {exc}") from exc
    return server


class _Workers:
    def __init__(self, config: ServerConfig, port: int) -> None:
        context = multiprocessing.get_context("spawn")  # grpc does not survive fork
        self.processes: list[multiprocessing.Process] = []
        self.conns: list[Connection] = []
        for index in range(config.workers):
            parent, child = context.Pipe()
            process = context.Process(
                target=_worker_main,
                args=(worker_config(config, index, port), child),
                name=f"seqserve-worker-{index}",
            )
            process.start()
            child.close()
            self.processes.append(process)
            self.conns.append(parent)

    def wait_serving(self) -> None:
        """Every worker's 'serving'; any failure or silence raises (the caller stops the rest)."""
        for index, conn in enumerate(self.conns):
            if not conn.poll(_START_TIMEOUT_S):
                raise RuntimeError(f"worker {index} did not start within {_START_TIMEOUT_S:.0f} s")
            try:
                kind, detail = conn.recv()
            except EOFError:
                kind, detail = "failed", f"exited with code {self.processes[index].exitcode}"
            if kind != "serving":
                raise RuntimeError(f"worker {index} failed to start: {detail}")

    def signal_all(self, sig: int) -> None:
        for process in self.processes:
            if process.is_alive():
                os.kill(process.pid, sig)

    def stop(self, timeout_s: float) -> bool:
        """SIGTERM every worker, wait for its drain; True when each exited 0."""
        from prometheus_client import multiprocess

        self.signal_all(signal.SIGTERM)
        clean = True
        for process in self.processes:
            process.join(timeout_s)
            if process.is_alive():
                log.error("worker pid %d alive %.0f s after SIGTERM: killing it", process.pid, timeout_s)
                process.kill()
                process.join()
            if process.exitcode != 0:
                log.error("worker pid %d exited with code %s", process.pid, process.exitcode)
            clean = clean and process.exitcode == 0
            multiprocess.mark_process_dead(process.pid)
        return clean


def serve_workers(config: ServerConfig, announce: Callable[[str, str | None], None]) -> int:
    """Run `config.workers` workers until SIGTERM / SIGINT or a worker's death; returns the exit code.
    `announce(grpc_address, metrics_address)` is called once every worker serves."""
    from seqserve.service.server.grpc_server import host_port

    folder = tempfile.mkdtemp(prefix="seqserve-metrics-")
    before = os.environ.get(MULTIPROC_ENV)
    os.environ[MULTIPROC_ENV] = folder  # the workers inherit it and import prometheus_client with it
    stop_requested = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stop_requested
        stop_requested = True

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    metrics_http = None
    try:
        with reserved_port(config.host, config.port) as port:
            workers = _Workers(config, port)
            try:
                workers.wait_serving()
                metrics_address = None
                if config.metrics_port >= 0:
                    metrics_http = _metrics_http(config, folder)
                    metrics_address = host_port(config.metrics_host, metrics_http.server_port)
                announce(host_port(config.host, port), metrics_address)
                sentinels = [process.sentinel for process in workers.processes]
                while not stop_requested and not wait(sentinels, timeout=0.2):
                    pass
                died = [p for p in workers.processes if not p.is_alive()] if not stop_requested else []
            except BaseException:
                workers.stop(config.grace_s + _EXIT_MARGIN_S)
                raise
            for process in died:
                log.error("worker pid %d exited (code %s): stopping the rest", process.pid, process.exitcode)
            clean = workers.stop(config.grace_s + _EXIT_MARGIN_S)
            return 0 if clean and not died else 1
    finally:
        if metrics_http is not None:
            metrics_http.shutdown()
            metrics_http.server_close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        shutil.rmtree(folder, ignore_errors=True)
        if before is None:
            os.environ.pop(MULTIPROC_ENV, None)
        else:
            os.environ[MULTIPROC_ENV] = before
