"""`make soak`: a long hostile run that proves nothing leaks, then an overload run.

Soak (`--duration-s`, 600 by default): `--streams` clients (64) each open a stream, send 1-12 chunks of
1-32 steps, end it, and start the next, without pause. Each message is a bad one with probability 5 %
(garbage bytes, a wrong feature count or a NaN: the stream must end INVALID_ARGUMENT), 5 % of streams are
cancelled by the client half way, and one stream in 20 is followed by a Classify. Every 10 s the server's
RSS, its open streams and the p99 chunk latency of the window are sampled. Reported: the RSS slope after
the first minute (least squares, MB/min; target < 1), streams left open once all clients are done (must
be 0), errors on good streams (must be 0), p99 over time.

Overload (`--overload-s`, 60): `--overload-streams` (2,000) streams, opened at once, each send 8-step chunks
as fast as the server answers (one in flight per stream) on `--overload-clients` client processes, one
connection per 250 streams. Each stream is served, refused at its open (RESOURCE_EXHAUSTED: how fast, and
whether with a retry hint), or never answered inside the window (then cancelled). Reported: those counts,
chunks and steps per second, p50/p99, the wait for an open's answer, RSS peak, errors on good streams, the
server's own count of outcomes, and that every stream is freed after. `--duration-s 0` runs the overload
alone; `--serve-arg` passes flags to the server (a bound to measure).

The server is a `seqserve serve` subprocess over a seeded GRU (bench/bench_model.py); RSS is read from
/proc. Writes `<out>/soak.json` and `<out>/soak.png`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import multiprocessing
import random
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc
import numpy as np

from bench.bench_model import FEATURES, write_bench_model
from bench.process_costs import rss_mb
from seqserve.service.server.launch import ServerProcess, running_server
from seqserve.v1 import seqserve_pb2 as pb

log = logging.getLogger(__name__)

MODEL = "soak-gru"
STREAM = "/seqserve.v1.InferenceService/Stream"
CLASSIFY = "/seqserve.v1.InferenceService/Classify"
SAMPLE_S = 10.0
BAD_MESSAGE_P = 0.05
CANCEL_P = 0.05
CLASSIFY_EVERY = 20
OVERLOAD_CHUNK = 8
STREAMS_PER_CHANNEL = 250  # one HTTP/2 connection per this many overload streams
# Channels to one target with the same options share one connection (grpc's global subchannel pool):
# without this option every overload stream of a process rode one connection whatever the channel count.
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]
END = pb.StreamRequest(end=pb.StreamEnd()).SerializeToString()
# The trailer in which a server says how long to wait before retrying (gRPC's retry design, A6).
PUSHBACK = "grpc-retry-pushback-ms"


@dataclass
class Tally:
    good_streams: int = 0
    good_errors: int = 0
    bad_streams: int = 0
    bad_unexpected: int = 0  # a bad message answered with anything but INVALID_ARGUMENT
    cancelled: int = 0
    classify_ok: int = 0
    classify_errors: int = 0
    chunks: int = 0
    steps: int = 0
    errors_seen: list[str] = field(default_factory=list)
    latencies: list[tuple[float, float]] = field(default_factory=list)  # (time sent, seconds)

    def error(self, what: str) -> None:
        if len(self.errors_seen) < 20:
            self.errors_seen.append(what)


def _chunk(rng: random.Random, steps: int) -> bytes:
    x = np.random.default_rng(rng.getrandbits(32)).standard_normal((steps, FEATURES)).astype("<f4")
    return pb.StreamRequest(chunk=pb.StreamChunk(steps=steps, values=x.tobytes())).SerializeToString()


def _bad(rng: random.Random) -> bytes:
    kind = rng.randrange(3)
    if kind == 0:
        return b"\x0f" + rng.randbytes(rng.randrange(1, 40))  # field 1, wire type 7: never parses
    steps = rng.randint(1, 8)
    if kind == 1:  # one feature too many
        values = np.zeros((steps, FEATURES + 1), "<f4").tobytes()
    else:
        x = np.zeros((steps, FEATURES), "<f4")
        x[rng.randrange(steps), rng.randrange(FEATURES)] = np.nan
        values = x.tobytes()
    return pb.StreamRequest(chunk=pb.StreamChunk(steps=steps, values=values)).SerializeToString()


async def _open(call: grpc.aio.StreamStreamCall, model: str) -> None:
    await call.write(pb.StreamRequest(open=pb.StreamOpen(model=model)).SerializeToString())
    await call.read()


async def _half_close(call: grpc.aio.StreamStreamCall, send_end: bool) -> None:
    """End the stream (after a bad message the server has already ended it) and read what is left."""
    if send_end:
        await call.write(END)
    await call.done_writing()
    while await call.read() is not grpc.aio.EOF:
        pass


async def _stream(
    channel: grpc.aio.Channel, model: str, rng: random.Random, tally: Tally, hostile: bool
) -> None:
    call = channel.stream_stream(STREAM)()
    chunks = rng.randint(1, 12)
    cancel_at = rng.randrange(chunks) if hostile and rng.random() < CANCEL_P else None
    sent_bad = False
    try:
        await _open(call, model)
        for index in range(chunks):
            if index == cancel_at:
                call.cancel()
                tally.cancelled += 1
                return
            if hostile and rng.random() < BAD_MESSAGE_P:
                sent_bad = True
                await call.write(_bad(rng))
                break
            steps = rng.randint(1, 32)
            started = time.perf_counter()
            await call.write(_chunk(rng, steps))
            await call.read()
            tally.latencies.append((started, time.perf_counter() - started))
            tally.chunks += 1
            tally.steps += steps
        await _half_close(call, send_end=not sent_bad)
    except grpc.aio.AioRpcError:
        pass
    code = await call.code()
    if sent_bad:
        tally.bad_streams += 1
        if code != grpc.StatusCode.INVALID_ARGUMENT:
            tally.bad_unexpected += 1
            tally.error(f"bad message answered {code.name}: {await call.details()}")
        return
    tally.good_streams += 1
    if code != grpc.StatusCode.OK:
        tally.good_errors += 1
        tally.error(f"good stream ended {code.name}: {await call.details()}")


async def _classify(channel: grpc.aio.Channel, model: str, rng: random.Random, tally: Tally) -> None:
    x = np.random.default_rng(rng.getrandbits(32)).standard_normal((rng.randint(1, 32), FEATURES))
    request = pb.ClassifyRequest(
        model=model, sequences=[pb.Sequence(steps=len(x), values=x.astype("<f4").tobytes())]
    )
    try:
        await channel.unary_unary(CLASSIFY)(request.SerializeToString(), timeout=30)
        tally.classify_ok += 1
    except grpc.aio.AioRpcError as error:
        tally.classify_errors += 1
        tally.error(f"Classify failed {error.code().name}: {error.details()}")


async def _soak_client(target: str, model: str, seed: int, until: float, tally: Tally) -> None:
    rng = random.Random(seed)
    async with grpc.aio.insecure_channel(target) as channel:
        count = 0
        while time.perf_counter() < until:
            await _stream(channel, model, rng, tally, hostile=True)
            count += 1
            if count % CLASSIFY_EVERY == 0:
                await _classify(channel, model, rng, tally)


def _scrape(server: ServerProcess) -> dict[str, float]:
    """Sums of the families that say what the server holds."""
    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
        text = response.read().decode()
    sums: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or not line:
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in ("seqserve_streams_active", "seqserve_state_bytes", "seqserve_accept_delay_seconds"):
            sums[name] = sums.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
        elif name == "seqserve_requests_total":  # the server's own count, by rpc and code
            sums[line.rsplit(" ", 1)[0]] = float(line.rsplit(" ", 1)[1])
    return sums


def _p(latencies: list[float], q: float) -> float:
    return float(np.percentile(latencies, q) * 1000) if latencies else float("nan")


async def _sampler(
    server: ServerProcess, tally: Tally, start: float, until: float, every_s: float
) -> list[dict]:
    samples = []
    seen = 0
    while True:
        now = time.perf_counter()
        window = [seconds for _, seconds in tally.latencies[seen:]]
        seen = len(tally.latencies)
        held = await asyncio.to_thread(_scrape, server)
        samples.append({
            "t_s": round(now - start, 1), "rss_mb": round(rss_mb(server.pid), 2),
            "open_streams": held.get("seqserve_streams_active", 0.0),
            "p99_ms": round(_p(window, 99), 3), "chunks": len(window),
        })  # fmt: skip
        if now >= until:
            return samples
        await asyncio.sleep(min(every_s, max(until - now, 0.0)))


async def _settled(server: ServerProcess) -> dict[str, float]:
    """What the server still holds once it has seen every client's end (cancels arrive a moment later)."""
    for _ in range(100):
        held = await asyncio.to_thread(_scrape, server)
        if not held.get("seqserve_streams_active"):
            break
        await asyncio.sleep(0.1)
    return held


