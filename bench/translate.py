"""Translations (spelling to pronunciation) at 1, 16 and 64 concurrent clients, each sending one word a
request and awaiting its answer (beam 4), for `duration_s`: seqserve's server-side beam search against
the two loops a user would otherwise run.

The model is the default G2P model's shape (seqserve train --task seq2seq: Seq2SeqTrainConfig's cell and
sizes, CMUdict's 29 letters and 41 phonemes) with seeded weights; speed does not depend on them, but a
search's length does, so the end token's bias is lowered until no hypothesis ends: every word decodes STEPS
tokens (a 7-letter word's phonemes and its end) in all three ways, the same rows. The words are CMUdict
test words of WORD_LENGTH letters (why one length: below).

- translate: one Translate call a word; the server encodes it and runs the beam search, every request's
  and every beam's rows of a step in one onnxruntime call.
- client loop: the encoder and the decoder step served as plain declared graphs (a declaration.json
  each; the decoder's state, h and c, ordinary inputs, so the client carries them): one Classify call for the
  encoder, then one Classify call a step carrying the word's live beams (each its state, the word's
  memory and length), the search on the client with seqserve/beam_search.py's WordBeam. A user
  declaration fixes every dim but batch and time, so the decoder's memory is fixed at WORD_LENGTH steps
  (hence words of one length: every way does the same arithmetic); the Classify calls of all clients
  share the server's calls as any rows do.
- unbatched: Translate on a server started with --max-batch 1: the same server-side loop, one row a call.

Reported per row: words/s, p50 / p99 per word, and server CPU per word (from /proc). `make bench` runs
these rows (bench/run.py); alone:

    python -m bench.translate [--duration-s 4] [--clients 1,16,64]
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from bench.process_costs import cpu_clock
from bench.report import TextTable
from bench.ways import Client, closed_loop, lead_ratios, section_main
from seqserve.beam_search import SearchOptions, WordBeam
from seqserve.service.server.launch import running_server, serve_command
from seqserve.v1 import seqserve_pb2 as pb
from seqserve.v1 import seqserve_pb2_grpc as pb_grpc

MODEL, ENCODER, DECODER = "bench-g2p", "bench-g2p-encoder", "bench-g2p-decoder"
WORD_LENGTH = 7
STEPS = 8
BEAM = 4
CLIENTS = (1, 16, 64)
TARGET_CLIENTS, TARGET_RATIO = 64, 3.0
WAYS = ("translate", "client loop", "unbatched")
RESULTS = Path(__file__).parent / "results" / "translate.json"
START, END = 0, 1  # seqserve/vocabularies.py: output token 0 starts a decode, 1 ends it
# The encoder and decoder step as a user would declare them (docs/declared_models.md): no state on the
# server; the decoder's memory fixed at WORD_LENGTH steps. The probe's rows are random (the attention of a
# row of length 0 is uniform over padding), so its tolerance is float32's for log-probabilities of ~-4.
STATE = (("h0", "hn"), ("c0", "cn"))  # the LSTM decoder's state, input and output names
ENCODER_DECLARATION = {
    "inputs": [{"name": "tokens", "time_axis": 1}],
    "lengths": "lengths",
    "outputs": [
        {"name": "memory", "batch_axis": 0, "time_axis": 1},
        *({"name": output, "batch_axis": 1} for _, output in STATE),
    ],
}
DECODER_DECLARATION = {
    "inputs": [
        {"name": "previous", "time_axis": None},
        *({"name": name, "batch_axis": 1, "time_axis": None} for name, _ in STATE),
        {"name": "memory", "time_axis": None},
        {"name": "lengths", "time_axis": None},
    ],
    "outputs": [
        {"name": "log_probs", "batch_axis": 0},
        *({"name": output, "batch_axis": 1} for _, output in STATE),
        {"name": "attention", "batch_axis": 0},
    ],
    "tolerance": 1e-4,
}


@dataclass(frozen=True)
class Words:
    """The bench words, and the model's vocabularies (the client loop tokenises and reads ids itself)."""

    words: list[str]
    letters: dict[str, int]  # input character -> token id
    phonemes: list[str]  # output token id -> symbol


