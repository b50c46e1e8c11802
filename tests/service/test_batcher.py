"""The batching policy, on a stand-in runtime that records its calls and can be held mid-call."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from seqserve import declaration as declarations
from seqserve.contract import ModelInfo, declaration_for
from seqserve.declaration import GraphTensor
from seqserve.service.engine.batcher import Batcher, length_groups
from seqserve.service.engine.metrics import ServiceMetrics
from seqserve.service.kinds import kind_for
from seqserve.service.server.launch import run_on_loop

INFO = ModelInfo(
    name="m", version=1, task="many_to_many", cell="gru", layers=1, hidden=2, bidirectional=False,
    features=1, labels=["a", "b"],
)  # fmt: skip


class RecordingRuntime:
    """logits[b, t] = [x, -x] at each step; the new state is the old one plus the row's length."""

    info = INFO
    declaration = declarations.resolve(
        declaration_for(INFO),
        [GraphTensor("x", "float32", ("batch", "time", 1)), GraphTensor("h0", "float32", (1, "batch", 2)),
         GraphTensor("lengths", "int32", ("batch",))],
        [GraphTensor("logits", "float32", ("batch", "time", 2)),
         GraphTensor("hn", "float32", (1, "batch", 2))],
    )  # fmt: skip
    lengths_dtype = np.dtype(np.int32)

    def __init__(self) -> None:
        self.calls: list[list[int]] = []
        self.entered = 0  # calls that reached the runtime, held or not
        self.threads: list[str] = []  # where each call ran
        self.release = threading.Event()
        self.release.set()

    def run(self, inputs: tuple, states: tuple, lengths: np.ndarray, key: tuple = ()) -> tuple:
        (x,) = inputs
        self.entered += 1
        self.threads.append(threading.current_thread().name)
        self.release.wait(5)
        self.calls.append(lengths.tolist())
        logits = np.concatenate([x, -x], axis=-1)
        return {"logits": logits}, (states[0] + lengths[None, :, None].astype(np.float32),)


@pytest.fixture
def batcher() -> Batcher:
    metrics = ServiceMetrics().for_model("m", 1, "gru", "many_to_many", "fp32", "CPUExecutionProvider")
    with ThreadPoolExecutor(2) as executor:
        yield Batcher(
            RecordingRuntime(),
            kind_for(RecordingRuntime.declaration),
            executor,
            metrics,
            max_batch=8,
            max_delay_s=0.0,
        )


ZERO = (np.zeros((1, 2), dtype=np.float32),)


def _row(steps: int, sign: float = 1.0) -> np.ndarray:
    return np.full((steps, 1), sign, dtype=np.float32)


def _timed(batcher: Batcher, streams: list[str], steps: int = 4) -> float:
    """One row from each stream at once; seconds until all are answered."""

    async def run() -> float:
        started = asyncio.get_running_loop().time()
        await asyncio.gather(*(batcher.infer(_row(steps), ZERO, stream) for stream in streams))
        return asyncio.get_running_loop().time() - started

    return run_on_loop(run())


def test_a_lone_stream_never_waits_even_with_a_long_max_delay(batcher: Batcher) -> None:
    batcher.max_delay_s = 5.0
    assert max(_timed(batcher, ["a"]) for _ in range(3)) < 1.0
    assert batcher.runtime.calls == [[4], [4], [4]]


def test_rows_arriving_during_a_call_share_the_next_call_and_keep_their_own_results(batcher: Batcher) -> None:
    runtime = batcher.runtime
    runtime.release.clear()

    async def run() -> list:
        first = asyncio.ensure_future(batcher.infer(_row(2), ZERO))
        await asyncio.sleep(0.05)  # the first call is now held in the runtime
        rest = [asyncio.ensure_future(batcher.infer(_row(n, (-1.0) ** n), ZERO)) for n in (1, 2, 3)]
        await asyncio.sleep(0.05)
        runtime.release.set()
        return await asyncio.gather(first, *rest)

    first, *rest = run_on_loop(run())
    assert runtime.calls == [[2], [1, 2, 3]]
    for n, result in zip((1, 2, 3), rest, strict=True):
        assert result.labels.tolist() == [0 if n % 2 == 0 else 1] * n  # its own steps, unpadded
        assert result.states[0].tolist() == [[n, n]]
    assert first.states[0].tolist() == [[2, 2]]


@pytest.mark.parametrize(("max_in_flight", "entered_while_held"), [(1, 1), (2, 2)])
def test_calls_in_flight_bound_how_many_calls_run_at_once(
    batcher: Batcher, max_in_flight: int, entered_while_held: int
) -> None:
    batcher.max_in_flight = max_in_flight
    runtime = batcher.runtime
    runtime.release.clear()

    async def run() -> int:
        rows = [asyncio.ensure_future(batcher.infer(_row(1), ZERO, stream)) for stream in ("a", "b")]
        await asyncio.sleep(0)
        rows.append(asyncio.ensure_future(batcher.infer(_row(1), ZERO, "c")))
        await asyncio.sleep(0.1)  # every call that may start is now held in the runtime
        entered = runtime.entered
        runtime.release.set()
        await asyncio.gather(*rows)
        return entered

    assert run_on_loop(run()) == entered_while_held
    assert sorted(len(call) for call in runtime.calls) == ([1, 2] if max_in_flight == 1 else [1, 1, 1])


