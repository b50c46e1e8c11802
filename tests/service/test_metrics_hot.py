"""The hot-path metric updates (`HotCounter`, `HotHistogram`) leave exactly the samples that
prometheus-client's public `inc` and `observe` leave: the same buckets, sums and counts, so /metrics is
the same whichever way a figure was recorded."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram

from seqserve.service.engine.metrics import BATCH_BUCKETS, LATENCY_BUCKETS, HotCounter, HotHistogram

amounts = st.floats(min_value=0.0, allow_nan=False)  # +Inf too: it lands in the +Inf bucket
# Bounds themselves are the edge cases: an amount equal to a bound belongs to that bound's bucket.
edges = st.sampled_from([*LATENCY_BUCKETS, *BATCH_BUCKETS, 0.0])


def _samples(registry: CollectorRegistry) -> list[tuple[str, dict, float]]:
    return [
        (s.name, s.labels, s.value)
        for family in registry.collect()
        for s in family.samples
        if not s.name.endswith("_created")
    ]


@given(st.lists(st.one_of(amounts, edges), max_size=60), st.sampled_from([LATENCY_BUCKETS, BATCH_BUCKETS]))
def test_hot_histogram_equals_public_observe(values: list[float], buckets: tuple) -> None:
    public, hot = CollectorRegistry(), CollectorRegistry()
    reference = Histogram("h", "h", ("model",), buckets=buckets, registry=public).labels("m")
    fast = HotHistogram(Histogram("h", "h", ("model",), buckets=buckets, registry=hot).labels("m"))
    for value in values:
        reference.observe(value)
        fast.observe(value)
    assert _samples(hot) == _samples(public)


@given(st.lists(amounts, max_size=60))
def test_hot_counter_equals_public_inc(values: list[float]) -> None:
    public, hot = CollectorRegistry(), CollectorRegistry()
    reference = Counter("c", "c", ("model",), registry=public).labels("m")
    fast = HotCounter(Counter("c", "c", ("model",), registry=hot).labels("m"))
    for value in values:
        reference.inc(value)
        fast.inc(value)
    assert _samples(hot) == _samples(public)
