"""`python -m bench.experiments.v2_flood` at a small size: it runs, and its figures hold together."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from seqserve.service.frontends.kserve_v2 import MAX_IN_FLIGHT_PER_STREAM


def test_flood_reports_what_went_out_what_was_read_and_what_waits(tmp_path: Path) -> None:
    out = tmp_path / "flood.json"
    command = [
        sys.executable,
        "-m",
        "bench.experiments.v2_flood",
        "--requests",
        "3000",
        "--stall-s",
        "2",
        "--out",
        str(out),
    ]
    subprocess.run(command, check=True, timeout=300, capture_output=True)
    figures = json.loads(out.read_text())
    assert 0 < figures["sent_before_stall"] <= figures["requests"] == 3000
    assert 0 < figures["server_read"] <= figures["sent_before_stall"]
    assert figures["answers_written"] + figures["answers_unwritten"] == figures["server_read"]
    assert figures["answers_unwritten"] <= MAX_IN_FLIGHT_PER_STREAM + 1
    assert figures["rss_after_mb"] > 0 and figures["rss_before_mb"] > 0
