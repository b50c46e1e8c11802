"""Cross-stream batching for one model version: rows waiting from many streams -> one onnxruntime call.

Policy (decided here; docs/operations.md documents the flags):
- At most `max_in_flight` calls in flight per model version (`--calls-in-flight`); rows that arrive while
  they run go together in the next call (up to `max_batch` rows, the rest in the call after). Two calls
  in flight let one group of streams compute while the other makes its network round trip.
- With a call slot free, waiting rows go once every active stream not already in a running call has a
  row waiting, or when the oldest has waited `max_delay_s` (`--max-delay-ms`; 0 never holds a row
  back). A stream is active when it sent a row within `active_window_s`: streams in step are waited
  for, quiet ones are not. So one client never waits (it is every active stream), 10,000 idle streams
  do not slow the one that talks, and 64 clients in step share one call where a naive server makes 64.
- Each stream awaits its row before it sends the next, so a call holds at most one chunk per stream and
  each stream's chunks run in order.
- Rows of very different lengths are split into separate calls (padding at most doubles the work), since
  the RNN kernels step through the longest row for every row.
- Inline or executor: a call runs on the event loop itself when nothing else waits (no other call in
  flight, and the call holds a row of every active stream), it is small (at most `INLINE_MAX_ROWS` rows)
  and calls of its size (padded rows x steps, by power of two) have taken at most `inline_budget_s`
  (`--inline-max-us`) so far; everything else goes to the executor, and so does a size never measured (a
  first call, a CUDA warm-up). A lone stream's one-row call then costs no thread hop, the loop is never
  held longer than the budget (a long chunk or a slow model cannot stall other streams, health or the
  drain), and where batching pays the executor computes while the loop does the streams' I/O.
Padding and the onnxruntime call run vectorised per call, wherever the call runs; the model's kind
(`service/engine/kind.py`) then makes every row's answer from the call's output at once.

A failed onnxruntime call fails only its own rows, with `InferenceFailed` (INTERNAL) naming the model;
the next call runs as usual. After `FAILURES_BEFORE_NOT_SERVING` failed calls in a row the version
reports itself unhealthy (`healthy`, `on_health_change`), and healthy again at its next good call.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from seqserve.service.engine import layout
from seqserve.service.engine.errors import InferenceFailed
from seqserve.service.engine.kind import ModelKind, RowAnswer, States
from seqserve.service.engine.metrics import ModelMetrics
from seqserve.service.engine.runtime import ModelRuntime

log = logging.getLogger(__name__)

# Failed calls in a row before a version counts as not serving: one bad call is the rows' bad luck (or
# bad input that onnxruntime refused), three in a row is the model.
FAILURES_BEFORE_NOT_SERVING = 3


@dataclass(slots=True, eq=False)
class _Row:
    inputs: tuple[np.ndarray, ...]  # one row per stream input (layout.py)
    steps: int  # valid steps along time; 1 for a frame
    states: States
    key: tuple  # the stream's constants: rows with other constants never share a call
    future: asyncio.Future
    queued_at: float


def length_groups(lengths: list[int], max_waste: float = 2.0) -> list[list[int]]:
    """Row indices grouped by similar length: padded steps stay within `max_waste` times the real steps."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    groups: list[list[int]] = []
    group: list[int] = []
    total = 0
    for index in order:
        n = lengths[index]
        if group and (len(group) + 1) * n > max_waste * (total + n):
            groups.append(group)
            group, total = [], 0
        group.append(index)
        total += n
    if group:
        groups.append(group)
    return groups


# Inline against executor, A/B at chunk 1 and 32 (bench/README.md): +9 % at 4 streams, -14 to -27 % at
# 16 and 64 streams, where a call holds every active stream's row but the loop has their I/O to overlap.
INLINE_MAX_ROWS = 4


def _size_class(rows: list[_Row]) -> int:
    """Calls of padded rows x steps within a factor of 2 share a class: their cost is alike."""
    if len(rows) == 1:
        return rows[0].steps.bit_length()
    return (len(rows) * max(row.steps for row in rows)).bit_length()


