"""Prometheus families of the service, on their own registry so several servers share a process.

Labels are bounded: `model` and `version` come from the repository, `token` from the operator's tokens
file (a name, never the token), none from a request, and no family has a per-stream label. Children are
bound once per served version (`ModelMetrics`) so the hot path is an attribute access and one locked add,
not a label lookup.

The per-chunk families (chunks, steps, latencies, batch size) are updated through `HotCounter` and
`HotHistogram`: the same children, minus prometheus-client's per-call checks and its Python loop over the
buckets (a lone stream's chunk made ~40 Python calls into prometheus-client, a quarter of seqserve's own
per-chunk work; see bench/README.md). tests/service/test_metrics_hot.py proves the samples equal those of
the public API, so an upgrade of prometheus-client that changes its internals fails there, not in
production.

Buckets: chunk latency, queue wait and inference span 100 µs (a chunk of 1 step on CPU) to 10 s (a long
buffered sequence on a loaded server); batch sizes are powers of two up to the largest sensible --max-batch.
"""

from __future__ import annotations

import os
from bisect import bisect_left
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.metrics import MetricWrapperBase

from seqserve.service.engine.checkpoints import REFUSAL_REASONS

LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
END_REASONS = ("completed", "cancelled", "idle_timeout", "error", "shutdown")
EVICTION_REASONS = ("idle_timeout", "shutdown")
REPOSITORY_EVENTS = ("loaded", "refused", "retired", "unloaded")
_MODEL = ("model", "version")
# batching: "batched", or "one_row_per_call" for a declared graph that cannot share calls (ModelInfo's
# batch_note says why).
_INFO_KEYS = ("cell", "task", "precision", "execution_provider", "batching")
# Set by `--workers N` (service/server/workers.py) for its workers: their values go to files the
# supervisor sums.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


@dataclass(frozen=True)
class ModelTotals:
    """Cumulative figures of one version, read back from its families (Triton's ModelStatistics)."""

    rows: int  # rows inferred: one per chunk, sequence request or Classify sequence
    calls: int  # onnxruntime calls
    queue_s: float  # summed over rows
    compute_s: float  # summed over rows (a call of B rows counts B times)


class HotCounter:
    """A bound counter child, incremented without the wrapper's checks: one locked add per update (the
    value object is the same one, in-process or multiprocess). `inc(amount)`: the amount is required, >= 0."""

    __slots__ = ("child", "inc")

    def __init__(self, child: Counter) -> None:
        self.child = child
        self.inc = child._value.inc


class HotHistogram:
    """A bound histogram child, observed with one bisect instead of a Python loop over the buckets.
    Amounts are durations or sizes, never NaN."""

    __slots__ = ("child", "_bounds", "_buckets", "_sum")

    def __init__(self, child: Histogram) -> None:
        self.child = child
        self._bounds = child._upper_bounds  # ends with +Inf, so every amount finds its bucket
        self._buckets = child._buckets  # per bucket, not cumulative, as prometheus-client keeps them
        self._sum = child._sum

    def observe(self, amount: float) -> None:
        self._sum.inc(amount)
        self._buckets[bisect_left(self._bounds, amount)].inc(1)  # the first bound >= amount


def _sample(child: Counter | Histogram, suffix: str) -> float:
    for family in child.collect():
        for sample in family.samples:
            if sample.name.endswith(suffix):
                return sample.value
    return 0.0


@dataclass(frozen=True)
class ModelMetrics:
    """The children of every per-version family, bound once at load."""

    streams_active: Gauge
    streams_ended: dict[str, Counter]
    evictions: dict[str, Counter]
    state_bytes: Gauge
    chunks: HotCounter
    steps: HotCounter
    chunk_latency: HotHistogram
    queue: HotHistogram
    inference: HotHistogram
    row_compute: HotCounter
    batch_size: HotHistogram
    checkpoints: Counter
    resumes: Counter
    forecast_steps: HotCounter

    def totals(self) -> ModelTotals:
        return ModelTotals(
            rows=int(_sample(self.queue.child, "_count")),
            calls=int(_sample(self.inference.child, "_count")),
            queue_s=_sample(self.queue.child, "_sum"),
            compute_s=_sample(self.row_compute.child, "_total"),
        )


class ServiceMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.streams_active = Gauge(
            "seqserve_streams_active", "Open streams.", _MODEL, registry=r, multiprocess_mode="livesum"
        )
        self.streams_total = Counter(
            "seqserve_streams", "Streams ended, by reason: " + ", ".join(END_REASONS) + ".",
            (*_MODEL, "reason"), registry=r,
        )  # fmt: skip
        self.evictions = Counter(
            "seqserve_stream_evictions", "Streams the server ended itself (idle timeout, shutdown).",
            (*_MODEL, "reason"), registry=r,
        )  # fmt: skip
        self.state_bytes = Gauge(
            "seqserve_state_bytes", "Bytes of recurrent state held.", _MODEL,
            registry=r, multiprocess_mode="livesum",
        )  # fmt: skip
        self.chunks = Counter("seqserve_chunks", "Stream chunks received.", _MODEL, registry=r)
        self.steps = Counter(
            "seqserve_steps",
            "Time steps received (stream chunks and Classify sequences).",
            _MODEL,
            registry=r,
        )
        self.chunk_latency = Histogram(
            "seqserve_chunk_latency_seconds", "Chunk received to its response sent.", _MODEL,
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.queue = Histogram(
            "seqserve_queue_seconds", "Wait of a row in the batcher until its onnxruntime call.", _MODEL,
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.inference = Histogram(
            "seqserve_inference_seconds", "One onnxruntime call (one batch).", _MODEL,
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.row_compute = Counter(
            "seqserve_row_compute_seconds",
            "onnxruntime time summed over the rows of each call (B rows for t s add B*t): the per-request "
            "compute that Triton's ModelStatistics reports.",
            _MODEL,
            registry=r,
        )
        self.batch_size = Histogram(
            "seqserve_batch_size", "Rows per onnxruntime call.", _MODEL, buckets=BATCH_BUCKETS, registry=r
        )
        self.checkpoints = Counter(
            "seqserve_checkpoints", "State checkpoints issued (every Nth chunk, drain, idle timeout).",
            _MODEL, registry=r,
        )  # fmt: skip
        self.forecast_steps = Counter(
            "seqserve_forecast_steps", "Forecast steps answered (forecasts on streams and Forecast calls).",
            _MODEL, registry=r,
        )  # fmt: skip
        self.resumes = Counter(
            "seqserve_resumes", "Streams resumed from a checkpoint token.", _MODEL, registry=r
        )
        # A refused token's model is the client's word, so only the reason labels refusals.
        self.resumes_refused = Counter(
            "seqserve_resumes_refused", "Resume tokens refused, by reason.", ("reason",), registry=r
        )
        for reason in REFUSAL_REASONS:
            self.resumes_refused.labels(reason)
        # Unknown model names from clients stay out of the labels: only the RPC and the status code.
        self.requests = Counter(
            "seqserve_requests", "RPCs finished, by RPC and gRPC code.", ("rpc", "code"), registry=r
        )
        # (rpc, code) -> its child: `labels()` takes a lock and checks its arguments, and a V2 stream counts
        # every answer. Bounded: the RPCs served (plus "unknown") by the gRPC codes.
        self._request_counts: dict[tuple[str, str], Any] = {}
        self.repository_events = Counter(
            "seqserve_repository_events",
            "Live repository changes after start: " + ", ".join(REPOSITORY_EVENTS) + " versions.",
            ("event",),
            registry=r,
        )
        for event in REPOSITORY_EVENTS:
            self.repository_events.labels(event)
        info_help = "Served model versions: cell, task, precision, execution provider."
        self._multiprocess = MULTIPROC_ENV in os.environ
        if self._multiprocess:
            # Info has no multiprocess form; a gauge of 1 with the same labels reads the same when scraped.
            self.model_info = Gauge(
                "seqserve_model_info", info_help, (*_MODEL, *_INFO_KEYS), registry=r, multiprocess_mode="max"
            )
        else:
            self.model_info = Info("seqserve_model", info_help, _MODEL, registry=r)
        # Set by the server's probe (service/server/accept_delay.py); the largest over --workers processes.
        self.accept_delay = Gauge(
            "seqserve_accept_delay_seconds",
            "How long a new call waits at least to be accepted: the least lateness of the server's probe "
            "over the last 0.5 s (--max-accept-delay-ms refuses new streams past it).",
            registry=r, multiprocess_mode="max",
        )  # fmt: skip
        # `token` is the token's name from the operator's tokens file (bounded), never the token itself.
        self.token_streams_active = Gauge(
            "seqserve_token_streams_active", "Open streams per bearer token name.", ("token",),
            registry=r, multiprocess_mode="livesum",
        )  # fmt: skip

    def for_model(
        self,
        name: str,
        version: int,
        cell: str,
        task: str,
        precision: str,
        provider: str,
        batched: bool = True,
    ) -> ModelMetrics:
        labels = (name, str(version))
        info = {
            "cell": cell, "task": task, "precision": precision, "execution_provider": provider,
            "batching": "batched" if batched else "one_row_per_call",
        }  # fmt: skip
        if self._multiprocess:
            self.model_info.labels(*labels, *(info[key] for key in _INFO_KEYS)).set(1)
        else:
            self.model_info.labels(*labels).info(info)
        return ModelMetrics(
            streams_active=self.streams_active.labels(*labels),
            streams_ended={reason: self.streams_total.labels(*labels, reason) for reason in END_REASONS},
            evictions={reason: self.evictions.labels(*labels, reason) for reason in EVICTION_REASONS},
            state_bytes=self.state_bytes.labels(*labels),
            chunks=HotCounter(self.chunks.labels(*labels)),
            steps=HotCounter(self.steps.labels(*labels)),
            chunk_latency=HotHistogram(self.chunk_latency.labels(*labels)),
            queue=HotHistogram(self.queue.labels(*labels)),
            inference=HotHistogram(self.inference.labels(*labels)),
            row_compute=HotCounter(self.row_compute.labels(*labels)),
            batch_size=HotHistogram(self.batch_size.labels(*labels)),
            checkpoints=self.checkpoints.labels(*labels),
            resumes=self.resumes.labels(*labels),
            forecast_steps=HotCounter(self.forecast_steps.labels(*labels)),
        )

    def resume_refused(self, reason: str) -> None:
        self.resumes_refused.labels(reason).inc()

    def forget_model(self, name: str, version: int) -> None:
        """Drop an unloaded version's series, so a long-running server does not keep every version ever."""
        prefix = (name, str(version))
        for family in vars(self).values():
            if isinstance(family, MetricWrapperBase) and family._labelnames[:2] == _MODEL:
                for labels in [key for key in family._metrics if key[:2] == prefix]:
                    family.remove(*labels)

    def repository_event(self, event: str) -> None:
        self.repository_events.labels(event).inc()

    def request_done(self, rpc: str, code: str) -> None:
        count = self._request_counts.get((rpc, code))
        if count is None:
            count = self._request_counts[(rpc, code)] = HotCounter(self.requests.labels(rpc, code)).inc
        count(1)
