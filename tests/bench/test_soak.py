"""The 30 s version of `make soak`: hostile traffic (bad messages, cancels, Classify) then a short overload,
against a `seqserve serve` process. Nothing may leak and no good stream may fail; timings are not asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_short_soak_leaks_nothing_and_fails_no_good_stream(model_repository: Path, tmp_path: Path) -> None:
    command = [sys.executable, "-m", "bench.soak", "--duration-s", "30", "--streams", "16",
               "--overload-s", "5", "--overload-streams", "100", "--overload-clients", "1",
               "--repository", str(model_repository), "--model", "jv-gru",
               "--out", str(tmp_path)]  # fmt: skip
    subprocess.run(command, cwd=ROOT, check=True, timeout=300, stdout=subprocess.DEVNULL)
    result = json.loads((tmp_path / "soak.json").read_text())
    soak, overload = result["soak"], result["overload"]
    assert soak["good_streams"] > 0 and soak["bad_streams"] > 0 and soak["classify_ok"] > 0
    assert soak["good_errors"] == 0 and soak["classify_errors"] == 0, soak["errors_seen"]
    assert soak["bad_unexpected"] == 0, soak["errors_seen"]  # every bad message: INVALID_ARGUMENT
    assert soak["streams_leaked"] == 0 and soak["state_bytes_left"] == 0
    assert len(soak["samples"]) >= 3 and all(s["rss_mb"] > 0 for s in soak["samples"])
    assert overload["errors_on_good_streams"] == 0, overload["errors_seen"]
    assert overload["streams_left_open_after"] == 0 and overload["state_bytes_left_after"] == 0
    assert overload["chunks_per_s"] > 0
    assert (tmp_path / "soak.png").stat().st_size > 0
