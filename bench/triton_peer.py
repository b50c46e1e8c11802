"""Triton Inference Server as a peer: the same model.onnx behind Triton's Python backend, both servers
driven by the same client, Triton's perf_analyzer (gRPC, `--streaming`, sequences).

Optional: `scripts/install_triton.sh` and `scripts/install_perf_analyzer.sh` put tritonserver and
perf_analyzer under `.tools/`; where either cannot be installed the Triton rows are skipped with the reason.
Every run is bounded: perf_analyzer gets a fixed measurement window and a wall-clock timeout.
"""

from __future__ import annotations

import contextlib
import csv
import os
import resource
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from bench.bench_model import BENCH_MODEL, BENCH_VERSION, model_path
from bench.process_costs import process_tree_cpu_seconds
from seqserve.contract import ModelInfo
from seqserve.service.server.launch import ServerStartError

ROOT = Path(__file__).resolve().parent.parent
TOOLS = Path(os.environ.get("SEQSERVE_TOOLS", ROOT / ".tools"))
TRITONSERVER = TOOLS / "bin" / "tritonserver"
PERF_ANALYZER = TOOLS / "bin" / "perf_analyzer"
_MODEL_PY = Path(__file__).resolve().parent / "triton" / "model.py"
# Steps of one sequence in perf_analyzer's runs: long enough that starts and ends are rare.
SEQUENCE_CHUNKS = 200
_INSTALL_TIMEOUT_S = 300
# Triton's queue delay holds every batch up to this long unless `preferred_batch_size` rows are ready
# (seqserve waits only for active streams); bench/README.md shows 0 beat 2 ms at 1 and 16 sequences.
TRITON_MAX_DELAY_US = 0


def ensure_tools(install: bool = True) -> str | None:
    """Install tritonserver and perf_analyzer if missing (or, with `install` False, only look for them);
    None when both are there, else why not."""
    needs = (
        ("install_triton.sh", TOOLS / "triton-py" / "numpy"),
        ("install_triton.sh", TRITONSERVER),
        ("install_perf_analyzer.sh", PERF_ANALYZER),
    )
    for script, tool in needs:
        if tool.exists():
            continue
        if not install:
            return f"{tool.name} is not installed (bash scripts/{script})"
        try:
            done = subprocess.run(
                ["bash", str(ROOT / "scripts" / script)],
                capture_output=True,
                text=True,
                timeout=_INSTALL_TIMEOUT_S,
            )
        except subprocess.TimeoutExpired:
            return f"scripts/{script} took over {_INSTALL_TIMEOUT_S} s"
        if done.returncode != 0 or not tool.exists():
            return f"scripts/{script} failed: {done.stderr.strip()[-300:]}"
    return None


def _config(info: ModelInfo, max_batch: int, max_delay_us: int, candidates: int = 4096) -> str:
    controls = "\n".join(
        f'    {{ name: "{name}" control [ {{ kind: CONTROL_SEQUENCE_{kind} fp32_false_true: [ 0, 1 ] }} ] }},'
        for name, kind in (("START", "START"), ("END", "END"), ("READY", "READY"))
    )
    classes = len(info.labels)
    return f"""name: "{BENCH_MODEL}"
backend: "python"
max_batch_size: {max_batch}
input [ {{ name: "x" data_type: TYPE_FP32 dims: [ -1, {info.features} ] }} ]
output [
  {{ name: "logits" data_type: TYPE_FP32 dims: [ {classes} ] }},
  {{ name: "label" data_type: TYPE_INT64 dims: [ 1 ] }},
  {{ name: "scores" data_type: TYPE_FP32 dims: [ {classes} ] }}
]
sequence_batching {{
  max_sequence_idle_microseconds: 60000000
  control_input [
{controls}
    {{ name: "CORRID" control [ {{ kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_UINT64 }} ] }}
  ]
  oldest {{
    max_candidate_sequences: {candidates}
    preferred_batch_size: [ {max_batch} ]
    max_queue_delay_microseconds: {max_delay_us}
  }}
}}
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
"""


