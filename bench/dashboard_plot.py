"""Draw the dashboard's panels, as queried from Prometheus, into one PNG laid out like the Grafana board."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from bench.grafana_dashboard import Panel

# Grafana unit -> (scale, axis label) for the picture.
_UNITS = {
    "s": (1e3, "ms"),
    "bytes": (1 / 1024, "KiB"),
    "reqps": (1.0, "requests / s"),
    "short": (1.0, ""),
}
_COLUMNS = 2


@dataclass
class SeriesData:
    name: str
    labels: dict[str, str]
    times: list[float]  # seconds since the run started
    values: list[float]


@dataclass
class PanelData:
    panel: Panel
    series: list[SeriesData]


def _table(axes, data: PanelData) -> None:
    """An instant query as Grafana's table panel shows it: one row per series, its labels as columns."""
    axes.axis("off")
    axes.set_title(data.panel.title, loc="left", fontsize=11)
    if not data.series:
        axes.text(0.5, 0.5, "no data", ha="center", va="center")
        return
    columns = sorted({key for series in data.series for key in series.labels})
    rows = [[series.labels.get(column, "") for column in columns] for series in data.series]
    table = axes.table(cellText=rows, colLabels=columns, loc="center", cellLoc="left")
    table.auto_set_font_size(False)
    table.set_fontsize(9)
    table.scale(1, 1.4)


def _timeseries(axes, data: PanelData, phases: list[tuple[str, float, float]], start: float) -> None:
    scale, unit = _UNITS.get(data.panel.unit, (1.0, data.panel.unit))
    for index, (_, began, ended) in enumerate(phases):
        if index % 2:
            axes.axvspan(began - start, ended - start, color="grey", alpha=0.08, linewidth=0)
    for series in sorted(data.series, key=lambda s: s.name):
        if not any(series.values):
            continue  # a reason or code that never happened: Grafana draws it flat at 0, here it is left out
        values = [value * scale if math.isfinite(value) else math.nan for value in series.values]
        axes.plot(series.times, values, linewidth=1.2, label=series.name)
    axes.set_title(data.panel.title, loc="left", fontsize=11)
    axes.set_ylabel(unit)
    axes.set_ylim(bottom=0)
    axes.grid(True, alpha=0.3)
    if data.series:
        axes.legend(fontsize=7, loc="upper left", ncol=2)
    else:
        axes.text(0.5, 0.5, "no data", ha="center", va="center", transform=axes.transAxes)


def _number_phases(axes, phases: list[tuple[str, float, float]], start: float) -> None:
    """Phase numbers above the top charts; the title says what each number ran."""
    for number, (_, began, ended) in enumerate(phases, 1):
        axes.annotate(
            f"phase {number}", xy=((began + ended) / 2 - start, 1.0), xycoords=("data", "axes fraction"),
            xytext=(0, 14), textcoords="offset points", ha="center", fontsize=8, color="dimgrey",
        )  # fmt: skip


def plot_dashboard(
    panels: list[PanelData], phases: list[tuple[str, float, float]], start: float, path: Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tables = [data for data in panels if data.panel.kind == "table"]
    charts = [data for data in panels if data.panel.kind != "table"]
    chart_rows = math.ceil(len(charts) / _COLUMNS)
    figure = plt.figure(figsize=(14, 1.6 * len(tables) + 3.2 * chart_rows + 0.8))
    grid = figure.add_gridspec(
        len(tables) + chart_rows, _COLUMNS, height_ratios=[1] * len(tables) + [2] * chart_rows
    )
    for row, data in enumerate(tables):
        _table(figure.add_subplot(grid[row, :]), data)
    shared = None
    for index, data in enumerate(charts):
        axes = figure.add_subplot(grid[len(tables) + index // _COLUMNS, index % _COLUMNS], sharex=shared)
        shared = shared or axes
        _timeseries(axes, data, phases, start)
        if index >= len(charts) - _COLUMNS:
            axes.set_xlabel("seconds since the run started")
        if index < _COLUMNS:
            _number_phases(axes, phases, start)
    figure.suptitle(
        "seqserve dashboard (docker/grafana/dashboards/seqserve.json): each panel's PromQL over a real run"
        " (series that stayed 0 are left out)\n"
        + "; ".join(f"phase {number}: {name}" for number, (name, _, _) in enumerate(phases, 1)),
        fontsize=11,
    )
    figure.tight_layout(rect=(0, 0, 1, 0.975))
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90)
    plt.close(figure)
