"""The Grafana dashboard (docker/grafana/) lints: its PromQL parses with promtool, names only families the
server exports, and uses the datasource the compose stack provisions. The PromQL that docs/operations.md
offers operators is held to the same two checks."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from bench.grafana_dashboard import DASHBOARD, expand, load_dashboard, metric_names, panels, series_name
from seqserve.service.engine.metrics import ServiceMetrics

from .image_entrypoint import DOCKER_DIR

GRAFANA_DIR = DOCKER_DIR / "grafana"
OPERATIONS_DOC = Path(__file__).resolve().parents[2] / "docs" / "operations.md"
# What the dashboard must show (streams, throughput, latency, batching, evictions, errors, state, models),
# each found in some panel's PromQL.
REQUIRED_FAMILIES = {
    "seqserve_streams_active",
    "seqserve_steps_total",
    "seqserve_chunk_latency_seconds_bucket",
    "seqserve_batch_size_sum",
    "seqserve_queue_seconds_sum",
    "seqserve_inference_seconds_sum",
    "seqserve_stream_evictions_total",
    "seqserve_requests_total",
    "seqserve_state_bytes",
    "seqserve_model_info",
}
needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool not installed: `apt-get install prometheus` (.ci/run does it where it can)",
)


def exported_sample_names() -> set[str]:
    """Every sample name the server's registry exposes once a model is loaded and an RPC finished."""
    metrics = ServiceMetrics()
    metrics.for_model("m", 1, cell="gru", task="many_to_one", precision="fp32", provider="cpu")
    metrics.request_done("Stream", "OK")
    return {sample.name for family in metrics.registry.collect() for sample in family.samples}


def all_exprs() -> list[tuple[str, str]]:
    """(rule name, PromQL as Grafana sends it) for every target of every panel."""
    found = []
    for index, panel in enumerate(panels(load_dashboard())):
        for query in panel.queries:
            found.append((f"dashboard:panel{index}:{query.ref}", expand(query.expr)))
    return found


def documented_exprs() -> list[tuple[str, str]]:
    """(rule name, PromQL) for every query in docs/operations.md's promql blocks: one per line, an
    indented line continuing the one before, `#` lines the comments between them."""
    found: list[str] = []
    for block in re.findall(r"```promql\n(.*?)```", OPERATIONS_DOC.read_text(), re.S):
        for line in block.splitlines():
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            if line[0].isspace() and found:
                found[-1] += " " + line.strip()
            else:
                found.append(line.strip())
    return [(f"docs:operations:{index}", expr) for index, expr in enumerate(found)]


def promtool_check(exprs: list[tuple[str, str]], tmp_path: Path) -> subprocess.CompletedProcess:
    """`promtool check rules` on the expressions as recording rules: promtool's own PromQL parser, offline."""
    rules = {"groups": [{"name": "dashboard", "rules": [{"record": n, "expr": e} for n, e in exprs]}]}
    rules_file = tmp_path / "dashboard-rules.yml"
    rules_file.write_text(json.dumps(rules))  # JSON is YAML
    return subprocess.run(["promtool", "check", "rules", str(rules_file)], capture_output=True, text=True)


def test_dashboard_is_json_with_unique_panels() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "seqserve"
    found = panels(dashboard)
    assert len({panel.title for panel in found}) == len(found) >= 9
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(set(ids)) == len(ids)
    for panel in found:
        assert all(query.expr.strip() for query in panel.queries), panel.title
        assert len({query.ref for query in panel.queries}) == len(panel.queries), panel.title


@needs_promtool
def test_every_panel_query_parses_with_promtool(tmp_path: Path) -> None:
    exprs = all_exprs()
    check = promtool_check(exprs, tmp_path)
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in check.stdout


@needs_promtool
def test_every_documented_query_parses_with_promtool(tmp_path: Path) -> None:
    exprs = documented_exprs()
    assert len(exprs) >= 10
    check = promtool_check(exprs, tmp_path)
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in check.stdout


def test_documented_queries_name_only_exported_families() -> None:
    named = set().union(*(metric_names(expr) for _, expr in documented_exprs()))
    assert named <= exported_sample_names(), f"not exported: {sorted(named - exported_sample_names())}"


@needs_promtool
def test_promtool_check_catches_a_broken_query(tmp_path: Path) -> None:
    broken = [("dashboard:broken", "sum by (model (rate(seqserve_steps_total[1m]))")]
    assert promtool_check(broken, tmp_path).returncode != 0


def test_panels_name_only_exported_families() -> None:
    exported = exported_sample_names()
    named = set().union(*(metric_names(expr) for _, expr in all_exprs()))
    assert named <= exported, f"not exported by ServiceMetrics: {sorted(named - exported)}"
    assert REQUIRED_FAMILIES <= named, f"no panel shows {sorted(REQUIRED_FAMILIES - named)}"
    for variable in load_dashboard()["templating"]["list"]:
        selected = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", variable["definition"])
        assert selected and selected[1] in exported, variable["definition"]


def test_metric_names_sees_through_functions_labels_and_strings() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (model, le) (rate(seqserve_nope_bucket{model=~"a|b"}[1m])))'
        " / on (model) group_left sum without (version) (up offset 5m) > bool 1e3"
    )
    assert metric_names(expr) == {"seqserve_nope_bucket", "up"}
    assert not {"seqserve_nope_bucket"} <= exported_sample_names()


def test_grafana_variables_expand_or_fail_loudly() -> None:
    assert expand('rate(x{model=~"$model"}[$__rate_interval])', "15s") == 'rate(x{model=~".*"}[15s])'
    assert expand("${model}", model="jv-gru") == "jv-gru"
    with pytest.raises(KeyError, match=r"\$tenant"):
        expand('x{tenant="$tenant"}')
    assert series_name("p99 {{model}}", {"model": "jv-gru", "le": "1"}) == "p99 jv-gru"


def test_compose_provisions_the_datasource_and_dashboard_the_panels_use() -> None:
    datasources = yaml.safe_load(
        (GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yaml").read_text()
    )
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    dashboard = load_dashboard()
    used = {p["datasource"]["uid"] for p in dashboard["panels"] if "datasource" in p}
    used |= {v["datasource"]["uid"] for v in dashboard["templating"]["list"]}
    assert used == {source["uid"]}

    compose = yaml.safe_load((DOCKER_DIR / "compose.yaml").read_text())
    grafana = compose["services"]["grafana"]
    assert grafana["image"].startswith("grafana/grafana:")
    provider = yaml.safe_load((GRAFANA_DIR / "provisioning" / "dashboards" / "seqserve.yaml").read_text())
    dashboards_path = provider["providers"][0]["options"]["path"]
    mounts = {volume.split(":")[1]: volume.split(":")[0] for volume in grafana["volumes"]}
    assert mounts["/etc/grafana/provisioning"] == "./grafana/provisioning"
    assert mounts[dashboards_path] == "./grafana/dashboards"
    assert (DOCKER_DIR / mounts[dashboards_path] / DASHBOARD.name).is_file()
