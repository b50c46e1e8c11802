"""The PNG: seqserve's throughput and p99 chunk latency against the number of concurrent streams.

The echo ceiling and the naive server are drawn as points (they run at 1 stream and at the ratio
concurrency), in the colour of the chunk size they ran with.
"""

from __future__ import annotations

from pathlib import Path

from bench.report import TARGETS, BenchResults

_BASELINE_MARKERS = {"echo": ("x", "echo ceiling"), "naive": ("+", "naive server")}


def plot_streams(results: BenchResults, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (throughput, latency) = plt.subplots(1, 2, figsize=(12, 4.5))
    for chunk, colour in zip(results.config.chunks, ("tab:blue", "tab:orange"), strict=True):
        loads = sorted(
            (f.load for f in results.seqserve if f.load.chunk == chunk), key=lambda load: load.streams
        )
        streams = [load.streams for load in loads]
        label = f"seqserve, chunk {chunk}"
        throughput.plot(streams, [load.steps_per_s for load in loads], "o-", color=colour, label=label)
        latency.plot(streams, [load.p99_ms for load in loads], "o-", color=colour, label=label)
        for figures in (*results.echo, *results.naive):
            if figures.load.chunk == chunk:
                marker, name = _BASELINE_MARKERS[figures.server]
                for axes, value in ((throughput, figures.load.steps_per_s), (latency, figures.load.p99_ms)):
                    axes.scatter(figures.load.streams, value, marker=marker, s=60, color=colour)
    for marker, name in _BASELINE_MARKERS.values():
        throughput.scatter([], [], marker=marker, color="grey", label=name)
    latency.axhline(
        TARGETS["p99_ms_chunk1_64"][1], color="red", linestyle="--", linewidth=1, label="p99 target"
    )
    for axes, ylabel in ((throughput, "time steps / s"), (latency, "p99 chunk latency (ms)")):
        axes.set_xscale("log", base=2)
        axes.set_xticks(results.config.stream_counts, [str(n) for n in results.config.stream_counts])
        axes.set_yscale("log")
        axes.set_xlabel("concurrent streams")
        axes.set_ylabel(ylabel)
        axes.grid(True, which="both", alpha=0.3)
        axes.legend(fontsize=8)
    meta = results.meta
    figure.suptitle(
        f"seqserve bench: {meta['model']} on {meta['device']}, {meta['cpu_count']} CPU cores "
        f"shared with {meta['client_processes']} load-generator processes"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