def _slope_mb_per_min(samples: list[dict], after_s: float) -> float:
    points = [(s["t_s"], s["rss_mb"]) for s in samples if s["t_s"] >= after_s]
    if len(points) < 2:
        return float("nan")
    t, rss = np.array(points).T
    return float(np.polyfit(t / 60.0, rss, 1)[0])


async def soak(server: ServerProcess, model: str, duration_s: float, streams: int, seed: int) -> dict:
    tally = Tally()
    start = time.perf_counter()
    until = start + duration_s
    sampler = asyncio.create_task(_sampler(server, tally, start, until, min(SAMPLE_S, duration_s / 3)))
    await asyncio.gather(
        *(_soak_client(server.target, model, seed + i, until, tally) for i in range(streams))
    )
    samples = await sampler
    held = await _settled(server)
    latencies = [seconds for _, seconds in tally.latencies]
    result = {k: v for k, v in asdict(tally).items() if k != "latencies"}
    result.update(
        duration_s=round(time.perf_counter() - start, 1),
        streams=streams,
        rss_slope_mb_per_min_after_first_minute=round(
            _slope_mb_per_min(samples, min(60.0, duration_s / 2)), 3
        ),
        streams_leaked=held.get("seqserve_streams_active", 0.0),
        state_bytes_left=held.get("seqserve_state_bytes", 0.0),
        p50_ms=round(_p(latencies, 50), 3),
        p99_ms=round(_p(latencies, 99), 3),
        samples=samples,
    )
    return result