def write_triton_repository(
    seqserve_repository: Path, info: ModelInfo, out: Path, max_delay_us: int = TRITON_MAX_DELAY_US
) -> Path:
    """`<out>/bench-gru/config.pbtxt` + `1/model.py` + `1/model.onnx` (the very file seqserve serves),
    max batch 64 as seqserve's default."""
    version = out / BENCH_MODEL / str(BENCH_VERSION)
    version.mkdir(parents=True, exist_ok=True)
    shutil.copy(model_path(seqserve_repository), version / "model.onnx")
    shutil.copy(_MODEL_PY, version / "model.py")
    (version / "site_packages.txt").write_text(f"{TOOLS / 'triton-py'}\n{_site_packages()}\n")
    (out / BENCH_MODEL / "config.pbtxt").write_text(_config(info, 64, max_delay_us))
    return out


def _site_packages() -> Path:
    import numpy

    return Path(numpy.__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class TritonProcess:
    process: subprocess.Popen
    target: str

    def cpu_seconds(self) -> float:
        """tritonserver and its Python-backend stub process together."""
        return process_tree_cpu_seconds(self.process.pid)


@contextlib.contextmanager
def running_triton(
    repository: Path, log_path: Path, start_timeout_s: float = 120.0
) -> Iterator[TritonProcess]:
    port = _free_port()
    command = [
        str(TRITONSERVER), "--model-repository", str(repository), "--grpc-port", str(port),
        "--allow-http", "false", "--allow-metrics", "false", "--allow-gpu-metrics", "false",
        "--pinned-memory-pool-byte-size", "0",
        "--log-verbose", os.environ.get("SEQSERVE_TRITON_LOG_VERBOSE", "0"),
        "--backend-config", "python,shm-default-byte-size=67108864",
        "--backend-config", "python,shm-growth-byte-size=67108864",
    ]  # fmt: skip
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + start_timeout_s
        while "Started GRPCInferenceService" not in log_path.read_text(errors="replace"):
            if process.poll() is not None or time.monotonic() > deadline:
                tail = log_path.read_text(errors="replace")[-3000:]
                raise ServerStartError(f"tritonserver did not start; {log_path}:\n{tail}")
            time.sleep(0.1)
        yield TritonProcess(process, f"127.0.0.1:{port}")
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class PerfFigures:
    """One perf_analyzer run (gRPC streaming, `concurrency` sequences of `chunk` steps per request)."""

    server: str
    client: str
    sequences: int
    chunk: int
    msgs_per_s: float
    steps_per_s: float
    p50_ms: float
    p99_ms: float
    server_cpu_us_per_step: float
    load_average: float
    # perf_analyzer's own CPU over its whole run (it shares the box's cores with the server).
    client_cpu_s: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def perf_analyzer(
    name: str,
    target: str,
    cpu_seconds,
    sequences: int,
    chunk: int,
    features: int,
    window_ms: int,  # noqa: ANN001
) -> PerfFigures:
    """perf_analyzer against a V2 endpoint; `cpu_seconds()` reads the server's CPU before and after."""
    # seqserve's V2 model has max_batch_size 0 and x [batch, steps, features]; Triton's batches itself.
    shape = f"x:{chunk},{features}" if name == "triton" else f"x:1,{chunk},{features}"
    out = Path(os.environ.get("TMPDIR", "/tmp")) / f"perf-{name}-{os.getpid()}-{sequences}-{chunk}.csv"
    command = [
        str(PERF_ANALYZER), "-m", BENCH_MODEL, "-u", target, "-i", "grpc", "--streaming",
        "--sequence-length", str(SEQUENCE_CHUNKS), "--concurrency-range", str(sequences),
        "--shape", shape, "--measurement-interval", str(window_ms), "--stability-percentage", "100000",
        "--max-trials", "3", "--percentile", "99", "-f", str(out),
        "--num-of-sequences", str(max(sequences, 4)),
        # perf_analyzer's random FP32 data is random bytes, NaN among them (seqserve refuses NaN, at
        # chunk 32 x 12 features one lands in the buffer): zeros cost both servers the same.
        "--input-data", "zero",
    ]  # fmt: skip
    before, client_before = cpu_seconds(), _children_cpu_seconds()
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, timeout=60 + 10 * window_ms / 1000)
    wall = time.monotonic() - started
    cpu, client_cpu = cpu_seconds() - before, _children_cpu_seconds() - client_before
    if done.returncode != 0 or not out.exists():
        raise RuntimeError(f"perf_analyzer on {name} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    row = next(csv.DictReader(out.read_text().splitlines()))
    out.unlink()
    msgs = float(row["Inferences/Second"])
    # perf_analyzer's own warm-up and trials run outside its window: CPU over the whole run per step sent.
    steps_run = msgs * wall * chunk
    return PerfFigures(
        server=name,
        client="perf_analyzer",
        sequences=sequences,
        chunk=chunk,
        msgs_per_s=msgs,
        steps_per_s=msgs * chunk,
        p50_ms=float(row["p50 latency"]) / 1000,
        p99_ms=float(row["p99 latency"]) / 1000,
        server_cpu_us_per_step=cpu / steps_run * 1e6 if steps_run else 0.0,
        load_average=os.getloadavg()[0],
        client_cpu_s=client_cpu,
    )


def _children_cpu_seconds() -> float:
    # Waited-for children only: the perf_analyzer run that just ended, not the live load processes.
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def streamed_logits(target: str, x: np.ndarray, chunk: int) -> np.ndarray:
    """One sequence through ModelStreamInfer in chunks; the logits answered for its last chunk."""
    import grpc
    from tritonclient.grpc import service_pb2 as pb
    from tritonclient.grpc import service_pb2_grpc as pb_grpc

    def requests() -> Iterator:
        for start in range(0, len(x), chunk):
            part = x[start : start + chunk][np.newaxis]
            request = pb.ModelInferRequest(model_name=BENCH_MODEL, id=str(start))
            request.inputs.add(name="x", datatype="FP32", shape=list(part.shape))  # [1, steps, features]
            request.raw_input_contents.append(part.astype("<f4").tobytes())
            request.parameters["sequence_id"].int64_param = 4242
            request.parameters["sequence_start"].bool_param = start == 0
            request.parameters["sequence_end"].bool_param = start + chunk >= len(x)
            yield request

    with grpc.insecure_channel(target) as channel:
        responses = list(pb_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(requests()))
    last = responses[-1]
    if last.error_message:
        raise RuntimeError(f"{target}: {last.error_message}")
    response = last.infer_response
    index = [o.name for o in response.outputs].index("logits")
    return np.frombuffer(response.raw_output_contents[index], dtype="<f4")


def offline_logits(seqserve_repository: Path, info: ModelInfo, x: np.ndarray) -> np.ndarray:
    """One onnxruntime call over the whole sequence: the answer both servers must stream."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_path(seqserve_repository)), providers=["CPUExecutionProvider"])
    feeds = {"x": x[np.newaxis], "lengths": np.array([len(x)], np.int32)}
    feeds["h0"] = np.zeros(info.state_shape(1), np.float32)
    return session.run(["logits"], feeds)[0].reshape(-1)


@dataclass
class PeerRun:
    rows: list[PerfFigures]
    labels: dict
    skipped: str | None = None


def run_peer(
    seqserve_repository: Path,
    info: ModelInfo,
    seqserve_target: str,
    seqserve_cpu_seconds,  # noqa: ANN001 - () -> float
    chunks: tuple[int, ...],
    sequences: tuple[int, ...],
    window_ms: int,
    work: Path,
    install: bool = True,
) -> PeerRun:
    """Both servers at each (chunk, sequences), back to back, after checking they stream the same answer."""
    reason = ensure_tools(install)
    if reason is not None:
        return PeerRun([], {}, reason)
    repository = write_triton_repository(seqserve_repository, info, work / "triton-repository")
    with running_triton(repository, work / "triton.log") as triton:
        x = np.random.default_rng(7).standard_normal((40, info.features)).astype(np.float32)
        offline = offline_logits(seqserve_repository, info, x)
        labels = {"offline_label": int(offline.argmax()), "steps": len(x), "chunk": 8}
        for name, target in (("triton", triton.target), ("seqserve", seqserve_target)):
            streamed = streamed_logits(target, x, 8)
            labels[f"{name}_label"] = int(streamed.argmax())
            labels[f"{name}_max_abs_logit_diff"] = float(np.abs(streamed - offline).max())
        rows = []
        for chunk in chunks:
            for count in sequences:
                for name, target, cpu in (
                    ("triton", triton.target, triton.cpu_seconds),
                    ("seqserve", seqserve_target, seqserve_cpu_seconds),
                ):
                    try:
                        rows.append(perf_analyzer(name, target, cpu, count, chunk, info.features, window_ms))
                    except (RuntimeError, subprocess.TimeoutExpired) as error:  # one row lost, not the run
                        failed = f"{name} c{chunk} x{count}: {error}"[-500:]
                        labels.setdefault("failed_runs", []).append(failed)
    return PeerRun(rows, labels)
