"""The Grafana dashboard of docker/grafana/ read as data: its panels, their PromQL, the metrics they name.

Grafana fills in template variables before it sends a query; outside Grafana (promtool, a plain
Prometheus) `expand` does the same with the values the dashboard means by default: every model, and a
rate window a few scrapes long.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

DASHBOARD = Path(__file__).resolve().parents[1] / "docker" / "grafana" / "dashboards" / "seqserve.json"

# The dashboard's `model` variable set to All (its allValue), and Grafana's own interval variables.
DEFAULT_VARIABLES = {"model": ".*"}
_VARIABLE = re.compile(r"\$\{(\w+)\}|\$(\w+)")
_LEGEND_LABEL = re.compile(r"\{\{\s*(\w+)\s*\}\}")

# PromQL words that look like identifiers but are not metric names.
_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
    "offset", "inf", "nan", "atan2",
}  # fmt: skip
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_MATCHERS = re.compile(r"\{[^}]*\}")
_DURATION = re.compile(r"\[[^\]]*\]")
_IDENTIFIER = re.compile(r"(?<![\w.])([A-Za-z_:][\w:]*)(\s*\()?")


@dataclass(frozen=True)
class Query:
    """One target of a panel: its PromQL as written in the JSON and how Grafana names its series."""

    ref: str
    expr: str
    legend: str
    instant: bool


@dataclass(frozen=True)
class Panel:
    title: str
    kind: str  # Grafana's panel type: timeseries, table
    unit: str
    queries: tuple[Query, ...]


def load_dashboard(path: Path = DASHBOARD) -> dict:
    return json.loads(path.read_text())


def panels(dashboard: dict) -> list[Panel]:
    """Every panel that queries Prometheus, rows flattened, in the dashboard's order."""
    found = []
    for panel in dashboard["panels"]:
        for inner in [panel, *panel.get("panels", [])]:
            if not inner.get("targets"):
                continue
            queries = tuple(
                Query(t["refId"], t["expr"], t.get("legendFormat", ""), bool(t.get("instant", False)))
                for t in inner["targets"]
            )
            unit = inner.get("fieldConfig", {}).get("defaults", {}).get("unit", "")
            found.append(Panel(inner["title"], inner["type"], unit, queries))
    return found


def expand(expr: str, rate_interval: str = "1m", **variables: str) -> str:
    """The PromQL Grafana would send: `$model` as All, `$__rate_interval` as `rate_interval`."""
    values = {**DEFAULT_VARIABLES, "__rate_interval": rate_interval, "__interval": rate_interval, **variables}

    def value(match: re.Match) -> str:
        name = match[1] or match[2]
        if name not in values:
            raise KeyError(f"dashboard variable ${name} in {expr!r} has no value; known: {sorted(values)}")
        return values[name]

    return _VARIABLE.sub(value, expr)


def metric_names(expr: str) -> set[str]:
    """Sample names a PromQL expression selects: identifiers that are not functions, keywords or labels."""
    text = _STRING.sub('""', expr)
    text = _LABEL_LIST.sub(" ", text)
    text = _MATCHERS.sub(" ", text)
    text = _DURATION.sub(" ", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        name, is_call = match[1], match[2]
        if not is_call and name.lower() not in _KEYWORDS:
            names.add(name)
    return names


def series_name(legend: str, labels: dict[str, str]) -> str:
    """Grafana's legendFormat: `{{model}}` becomes that series' label value."""
    return _LEGEND_LABEL.sub(lambda match: labels.get(match[1], ""), legend).strip() or str(labels)