async def _overload_stream(channel: grpc.aio.Channel, model: str, until: float, seed: int, out: dict) -> None:
    """One overload stream: opened, then chunks as fast as answered until the window ends. An open the
    server refuses counts as refused (with the time it took and its retry hint); one with no answer when
    the window ends is cancelled and counts as never answered."""
    rng = random.Random(seed)
    chunk = _chunk(rng, OVERLOAD_CHUNK)
    call = channel.stream_stream(STREAM)()
    started = time.perf_counter()
    try:
        await asyncio.wait_for(_open(call, model), max(until - started, 0.001))
    except TimeoutError:
        call.cancel()
        out["never_answered"] += 1
        return
    except grpc.aio.AioRpcError:
        await _refused(call, time.perf_counter() - started, out)
        return
    out["open_waits"].append(time.perf_counter() - started)  # mostly waiting to be accepted
    stage = "sending"
    chunks = 0
    try:
        while time.perf_counter() < until:
            sent = time.perf_counter()
            await call.write(chunk)
            await call.read()
            out["latencies"].append(time.perf_counter() - sent)
            chunks += 1
        stage = "ending"
        await _half_close(call, send_end=True)
    except grpc.aio.AioRpcError:
        pass
    code = await call.code()
    out["without_a_chunk"] += chunks == 0
    if code != grpc.StatusCode.OK:
        out["errors"] += 1
        if len(out["errors_seen"]) < 10:
            out["errors_seen"].append(f"{code.name} while {stage}: {await call.details()}")