class Batcher:
    def __init__(
        self,
        runtime: ModelRuntime,
        kind: ModelKind,
        executor: Executor,
        metrics: ModelMetrics,
        max_batch: int,
        max_delay_s: float,
        active_window_s: float | None = None,
        max_in_flight: int = 1,
        inline_budget_s: float = 0.0,
    ) -> None:
        self.runtime = runtime
        self.kind = kind
        declaration = runtime.declaration
        self._inputs = declaration.inputs
        self._state_axes = tuple(s.batch_axis for s in declaration.states)
        self._frames = declaration.frame_model
        self._padded = runtime.lengths_dtype is not None  # rows of different lengths may share a call
        self._batchable = declaration.batchable
        self._batch_time_first = len(self._inputs) == 1 and (
            self._inputs[0].batch_axis,
            self._inputs[0].time_axis,
        ) == (0, 1)
        self._lone_rows = tuple(layout.row_index(axis, 0) for axis in self._state_axes)
        self.executor = executor
        self.metrics = metrics
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        # Long enough to span a client's round trip under load, many times the delay a row may wait.
        self.active_window_s = active_window_s if active_window_s is not None else max(50 * max_delay_s, 0.1)
        self._last_row_at: dict[object, float] = {}  # stream -> when it last sent a row
        self._recount_at = 0.0
        self._pending: list[_Row] = []
        self.max_in_flight = max_in_flight
        self._calls_in_flight = 0
        self._rows_in_flight = 0
        self._timer: asyncio.TimerHandle | None = None
        self.inline_budget_s = inline_budget_s
        # Seconds a whole call took, by size class (bit length of padded rows x steps); a moving average.
        self._call_seconds: dict[int, float] = {}
        self.consecutive_failures = 0
        # Called (on the event loop) when `healthy` changes.
        self.on_health_change: Callable[[], None] | None = None

    @property
    def healthy(self) -> bool:
        return self.consecutive_failures < FAILURES_BEFORE_NOT_SERVING

    async def infer(
        self, x: np.ndarray | tuple[np.ndarray, ...], states: States, stream: object = None, key: tuple = ()
    ) -> RowAnswer:
        """Run one row (`x`: its stream inputs' rows, or the one input's) from `states` (state rows) in the
        next call; `stream` (any hashable, None for one-off rows) tells rows of the same client apart;
        `key` is the stream's constants."""
        return await self.submit(x, states, stream, key)

    def submit(
        self, x: np.ndarray | tuple[np.ndarray, ...], states: States, stream: object = None, key: tuple = ()
    ) -> asyncio.Future[RowAnswer]:
        """`infer` without a coroutine: the row is queued at once and the future ends with its answer, so
        a caller may take it in a done callback and spare the event loop a task per row."""
        future = asyncio.get_running_loop().create_future()
        now = time.perf_counter()
        if stream is not None:
            self._last_row_at[stream] = now
        self._pending.append(self._row(x, states, key, future, now))
        self._maybe_dispatch()
        return future

    def submit_many(
        self, rows: list[tuple[tuple[np.ndarray, ...], States]], streams: list[object], key: tuple = ()
    ) -> list[asyncio.Future[RowAnswer]]:
        """Several rows (each its stream inputs' rows and its state rows) queued at once, and `streams`
        (one hashable per row, as `submit`'s) all marked active before the batcher decides: the rows of
        one request (a translation's words and beams) then share a call instead of the first going alone."""
        loop = asyncio.get_running_loop()
        now = time.perf_counter()
        for stream in streams:
            self._last_row_at[stream] = now
        futures = [loop.create_future() for _ in rows]
        self._pending += [
            self._row(x, states, key, f, now) for (x, states), f in zip(rows, futures, strict=True)
        ]
        self._maybe_dispatch()
        return futures

    def _row(
        self,
        x: np.ndarray | tuple[np.ndarray, ...],
        states: States,
        key: tuple,
        future: asyncio.Future,
        now: float,
    ) -> _Row:
        inputs = x if isinstance(x, tuple) else (x,)
        return _Row(inputs, 1 if self._frames else inputs[0].shape[0], states, key, future, now)

    def forget(self, stream: object) -> None:
        """A stream has ended: stop waiting for its rows (else each restart of a short sequence leaves a
        ghost that holds every call back by up to max delay until the active window forgets it)."""
        if self._last_row_at.pop(stream, None) is not None:
            self._maybe_dispatch()

    def _active_streams(self, now: float) -> int:
        # Forgetting quiet streams costs a pass over the active ones, so it runs a few times per window.
        if now >= self._recount_at:
            cutoff = now - self.active_window_s
            self._last_row_at = {key: at for key, at in self._last_row_at.items() if at >= cutoff}
            self._recount_at = now + self.active_window_s / 4
        return len(self._last_row_at)

    def _maybe_dispatch(self) -> None:
        if self._calls_in_flight >= self.max_in_flight or not self._pending:
            return
        pending = self._pending
        now = time.perf_counter()
        waited = now - pending[0].queued_at
        expected = min(self.max_batch, self._active_streams(now) - self._rows_in_flight)
        if waited < self.max_delay_s and len(pending) < expected:
            if self._timer is None:
                self._timer = asyncio.get_running_loop().call_later(self.max_delay_s - waited, self._on_timer)
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        rows = pending[: self.max_batch]
        del pending[: self.max_batch]
        size = _size_class(rows)
        self._calls_in_flight += 1
        self._rows_in_flight += len(rows)
        if self._runs_inline(rows, size, self._active_streams(now)):
            try:
                results = self._run(rows, size)
            except Exception as error:  # noqa: BLE001 - handed to the rows, as from the executor
                self._finish(rows, None, error)
            else:
                self._finish(rows, results, None)
            return
        call = asyncio.get_running_loop().run_in_executor(self.executor, self._run, rows, size)
        call.add_done_callback(
            lambda done: (
                self._finish(rows, None, error)
                if (error := done.exception()) is not None
                else self._finish(rows, done.result(), None)
            )
        )

    def _runs_inline(self, rows: list[_Row], size: int, active: int) -> bool:
        # Streams not in this call would wait on the loop, while the executor could overlap them; and
        # past a few rows the loop's own work on them (answers out, next chunks in) overlaps the call.
        if self._calls_in_flight > 1 or not len(rows) <= INLINE_MAX_ROWS or len(rows) < active:
            return False
        if self.inline_budget_s <= 0:
            return False
        seconds = self._call_seconds.get(size)
        return seconds is not None and seconds <= self.inline_budget_s

    def _on_timer(self) -> None:
        self._timer = None
        self._maybe_dispatch()

    def _finish(self, rows: list[_Row], results: list[RowAnswer] | None, error: BaseException | None) -> None:
        self._calls_in_flight -= 1
        self._rows_in_flight -= len(rows)
        failure = None if error is None else self._failed(error, len(rows))
        if failure is None and self.consecutive_failures:
            self._set_failures(0)
        for index, row in enumerate(rows):
            if row.future.done():  # the stream was cancelled while waiting
                continue
            if failure is not None:
                row.future.set_exception(failure)
            else:
                row.future.set_result(results[index])
        self._maybe_dispatch()

    def _failed(self, error: BaseException, rows: int) -> InferenceFailed:
        key = f"{self.runtime.info.name}:{self.runtime.info.version}"
        log.error("onnxruntime call on %s failed (%d rows): %s", key, rows, error)
        self._set_failures(self.consecutive_failures + 1)
        detail = str(error)[:300]
        return InferenceFailed(
            f"model {key} failed on the onnxruntime call that held this request's rows "
            f"({type(error).__name__}: {detail}); other requests go on, retry"
        )

    def _set_failures(self, count: int) -> None:
        was = self.healthy
        self.consecutive_failures = count
        if self.healthy != was and self.on_health_change is not None:
            self.on_health_change()

    def _run(self, rows: list[_Row], size: int) -> list[RowAnswer]:
        """On the loop or an executor thread: gather, run, answer, scatter; one onnxruntime call per group
        of rows that may share one (`_groups`). `size` is the call's size class."""
        start = time.perf_counter()
        queue = self.metrics.queue
        for row in rows:
            queue.observe(start - row.queued_at)
        if len(rows) == 1:  # a lone stream's call: nothing to group, pad or stack
            results = [self._run_one(rows[0])]
        else:
            results = [None] * len(rows)
            for group in self._groups(rows):
                run = self._run_group if len(group) > 1 else lambda one: [self._run_one(one[0])]
                for index, result in zip(group, run([rows[i] for i in group]), strict=True):
                    results[index] = result
        # Written from the executor thread or the loop; a lost update only delays the average.
        seconds = time.perf_counter() - start
        previous = self._call_seconds.get(size)
        self._call_seconds[size] = seconds if previous is None else 0.8 * previous + 0.2 * seconds
        return results  # type: ignore[return-value]

    def _groups(self, rows: list[_Row]) -> list[list[int]]:
        """Row indices by the calls they may share: the same constants, then lengths within a factor of 2
        of each other (padded) or equal (a graph without a lengths input); one row a call for a graph that
        cannot batch."""
        if not self._batchable:
            return [[index] for index in range(len(rows))]
        by_key: dict[tuple, list[int]] = {}
        for index, row in enumerate(rows):
            by_key.setdefault(row.key, []).append(index)
        groups = []
        for indices in by_key.values():
            if self._padded:
                groups += [[indices[i] for i in g] for g in length_groups([rows[i].steps for i in indices])]
            else:
                by_steps: dict[int, list[int]] = {}
                for index in indices:
                    by_steps.setdefault(rows[index].steps, []).append(index)
                groups += by_steps.values()
        return groups

    def _compute(
        self,
        inputs: tuple[np.ndarray, ...],
        states: States,
        lengths: np.ndarray | None,
        key: tuple,
        rows: int,
    ) -> tuple[dict[str, np.ndarray], States]:
        """The onnxruntime call of `rows` rows, timed into the metrics."""
        start = time.perf_counter()
        outputs, new_states = self.runtime.run(inputs, states, lengths, key)
        elapsed = time.perf_counter() - start
        self.metrics.inference.observe(elapsed)
        # Each row waited for the whole call: per-row compute, as Triton's ModelStatistics reports it.
        self.metrics.row_compute.inc(elapsed * rows)
        self.metrics.batch_size.observe(rows)
        return outputs, new_states

    def _run_one(self, row: _Row) -> RowAnswer:
        """A lone row: views with a batch axis of 1, no copies (states are contiguous already, as the
        previous call or the zero state left them)."""
        if self._batch_time_first:  # [batch, time, ...]: the contract's layout, a view with no call
            inputs = (row.inputs[0][np.newaxis],)
        else:
            inputs = tuple(
                [layout.one_input(spec, x) for spec, x in zip(self._inputs, row.inputs, strict=True)]
            )
        lengths = _lengths(row.steps) if self._padded else None
        outputs, new_states = self._compute(
            inputs, layout.one_state(row.states, self._state_axes), lengths, row.key, 1
        )
        return self.kind.answer_one(
            outputs, tuple([s[index] for s, index in zip(new_states, self._lone_rows, strict=False)])
        )

    def _run_group(self, rows: list[_Row]) -> list[RowAnswer]:
        lengths = np.fromiter((row.steps for row in rows), dtype=np.int32, count=len(rows))
        steps = int(lengths.max())
        inputs = tuple(
            layout.batch_input(spec, [row.inputs[k] for row in rows], steps)
            for k, spec in enumerate(self._inputs)
        )
        axes = self._state_axes
        states = layout.stack_states([row.states for row in rows], axes)
        outputs, new_states = self._compute(inputs, states, lengths, rows[0].key, len(rows))
        states_after = [layout.row_states(new_states, axes, index) for index in range(len(rows))]
        return self.kind.answer_rows(outputs, lengths.tolist(), states_after)


_LENGTHS: dict[int, np.ndarray] = {}


def _lengths(steps: int) -> np.ndarray:
    """The lengths input of a lone row of `steps` steps, made once per length and read-only (onnxruntime
    only reads its inputs); bounded by --max-chunk-steps."""
    lengths = _LENGTHS.get(steps)
    if lengths is None:
        lengths = _LENGTHS[steps] = np.array([steps], dtype=np.int32)
        lengths.setflags(write=False)
    return lengths
