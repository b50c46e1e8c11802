"""Read a server's Prometheus endpoint: every sample summed over its labels, by sample name; or one sample."""

from __future__ import annotations

import urllib.request
from collections import defaultdict
from collections.abc import Iterator

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families


def _families(url: str) -> Iterator[Metric]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return text_string_to_metric_families(response.read().decode())


def scrape(url: str) -> dict[str, float]:
    """`{"seqserve_batch_size_sum": ..., "seqserve_streams_active": ..., ...}`, labels summed away."""
    totals: dict[str, float] = defaultdict(float)
    for family in _families(url):
        for sample in family.samples:
            totals[sample.name] += sample.value
    return dict(totals)


def sample_value(url: str, name: str, labels: dict[str, str]) -> float:
    """One sample's value, the first whose labels include `labels` (0 when there is none yet)."""
    for family in _families(url):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                return sample.value
    return 0.0
