"""`python -m bench.run --quick`: every scenario runs and the JSON is complete and self-consistent.

Timings are never asserted: only that every figure exists, is positive, and that the counts agree.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RATIO_KEYS = {
    "service_vs_grpc_ceiling_chunk1_64",
    "service_vs_ort_chunk32_64",
    "service_vs_naive_chunk32_64",
    "service_vs_resend_T256",
    "rss_mb_10k_idle_streams",
    "p99_ms_chunk1_64",
    "server_cpu_vs_ort_cpu_chunk32_64",
    "grid_min_msgs_vs_naive",
    "grid_max_p50_vs_naive_plus_slack",
}
RATES = ("msgs_per_s", "steps_per_s", "p50_ms", "p99_ms", "server_cpu_us_per_step", "client_cpu_us_per_msg")


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("bench")
    subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--out", str(out), "--processes", "2"],
        cwd=ROOT,
        check=True,
        timeout=480,  # the quick run starts 5 servers and Triton where installed
    )
    return json.loads((out / "latest.json").read_text()), out


def test_writes_every_ratio_and_target_and_the_plot(results: tuple[dict, Path]) -> None:
    data, out = results
    assert RATIO_KEYS <= data["ratios"].keys()
    assert RATIO_KEYS <= data["targets"].keys() <= data["ratios"].keys()
    assert all(value > 0 for value in data["ratios"].values())
    assert all(isinstance(verdict["met"], bool) for verdict in data["targets"].values())
    assert (out / "streams.png").stat().st_size > 10_000
    assert data["meta"]["client_processes"] == 2


def test_ceiling_counts_agree(results: tuple[dict, Path]) -> None:
    data, _ = results
    config = data["config"]
    assert {(r["batch"], r["chunk"]) for r in data["ort"]} == {
        (batch, chunk)
        for batch in (1, config["ratio_streams"])
        for chunk in (config["small_chunk"], config["large_chunk"])
    }
    for result in data["ort"]:
        assert result["calls"] > 0
        assert result["steps"] == result["batch"] * result["chunk"] * result["calls"]
        assert result["steps_per_s"] == pytest.approx(result["steps"] / result["seconds"])


def _check_served(figures: dict) -> None:
    assert all(figures[key] > 0 for key in RATES), figures
    by_thread = figures["server_cpu_us_per_msg_by_thread"]
    assert "main" in by_thread and min(by_thread.values()) >= 0
    assert figures["cores_busy"] > 0
    assert figures["p50_ms"] <= figures["p99_ms"]
    assert 1 <= figures["processes"] <= min(2, figures["streams"])
    if figures["mode"] == "stream":
        assert figures["steps"] == figures["messages"] * figures["chunk"]
        # Every step the clients sent, the server counted and reported when the stream ended.
        assert figures["server_steps"] == figures["sent_steps"] >= figures["steps"]
    else:
        # Resending: one new step per Classify call, and more steps on the wire than that.
        assert figures["mode"] == "resend"
        assert figures["steps"] == figures["messages"] and figures["sent_steps"] > figures["steps"]


def test_every_served_scenario_is_positive_and_consistent(results: tuple[dict, Path]) -> None:
    data, _ = results
    config = data["config"]
    assert len(data["seqserve"]) == 2 * len(config["stream_counts"])
    assert len(data["echo"]) == 4
    assert len(data["naive"]) == len(data["naive_grid"]["naive"]) == len(data["seqserve"])
    for figures in [*data["echo"], *data["naive"], *data["seqserve"], *data["workers"]["rows"]]:
        _check_served(figures)
    for figures in data["seqserve"]:
        assert 1 <= figures["mean_batch_size"] <= figures["streams"]


def test_ratio_rounds_are_built_from_their_own_scenarios(results: tuple[dict, Path]) -> None:
    data, _ = results
    config = data["config"]
    assert len(data["rounds"]) == config["ratio_rounds"]
    for round_ in data["rounds"]:
        for name in ("echo_small", "seqserve_small", "resend", "naive_large", "seqserve_large"):
            _check_served(round_[name])
            assert round_[name]["streams"] == config["ratio_streams"]
        ratios = round_["ratios"]
        assert ratios["service_vs_ort_chunk32_64"] == pytest.approx(
            round_["seqserve_large"]["steps_per_s"] / round_["ort_large"]["steps_per_s"]
        )
        assert ratios["p99_ms_chunk1_64"] == round_["seqserve_small"]["p99_ms"]
    if config["ratio_rounds"] == 1:
        assert {k: v for k, v in data["ratios"].items() if k in data["rounds"][0]["ratios"]} == pytest.approx(
            data["rounds"][0]["ratios"]
        )


def test_idle_streams_all_open_then_all_freed(results: tuple[dict, Path]) -> None:
    data, _ = results
    streams, chunk = data["config"]["idle_streams"], data["config"]["small_chunk"]
    assert [figures["server"] for figures in data["idle"]] == ["echo", "seqserve"]
    for idle in data["idle"]:
        assert idle["streams"] == streams
        assert idle["server_steps"] == idle["sent_steps"] == streams * chunk
        assert min(idle["rss_mb_before"], idle["rss_mb_open"], idle["rss_mb_after_close"]) > 0
    seqserve = data["idle"][1]
    assert seqserve["streams_active_open"] == streams
    assert seqserve["streams_active_after_close"] == 0
    assert data["ratios"]["rss_mb_10k_idle_streams"] == seqserve["rss_mb_open"]


def test_workers_rows_serve_every_stream(results: tuple[dict, Path]) -> None:
    data, _ = results
    rows = data["workers"]["rows"]
    counts = data["config"]["worker_counts"]
    assert {row["server"] for row in rows} == {f"seqserve --workers {n}" for n in counts}
    assert len(rows) == 2 * len(data["config"]["worker_counts"])


def test_triton_peer_runs_or_says_why_not(results: tuple[dict, Path]) -> None:
    triton = results[0]["triton"]
    if triton["skipped"]:
        assert "install" in triton["skipped"]
        return
    labels = triton["labels"]
    assert labels["triton_label"] == labels["seqserve_label"] == labels["offline_label"]
    assert max(labels["triton_max_abs_logit_diff"], labels["seqserve_max_abs_logit_diff"]) < 1e-4
    assert {row["server"] for row in triton["rows"]} == {"triton", "seqserve"}
    assert all(row["msgs_per_s"] > 0 and row["p50_ms"] <= row["p99_ms"] for row in triton["rows"])


def test_checkpoint_rows_cover_every_interval_and_measure_the_token(results: tuple[dict, Path]) -> None:
    checkpoints = results[0]["checkpoints"]
    config = results[0]["config"]
    rows = {(row["chunk"], row["checkpoint_every_chunks"]) for row in checkpoints["rows"]}
    assert rows == {
        (c, every) for c in (config["small_chunk"], config["large_chunk"]) for every in (0, 16, 1)
    }
    assert all(row["steps_per_s"] > 0 and row["p50_ms"] <= row["p99_ms"] for row in checkpoints["rows"])
    resume = checkpoints["resume"]
    # bench-gru: GRU 2 x 128, many-to-one, 9 classes (docs/checkpoint_token.md's size formula).
    # Format 2: header, name, sha256, the one state row as a typed array (dtype, rank, 2 dims, values),
    # the running answer, the signature.
    assert resume["token_bytes"] == 61 + len("bench-gru") + 32 + (2 + 2 * 4 + 2 * 128 * 4) + 4 + 8 * 9 + 32
    assert (
        0 < resume["plain_open_ms_p50"] and 0 < resume["resume_open_ms_p50"] <= resume["resume_open_ms_p99"]
    )
    assert "checkpoint16_vs_none_chunk1" in results[0]["targets"]


def test_kserve_v2_rows_or_the_reason(results: tuple[dict, Path]) -> None:
    section = results[0]["kserve_v2"]
    if not section["rows"]:
        assert "perf_analyzer" in section["skipped"]
        return
    config = results[0]["config"]
    cells = {(row["v2"]["chunk"], row["v2"]["streams"]) for row in section["rows"]}
    assert cells == {
        (c, n) for c in (config["small_chunk"], config["large_chunk"]) for n in config["v2_sequences"]
    }
    for row in section["rows"]:
        v2, v1 = row["v2"], row["v1"]
        assert v2["server"] == "seqserve" and v2["msgs_per_s"] > 0 and v1["steps_per_s"] > 0
        assert v2["steps_per_s"] == pytest.approx(v2["msgs_per_s"] * v2["chunk"])
        assert v2["messages"] > 0 and v2["server_cpu_us_per_step"] > 0  # from the server's own counters
        assert (v1["chunk"], v1["streams"]) == (v2["chunk"], v2["streams"])
        assert v2["client_cpu_us_per_msg"] > 0  # perf_analyzer's own CPU, read after it exits
        assert row["v2_vs_v1_steps_per_s"] in row["round_ratios"]
    assert section["sequences_per_connection"] >= 1


def test_generation_rows_cover_every_variant_and_count_with_the_ratio(results: tuple[dict, Path]) -> None:
    data = results[0]
    config, section = data["config"], data["generation"]
    top = max(config["generation_counts"])
    rows = {(row["variant"], row["generations"], row["round"]) for row in section["rows"]}
    assert rows >= {
        (variant, count, 1)
        for variant in ("generate", "client_loop", "stateless")
        for count in config["generation_counts"]
    }
    for row in section["rows"]:
        assert row["chars_per_s"] > 0 and row["p50_ms_per_char"] <= row["p99_ms_per_char"]
        assert row["tokens_each"] == config["generation_tokens"] and row["tokens_per_message"] >= 1
    assert data["ratios"][f"generate_vs_client_loop_{top}"] > 0
    assert data["ratios"][f"generate_vs_stateless_{top}"] > 0


def test_declared_rows_cover_both_servers_and_every_count(results: tuple[dict, Path]) -> None:
    data = results[0]
    counts = data["config"]["declared_streams"]
    rows = data["declared"]["rows"]
    assert {(row["server"], row["streams"]) for row in rows} == {
        (server, count) for server in ("seqserve", "naive") for count in counts
    }
    for row in rows:
        assert row["frames_per_s"] > 0 and row["p50_ms"] <= row["p99_ms"]
        assert row["server_cpu_us_per_frame"] > 0
    assert all(data["ratios"][f"declared_vs_naive_{count}"] > 0 for count in counts)


def test_translate_rows_cover_every_way_and_count(results: tuple[dict, Path]) -> None:
    data = results[0]
    counts = data["config"]["translate_clients"]
    rows = data["translate"]["rows"]
    ways = ("translate", "client loop", "unbatched")
    assert {(row["way"], row["clients"]) for row in rows} == {
        (way, count) for way in ways for count in counts
    }
    for row in rows:
        assert row["words_per_s"] > 0 and row["p50_ms"] <= row["p99_ms"] and row["server_cpu_ms_per_word"] > 0
    assert all(data["ratios"][f"translate_vs_client_loop_{count}"] > 0 for count in counts)


def test_forecast_recalibration_replays_every_window(results: tuple[dict, Path]) -> None:
    data = results[0]
    section = data["forecast_recalibration"]
    assert [row["window"] for row in section["rows"]] == [48 * days for days in range(1, 8)]
    chosen = min(section["rows"], key=lambda row: abs(row["choosing_coverage_80"] - 0.8))
    assert section["chosen_window"] == chosen["window"]
    assert data["ratios"]["forecast_taylor_coverage_recalibrated"] == round(chosen["test_coverage_80"], 4)
    for row in section["rows"]:
        assert 0 < row["choosing_coverage_80"] <= 1 and 0 < row["test_coverage_80"] <= 1
        assert row["test_weighted_quantile_loss"] > 0 and len(row["test_coverage_80_by_quarter"]) == 4
        assert min(row["test_coverage_80_by_quarter"]) <= row["test_coverage_80"]
    assert 0 < section["fixed"]["coverage_80"] <= 1 and section["fixed"]["mape"] > 0
