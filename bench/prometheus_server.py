"""A real Prometheus (Debian's `prometheus` binary) scraping one seqserve: start it, query it, stop it.

Shared by tests/ops/test_prometheus.py and `python -m bench.dashboard`, so the test and the dashboard
picture read the same Prometheus the same way.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode
from urllib.request import urlopen

RULES_FILE = Path(__file__).resolve().parents[1] / "docker" / "prometheus-rules.yml"
READY_TIMEOUT_S = 30.0


class PrometheusStartError(RuntimeError):
    """Prometheus exited or did not get ready; the message holds its log."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Prometheus:
    url: str
    process: subprocess.Popen

    def _api(self, path: str, **params: str) -> dict:
        with urlopen(f"{self.url}/api/v1/{path}?{urlencode(params)}", timeout=30) as reply:
            body = json.load(reply)
        if body["status"] != "success":
            raise RuntimeError(f"Prometheus answered {body} to {path} {params}")
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        return self._api("query", query=expr)["result"]

    def query_range(self, expr: str, start: float, end: float, step_s: float) -> list[dict]:
        """`[{"metric": {labels}, "values": [[unix_s, "value"], ...]}, ...]` of a range query."""
        return self._api("query_range", query=expr, start=str(start), end=str(end), step=str(step_s))[
            "result"
        ]

    def value(self, expr: str) -> float | None:
        """The single value of an instant query, or None while it has no result."""
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def wait_for(self, expr: str, want: Callable[[float], bool], timeout_s: float = 30.0) -> float:
        deadline = time.monotonic() + timeout_s
        value = self.value(expr)
        while value is None or not want(value):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{expr} is {value} after {timeout_s}s")
            time.sleep(0.2)
            value = self.value(expr)
        return value

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=30)


def start_prometheus(metrics_address: str, work_dir: Path, scrape_interval: str = "1s") -> Prometheus:
    """Prometheus on a free 127.0.0.1 port scraping `metrics_address` with docker/'s rules, once ready."""
    work_dir.mkdir(parents=True, exist_ok=True)
    config = {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
        "rule_files": [str(RULES_FILE)],
        "scrape_configs": [{"job_name": "seqserve", "static_configs": [{"targets": [metrics_address]}]}],
    }
    config_file = work_dir / "prometheus.yml"
    config_file.write_text(json.dumps(config))  # JSON is YAML
    address = f"127.0.0.1:{free_port()}"
    log_path = work_dir / "prometheus.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={config_file}",
                f"--storage.tsdb.path={work_dir / 'tsdb'}",
                f"--web.listen-address={address}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    prometheus = Prometheus(url=f"http://{address}", process=process)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        try:
            with urlopen(f"{prometheus.url}/-/ready", timeout=2) as reply:
                if reply.status == 200:
                    return prometheus
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            prometheus.stop()
            raise PrometheusStartError(f"prometheus did not get ready:\n{log_path.read_text()}")
        time.sleep(0.2)
