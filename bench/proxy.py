"""The proxy's cost and a replica's failover, through HAProxy on docker/haproxy.cfg (`python -m bench.proxy`).

Steps/s of the same load (basic-motions streams, chunks of 4) directly against one replica, through HAProxy
to that one replica, and through HAProxy to three; the proxy's cost is the ratio proxied / direct with one
replica. Then a replica is killed (SIGKILL) under load with a checkpoint every 4 chunks, and the time from
its death to each of its streams' resume on another replica is read from the survivors'
seqserve_resumes_total, polled every 20 ms (p50 and max over the victim's streams). Writes
bench/results/proxy.json. Needs haproxy (scripts/install_haproxy.sh) and a model repository with bms-gru.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from bench.haproxy_server import HAProxy, Replicas, start_haproxy
from seqserve.service.client.load import stream_load
from seqserve.service.server.launch import ServerProcess, background_loop, run_on_loop
from seqserve.training.datasets import load_dataset

MODEL = "bms-gru"
CHUNK = 4


def _metric(server: ServerProcess, name: str) -> float:
    with urllib.request.urlopen(f"http://{server.metrics_target}/metrics", timeout=10) as response:
        text = response.read().decode()
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)


def _streams(count: int, steps: int) -> list[np.ndarray]:
    found = load_dataset(dataset="basic_motions_stream").test.sequences
    return [
        np.concatenate([found[i % len(found)]] * (steps // len(found[0]) + 2))[:steps] for i in range(count)
    ]


def _steps_per_s(target: str, xs: list[np.ndarray]) -> float:
    report = run_on_loop(stream_load(target, MODEL, xs, chunk=CHUNK, concurrency=len(xs)), 600)
    return report.steps_per_s


def _failover(replicas: Replicas, proxy: HAProxy, xs: list[np.ndarray]) -> dict:
    load = stream_load(proxy.target, MODEL, xs, chunk=CHUNK, concurrency=len(xs), checkpoint_every_chunks=4)
    future = asyncio.run_coroutine_threadsafe(load, background_loop())
    victim, survivors = replicas.processes[1], [replicas.processes[0], replicas.processes[2]]
    while (
        _metric(victim, "seqserve_streams_active") < len(xs) // 4
        or _metric(victim, "seqserve_chunks_total") < 400
    ):
        time.sleep(0.02)
    held = int(_metric(victim, "seqserve_streams_active"))
    victim.kill()
    died = time.perf_counter()
    resumed_at: list[float] = []
    while len(resumed_at) < held and not future.done():
        count = int(sum(_metric(s, "seqserve_resumes_total") for s in survivors))
        resumed_at += [time.perf_counter() - died] * (count - len(resumed_at))
        time.sleep(0.02)
    report = future.result(600)
    lost = sum(r.step_indexes != list(range(len(x))) for r, x in zip(report.results, xs, strict=True))
    return {
        "streams": len(xs),
        "victim_streams": held,
        "resumed": len(resumed_at),
        "streams_with_a_lost_or_repeated_step": lost,
        "death_to_resume_p50_s": round(float(np.percentile(resumed_at, 50)), 3) if resumed_at else None,
        "death_to_resume_max_s": round(max(resumed_at), 3) if resumed_at else None,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, required=True, help="model repository holding bms-gru")
    parser.add_argument("--streams", type=int, default=64)
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--out", type=Path, default=Path("bench/results/proxy.json"))
    args = parser.parse_args(argv)
    xs = _streams(args.streams, args.steps)
    with tempfile.TemporaryDirectory(prefix="bench-proxy-") as work:
        key = Path(work) / "key"
        key.write_text("bench-proxy-state-key-0123456789abcdef\n")
        replicas = Replicas(args.repository, ("--state-key-file", str(key)), Path(work))
        proxies: list[HAProxy] = []
        try:
            replicas.start_all(3)
            proxies.append(start_haproxy(replicas.targets[:1], Path(work) / "one"))
            direct = _steps_per_s(replicas.targets[0], xs)
            one = _steps_per_s(proxies[0].target, xs)
            proxies.append(start_haproxy(replicas.targets, Path(work) / "three"))
            three = _steps_per_s(proxies[1].target, xs)
            failover = _failover(replicas, proxies[1], xs)
        finally:
            for proxy in proxies:
                proxy.stop()
            replicas.stop_all()
    result = {
        "streams": args.streams,
        "steps_per_stream": args.steps,
        "chunk": CHUNK,
        "steps_per_s": {"direct_1": round(direct), "proxy_1": round(one), "proxy_3": round(three)},
        "proxy_cost_ratio_1": round(one / direct, 3),
        "proxy_3_over_direct_1": round(three / direct, 3),
        "failover": failover,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
