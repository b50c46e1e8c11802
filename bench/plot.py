"""The PNG: seqserve's throughput and p99 chunk latency against the number of concurrent streams."""

from __future__ import annotations

from pathlib import Path

from bench.report import TARGETS, BenchResults


def plot_streams(results: BenchResults, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (throughput, latency) = plt.subplots(1, 2, figsize=(11, 4.2))
    for chunk, marker in zip(results.config.chunks, ("o", "s"), strict=True):
        loads = sorted(
            (f.load for f in results.seqserve if f.load.chunk == chunk), key=lambda load: load.streams
        )
        streams = [load.streams for load in loads]
        throughput.plot(
            streams, [load.steps_per_s for load in loads], marker=marker, label=f"seqserve chunk {chunk}"
        )
        latency.plot(streams, [load.p99_ms for load in loads], marker=marker, label=f"seqserve chunk {chunk}")
    for baseline, marker in ((results.echo, "x"), (results.naive, "+")):
        for load in (f.load for f in baseline if f.load.chunk == results.config.large_chunk):
            throughput.scatter(load.streams, load.steps_per_s, marker=marker, color="grey")
    throughput.scatter(
        [], [], marker="x", color="grey", label=f"echo ceiling, chunk {results.config.large_chunk}"
    )
    throughput.scatter(
        [], [], marker="+", color="grey", label=f"naive server, chunk {results.config.large_chunk}"
    )
    latency.axhline(
        TARGETS["p99_ms_chunk1_64"][1], color="red", linestyle="--", linewidth=1, label="p99 target"
    )
    for axes, ylabel in ((throughput, "time steps / s"), (latency, "p99 chunk latency (ms)")):
        axes.set_xscale("log", base=2)
        axes.set_yscale("log")
        axes.set_xlabel("concurrent streams")
        axes.set_ylabel(ylabel)
        axes.grid(True, which="both", alpha=0.3)
        axes.legend(fontsize=8)
    meta = results.meta
    figure.suptitle(f"seqserve bench: {meta['model']} on {meta['device']}, {meta['cpu_count']} CPU cores")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