async def _refused(call: grpc.aio.StreamStreamCall, seconds: float, out: dict) -> None:
    """An open that ended before it was answered: a refusal (RESOURCE_EXHAUSTED) or an error."""
    code = await call.code()
    if code != grpc.StatusCode.RESOURCE_EXHAUSTED:
        out["errors"] += 1
        if len(out["errors_seen"]) < 10:
            out["errors_seen"].append(f"{code.name} while opening: {await call.details()}")
        return
    out["refusals"].append(seconds)
    trailers = dict(await call.trailing_metadata() or ())
    out["with_pushback"] += PUSHBACK in trailers
    if len(out["refusals_seen"]) < 3:
        out["refusals_seen"].append(f"{await call.details()} [{PUSHBACK}={trailers.get(PUSHBACK)}]")


async def _overload_process(target: str, model: str, streams: int, until: float, seed: int) -> dict:
    out: dict = {
        "latencies": [], "open_waits": [], "refusals": [], "refusals_seen": [], "with_pushback": 0,
        "never_answered": 0, "errors": 0, "errors_seen": [], "without_a_chunk": 0,
    }  # fmt: skip
    count = max(1, streams // STREAMS_PER_CHANNEL)
    channels = [grpc.aio.insecure_channel(target, options=OWN_CONNECTION) for _ in range(count)]
    await asyncio.gather(
        *(_overload_stream(channels[i % len(channels)], model, until, seed + i, out) for i in range(streams))
    )
    for channel in channels:
        await channel.close()
    return out


def _overload_worker(target: str, model: str, streams: int, duration_s: float, seed: int) -> dict:
    # The clock starts once this process has started (spawning and imports take seconds under load).
    start = time.perf_counter()
    out = asyncio.run(_overload_process(target, model, streams, start + duration_s, seed))
    out["window_s"] = time.perf_counter() - start
    return out


def _joined(parts: list[dict], key: str) -> list:
    return [item for part in parts for item in part[key]]


def overload(server: ServerProcess, model: str, duration_s: float, streams: int, clients: int) -> dict:
    share = [streams // clients + (i < streams % clients) for i in range(clients)]
    peak, rss, delays = 0.0, [], []
    with multiprocessing.get_context("spawn").Pool(clients) as pool:
        work = [(server.target, model, n, duration_s, 1000 * i) for i, n in enumerate(share)]
        pending = [pool.apply_async(_overload_worker, arguments) for arguments in work]
        while not all(p.ready() for p in pending):
            rss.append(rss_mb(server.pid))
            peak = max(peak, rss[-1])
            delays.append(_scrape(server).get("seqserve_accept_delay_seconds", float("nan")))
            time.sleep(1.0)
        parts = [p.get() for p in pending]
    latencies, open_waits = _joined(parts, "latencies"), _joined(parts, "open_waits")
    refusals = _joined(parts, "refusals")
    chunks_per_s = sum(len(part["latencies"]) / part["window_s"] for part in parts)
    held = asyncio.run(_settled(server))
    return {
        "streams": streams,
        "client_processes": clients,
        "duration_s": duration_s,
        "chunk_steps": OVERLOAD_CHUNK,
        "chunks_per_s": round(chunks_per_s, 1),
        "steps_per_s": round(chunks_per_s * OVERLOAD_CHUNK, 1),
        "p50_ms": round(_p(latencies, 50), 2),
        "p99_ms": round(_p(latencies, 99), 2),
        # Every stream is one of: served (its open answered), refused (RESOURCE_EXHAUSTED at open), never
        # answered (no answer to its open inside the window), or an error.
        "streams_served": len(open_waits),
        "streams_refused": len(refusals),
        "streams_never_answered": sum(part["never_answered"] for part in parts),
        # From the first write to the open's answer: on a saturated server, mostly the wait to be accepted.
        "open_wait_p50_ms": round(_p(open_waits, 50), 1),
        "open_wait_p99_ms": round(_p(open_waits, 99), 1),
        "open_wait_max_ms": round(max(open_waits, default=float("nan")) * 1000, 1),
        "refusal_p50_ms": round(_p(refusals, 50), 1),
        "refusal_max_ms": round(max(refusals, default=float("nan")) * 1000, 1),
        "refusals_with_pushback": sum(part["with_pushback"] for part in parts),
        "refusals_seen": _joined(parts, "refusals_seen")[:3],
        # The server's own accept delay (seqserve_accept_delay_seconds), read once a second.
        "accept_delay_p50_ms": round(_p([d for d in delays if d == d], 50), 1),
        "accept_delay_max_ms": round(max((d for d in delays if d == d), default=float("nan")) * 1000, 1),
        "streams_without_a_chunk": sum(part["without_a_chunk"] for part in parts),
        "rss_peak_mb": round(peak, 1),
        "rss_after_mb": round(rss_mb(server.pid), 1),
        "errors_on_good_streams": sum(part["errors"] for part in parts),
        "errors_seen": _joined(parts, "errors_seen")[:10],
        "streams_left_open_after": held.get("seqserve_streams_active", 0.0),
        "server_requests_total": {k: v for k, v in held.items() if k.startswith("seqserve_requests_total")},
        "state_bytes_left_after": held.get("seqserve_state_bytes", 0.0),
    }


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = result["soak"]["samples"]
    t = [s["t_s"] / 60 for s in samples]
    figure, axes = plt.subplots(3, 1, figsize=(8, 8), sharex=True)
    axes[0].plot(t, [s["rss_mb"] for s in samples], marker=".")
    axes[0].set_ylabel("server RSS (MB)")
    axes[0].set_title(
        f"soak: {result['soak']['streams']} streams, RSS slope after 1 min "
        f"{result['soak']['rss_slope_mb_per_min_after_first_minute']} MB/min, "
        f"leaked {result['soak']['streams_leaked']:g}, good-stream errors {result['soak']['good_errors']}"
    )
    axes[1].plot(t, [s["p99_ms"] for s in samples], marker=".", color="tab:red")
    axes[1].set_ylabel("p99 chunk latency (ms)")
    axes[2].plot(t, [s["open_streams"] for s in samples], marker=".", color="tab:green")
    axes[2].set_ylabel("open streams")
    axes[2].set_xlabel("minutes")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration-s", type=float, default=600.0, help="0 skips the soak")
    parser.add_argument("--streams", type=int, default=64)
    parser.add_argument("--overload-s", type=float, default=60.0, help="0 skips the overload run")
    parser.add_argument("--overload-streams", type=int, default=2000)
    parser.add_argument("--overload-clients", type=int, default=2, help="client processes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--repository",
        type=Path,
        help=f"serve this repository (its model {MODEL!r} or --model) instead of exporting the seeded GRU",
    )
    parser.add_argument("--model", default=MODEL, help=f"the model to stream to ({FEATURES} features)")
    parser.add_argument(
        "--serve-arg", action="append", default=[], metavar="ARG",
        help="one more argument for `seqserve serve` (repeat it: --serve-arg=--max-streams --serve-arg=200)",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="seqserve-soak-") as work:
        repository = args.repository
        if repository is None:
            repository = Path(work) / "repository"
            write_bench_model(repository, Path(work), seed=args.seed, name=args.model, hidden=64, layers=1)
        command = [sys.executable, "-m", "seqserve.cli", "serve", "--repository", str(repository),
                   "--port", "0", "--metrics-port", "0", *args.serve_arg]  # fmt: skip
        with running_server(command, args.out / "soak-server.log") as server:
            result = {}
            if args.duration_s > 0:
                log.info(
                    "soak: %d streams for %.0f s against %s", args.streams, args.duration_s, server.target
                )
                result["soak"] = asyncio.run(
                    soak(server, args.model, args.duration_s, args.streams, args.seed)
                )
            if args.overload_s > 0:
                log.info("overload: %d streams for %.0f s", args.overload_streams, args.overload_s)
                result["overload"] = overload(
                    server, args.model, args.overload_s, args.overload_streams, args.overload_clients
                )
    (args.out / "soak.json").write_text(json.dumps(result, indent=2) + "\n")
    summary = None
    if "soak" in result:
        plot(result, args.out / "soak.png")
        summary = {k: v for k, v in result["soak"].items() if k != "samples"}
    print(json.dumps({"soak": summary, "overload": result.get("overload")}, indent=2))
    return result


if __name__ == "__main__":
    main()
