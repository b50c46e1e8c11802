"""/metrics over HTTP: the core families of docs/operations.md, the step counter equal to the steps sent."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from seqserve.service.client.load import classify_load, stream_load

from .reference import MODEL_DATA

FAMILIES = {
    "seqserve_streams_active", "seqserve_streams", "seqserve_stream_evictions", "seqserve_state_bytes",
    "seqserve_chunks", "seqserve_steps", "seqserve_chunk_latency_seconds", "seqserve_queue_seconds",
    "seqserve_inference_seconds", "seqserve_batch_size", "seqserve_requests", "seqserve_model_info",
}  # fmt: skip


def test_metrics_endpoint_counts_what_clients_sent(make_server, sequences: dict) -> None:
    server = make_server(metrics_port=0)
    xs = sequences[MODEL_DATA["bms-gru"]][:6]
    report = server.call(stream_load(server.target, "bms-gru", xs, chunk=7, concurrency=3))
    server.call(classify_load(server.target, "bms-gru", xs[:2]))
    with urllib.request.urlopen(f"http://{server.running.metrics_address}/metrics", timeout=5) as response:
        text = response.read().decode()
    families = {family.name: family for family in text_string_to_metric_families(text)}
    assert FAMILIES <= set(families)
    samples = {(s.name, frozenset(s.labels.items())): s.value for f in families.values() for s in f.samples}

    def value(name: str, **labels: str) -> float:
        return samples[(name, frozenset({"model": "bms-gru", "version": "1", **labels}.items()))]

    assert value("seqserve_steps_total") == report.steps + sum(len(x) for x in xs[:2])
    assert value("seqserve_chunks_total") == sum(-(-len(x) // 7) for x in xs)
    assert value("seqserve_streams_total", reason="completed") == 6
    assert value("seqserve_streams_active") == 0 and value("seqserve_state_bytes") == 0
    assert value("seqserve_chunk_latency_seconds_count") == value("seqserve_chunks_total")
    assert samples[("seqserve_requests_total", frozenset({"rpc": "Stream", "code": "OK"}.items()))] == 6
    info = [s for s in families["seqserve_model_info"].samples if s.labels["model"] == "jv-lstm"][0].labels
    assert info == {"model": "jv-lstm", "version": "1", "cell": "lstm", "task": "many_to_one",
                    "precision": "fp32", "execution_provider": "CPUExecutionProvider",
                    "batching": "batched"}  # fmt: skip