def test_streams_in_step_share_one_call(batcher: Batcher) -> None:
    batcher.max_delay_s, batcher.active_window_s = 0.5, 60.0
    _timed(batcher, ["a", "b", "c"])  # now all three are active
    batcher.runtime.calls.clear()
    assert _timed(batcher, ["a", "b", "c"]) < 0.4  # full before the delay
    assert batcher.runtime.calls == [[4, 4, 4]]


def test_quiet_streams_are_not_waited_for(batcher: Batcher) -> None:
    batcher.max_delay_s, batcher.active_window_s = 0.5, 0.1
    _timed(batcher, [f"quiet-{i}" for i in range(50)])
    run_on_loop(asyncio.sleep(0.2))  # the 50 go quiet
    assert max(_timed(batcher, ["talker"]) for _ in range(3)) < 0.4


def test_max_delay_sends_a_partial_batch_when_it_expires(batcher: Batcher) -> None:
    batcher.max_delay_s, batcher.active_window_s = 0.05, 60.0
    _timed(batcher, ["a", "b", "c", "d"])
    batcher.runtime.calls.clear()
    assert _timed(batcher, ["a", "b"]) >= 0.05  # c and d were active: waited for, in vain
    assert batcher.runtime.calls == [[4, 4]]


def test_max_batch_splits_a_long_queue(batcher: Batcher) -> None:
    batcher.runtime.release.clear()

    async def run() -> None:
        first = asyncio.ensure_future(batcher.infer(_row(1), ZERO))
        await asyncio.sleep(0.05)
        rest = [asyncio.ensure_future(batcher.infer(_row(1), ZERO)) for _ in range(11)]
        batcher.runtime.release.set()
        await asyncio.gather(first, *rest)

    run_on_loop(run())
    assert [len(call) for call in batcher.runtime.calls] == [1, 8, 3]


LOOP_THREAD = "seqserve-loop"


def _one_row_calls(batcher: Batcher, steps: list[int]) -> list[str]:
    """One lone row per entry, one after the other; the thread each call ran on."""
    for n in steps:
        run_on_loop(batcher.infer(_row(n), ZERO, "a"))
    return batcher.runtime.threads


def test_no_budget_keeps_every_call_off_the_loop(batcher: Batcher) -> None:
    assert LOOP_THREAD not in _one_row_calls(batcher, [1, 1, 1])


def test_a_size_measured_within_budget_runs_inline_and_a_new_size_goes_to_the_executor_first(
    batcher: Batcher,
) -> None:
    batcher.inline_budget_s = 60.0  # the stand-in takes microseconds
    threads = _one_row_calls(batcher, [1, 1, 1, 64, 64])
    assert [name == LOOP_THREAD for name in threads] == [False, True, True, False, True]


def test_a_size_measured_above_budget_stays_on_the_executor(batcher: Batcher) -> None:
    batcher.inline_budget_s = 1e-12
    assert LOOP_THREAD not in _one_row_calls(batcher, [1, 1, 1])


def test_a_call_that_leaves_an_active_stream_out_goes_to_the_executor(batcher: Batcher) -> None:
    batcher.inline_budget_s, batcher.active_window_s = 60.0, 60.0
    _one_row_calls(batcher, [1, 1])  # measured, and inline while "a" is the only active stream
    _timed(batcher, ["b"], steps=1)  # "b" is active now too
    batcher.runtime.threads.clear()
    assert LOOP_THREAD not in _one_row_calls(batcher, [1])


def test_no_call_runs_inline_while_another_is_in_flight(batcher: Batcher) -> None:
    batcher.inline_budget_s, batcher.max_in_flight = 60.0, 2
    _one_row_calls(batcher, [1])  # size 1 measured: inline from now on, when alone
    runtime = batcher.runtime
    runtime.release.clear()

    async def run() -> None:
        held = asyncio.ensure_future(batcher.infer(_row(8), ZERO, "a"))  # a size never measured: executor
        await asyncio.sleep(0.05)
        second = asyncio.ensure_future(batcher.infer(_row(1), ZERO, "b"))
        await asyncio.sleep(0.05)
        runtime.release.set()
        await asyncio.gather(held, second)

    runtime.threads.clear()
    run_on_loop(run())
    assert len(runtime.threads) == 2 and LOOP_THREAD not in runtime.threads


@pytest.mark.parametrize(
    ("lengths", "groups"),
    [
        ([4, 4, 4], [[0, 1, 2]]),
        ([32, 1, 30, 1], [[1, 3], [2, 0]]),  # 1-step rows do not pad to 32
        ([5], [[0]]),
        ([1, 2, 9], [[0, 1], [2]]),
    ],
)
def test_length_groups_bound_the_padding(lengths: list[int], groups: list[list[int]]) -> None:
    assert length_groups(lengths) == groups