def write_models(repository: Path) -> Words:
    """The seq2seq version and the two declared graphs."""
    import json as json_module

    import onnx
    import torch

    from seqserve import contract
    from seqserve.export.graph import set_metadata
    from seqserve.export.repository import VersionFiles, write_versions
    from seqserve.export.seq2seq_graph import build_decoder_step, build_encoder
    from seqserve.export.seq2seq_job import seq2seq_info
    from seqserve.training.g2p_data import load_g2p
    from seqserve.training.seq2seq import Seq2Seq, Seq2SeqConfig
    from seqserve.training.seq2seq_loop import Seq2SeqTrainConfig

    data, _ = load_g2p()
    trained = Seq2SeqTrainConfig(out=repository)  # the default cell (LSTM): its state is h and c
    torch.manual_seed(0)
    config = Seq2SeqConfig(
        letters=data.letters, phonemes=data.phonemes, cell=trained.cell, embedding=trained.embedding,
        encoder_hidden=trained.encoder_hidden, encoder_layers=trained.encoder_layers, hidden=trained.hidden,
    )  # fmt: skip
    model = Seq2Seq(config).eval()
    with torch.no_grad():
        model.out.bias[END] = -1e4  # never ends: every word decodes STEPS tokens
    info = seq2seq_info(model, MODEL, 1)
    encoder, decoder = build_encoder(model, info), build_decoder_step(model, info)
    for graph in (encoder, decoder):
        set_metadata(graph, info)
    graphs = {contract.ENCODER_FILE: encoder, contract.DECODER_FILE: decoder}
    write_versions(repository, [VersionFiles(None, info, graphs)])
    memory = next(i for i in decoder.graph.input if i.name == contract.INPUT_MEMORY)
    memory.type.tensor_type.shape.dim[1].dim_value = WORD_LENGTH  # a user's fixed memory length
    for name, graph, declared in (
        (ENCODER, encoder, ENCODER_DECLARATION),
        (DECODER, decoder, DECODER_DECLARATION),
    ):
        folder = repository / name / "1"
        folder.mkdir(parents=True)
        onnx.save(graph, folder / contract.MODEL_FILE)
        (folder / "declaration.json").write_text(json_module.dumps(declared, indent=2) + "\n")
    words = [w for w in data.test if len(w) == WORD_LENGTH and set(w) <= set(data.letters[1:])]
    return Words(words, {letter: index for index, letter in enumerate(data.letters)}, list(data.phonemes))


def _tensor(name: str, array: np.ndarray) -> pb.Tensor:
    datatype = {"float32": "FP32", "int64": "INT64", "int32": "INT32"}[array.dtype.name]
    return pb.Tensor(name=name, datatype=datatype, shape=array.shape, data=array.tobytes())


def _array(tensor: pb.Tensor) -> np.ndarray:
    dtype = {"FP32": "<f4", "INT64": "<i8", "INT32": "<i4"}[tensor.datatype]
    return np.frombuffer(tensor.data, dtype=dtype).reshape(tuple(tensor.shape))


def _outputs(result: pb.SequenceResult) -> dict[str, np.ndarray]:
    return {tensor.name: _array(tensor) for tensor in result.outputs}


Way = Callable[[pb_grpc.InferenceServiceStub, str, Words], Awaitable[tuple[str, ...]]]


async def _translate(stub: pb_grpc.InferenceServiceStub, word: str, vocabulary: Words) -> tuple[str, ...]:
    request = pb.TranslateRequest(model=MODEL, inputs=[word], beam_width=BEAM, nbest=1, max_steps=STEPS)
    answer = await stub.Translate(request)
    return tuple(answer.translations[0].hypotheses[0].output)


async def _client_loop(stub: pb_grpc.InferenceServiceStub, word: str, vocabulary: Words) -> tuple[str, ...]:
    """What a user writes: encode with one call, then one call a step with the live beams."""
    tokens = np.array([vocabulary.letters[c] for c in word], dtype=np.int64)
    sequence = pb.Sequence(steps=len(word), tensors=[_tensor("tokens", tokens)])
    encoded = _outputs(
        (await stub.Classify(pb.ClassifyRequest(model=ENCODER, sequences=[sequence]))).results[0]
    )
    memory = _tensor("memory", encoded["memory"][np.newaxis])  # one frame: [1, steps, memory]
    length = _tensor("lengths", np.array([len(word)], dtype=np.int32))
    search = WordBeam(START, END, STEPS, SearchOptions(beam=BEAM, max_steps=STEPS))
    states = [[encoded[output] for _, output in STATE]]  # a live hypothesis: h, c [1, hidden] each
    while not search.done:
        frames = [
            pb.Sequence(steps=1, tensors=[
                _tensor("previous", search.previous[row : row + 1]),
                *(_tensor(name, part[np.newaxis]) for (name, _), part in zip(STATE, state, strict=True)),
                memory, length,
            ])
            for row, state in enumerate(states)
        ]  # fmt: skip
        answer = await stub.Classify(pb.ClassifyRequest(model=DECODER, sequences=frames))
        rows = [_outputs(result) for result in answer.results]
        parents = search.advance(np.concatenate([row["log_probs"] for row in rows]))
        states = [[rows[parent][output][0] for _, output in STATE] for parent in parents.tolist()]
    return tuple(vocabulary.phonemes[token] for token in search.results()[0].tokens)


WAY_CLIENTS: dict[str, Way] = {"translate": _translate, "client loop": _client_loop, "unbatched": _translate}


@dataclass
class TranslateRow:
    way: str
    clients: int
    words_per_s: float
    p50_ms: float
    p99_ms: float
    server_cpu_ms_per_word: float


def _client(way: Way, vocabulary: Words) -> Client:
    """A client of `way` that translates the bench words in turn, each from its own place in the list."""

    async def client(
        stub: pb_grpc.InferenceServiceStub, until: float, latencies: list[float], index: int
    ) -> int:
        done, words = 0, vocabulary.words
        while time.perf_counter() < until:
            sent = time.perf_counter()
            await way(stub, words[(7 * index + done) % len(words)], vocabulary)
            latencies.append(time.perf_counter() - sent)
            done += 1
        return done

    return client


async def _load(
    target: str,
    way: str,
    clients: int,
    duration_s: float,
    server_cpu,
    vocabulary: Words,  # noqa: ANN001
) -> TranslateRow:
    run = await closed_loop(target, _client(WAY_CLIENTS[way], vocabulary), clients, duration_s, server_cpu)
    return TranslateRow(
        way,
        clients,
        round(run.rate, 1),
        run.p50_ms,
        run.p99_ms,
        round(run.server_cpu_s / run.count * 1000, 3),
    )


async def _same_answers(targets: dict[str, str], vocabulary: Words) -> None:
    """Every way searches the same rows: the same STEPS symbols for the same word."""
    found = {}
    for way, target in targets.items():
        async with grpc.aio.insecure_channel(target) as channel:
            stub = pb_grpc.InferenceServiceStub(channel)
            found[way] = [await WAY_CLIENTS[way](stub, word, vocabulary) for word in vocabulary.words[:3]]
    assert len(set(map(str, found.values()))) == 1, found
    assert all(len(output) == STEPS for output in found["translate"]), found


@dataclass
class Translations:
    """The section `make bench` reports: rows, and Translate's words/s over each other way's."""

    rows: list[TranslateRow]
    key: str = "translate"

    def to_dict(self) -> dict[str, Any]:
        return {"rows": [asdict(row) for row in self.rows], "ratios": self.ratios()}

    def ratios(self) -> dict[str, float]:
        return lead_ratios(self.rows, lambda r: r.words_per_s, lambda r: r.clients, WAYS, "translate")

    def targets(self) -> dict[str, tuple[str, float]]:
        key = f"translate_vs_client_loop_{TARGET_CLIENTS}"
        return {key: (">=", TARGET_RATIO)} if key in self.ratios() else {}

    def tables(self) -> list[TextTable]:
        header = ["way", "clients", "words/s", "p50 ms", "p99 ms", "server CPU ms/word"]
        body = [
            [r.way, str(r.clients), f"{r.words_per_s:,.1f}", f"{r.p50_ms:.2f}", f"{r.p99_ms:.2f}",
             f"{r.server_cpu_ms_per_word:.2f}"]
            for r in self.rows
        ]  # fmt: skip
        title = (
            f"Translations, one word a request ({MODEL}: G2P shape, seeded; {WORD_LENGTH} letters, "
            f"beam {BEAM}, {STEPS} steps)"
        )
        return [TextTable(title, tuple(header), [tuple(row) for row in body])]


def measure(repository: Path, clients: tuple[int, ...], duration_s: float, logs: Path) -> Translations:
    vocabulary = write_models(repository)
    commands = {
        "batched": serve_command(repository, "--metrics-port", "-1"),
        "unbatched": serve_command(repository, "--metrics-port", "-1", "--max-batch", "1"),
    }
    rows = []
    with (
        running_server(commands["batched"], logs / "translate.log") as batched,
        running_server(commands["unbatched"], logs / "translate-unbatched.log") as unbatched,
    ):
        servers = {"translate": batched, "client loop": batched, "unbatched": unbatched}
        asyncio.run(_same_answers({way: s.target for way, s in servers.items()}, vocabulary))
        for way in WAYS:
            clock = cpu_clock(servers[way].pid)
            for count in clients:
                rows.append(
                    asyncio.run(_load(servers[way].target, way, count, duration_s, clock, vocabulary))
                )
    return Translations(rows)


def main() -> None:
    section_main(__doc__.splitlines()[0], measure, CLIENTS, RESULTS)


if __name__ == "__main__":
    main()
