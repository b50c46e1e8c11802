"""The sequence-to-sequence kind: a word in, its n best outputs out, by beam search on the server.

A seq2seq version is two graphs (seqserve/contract.py): the encoder, a graph with a time axis (a word's
letters -> its memory and the decoder's first state), and the decoder step, a frame model (the previous
output token, the memory and its length, the state -> log-probabilities over the output vocabulary and
the next state). Each has its own batcher (`ServedModel.encoder_batcher`, `ServedModel.batcher`), so both
batch across requests under the same limits and metrics.

`translate` runs one request: it opens a stream of the state store (so --max-streams, the stream metrics
and the drain apply), encodes each word as one encoder row (the words of every request share calls), then
searches with seqserve/beam_search.py's per-word objects (`WordGreedy` for width 1, `WordBeam` above): each
step it submits one decoder row per live hypothesis of every word still going, and hands each word its
rows' log-probabilities (`beam_search.advance`, the bookkeeping the offline search shares); the chosen
parents' states go on. Rows of every request and every beam of a step go into one onnxruntime call. Each
row is its word's own (its memory, its state), and the decoder masks its attention by the row's length, so
a word's answer does not depend on what else shares the call.

Every row is marked active in the batcher under its own key while the search needs it, and forgotten as
soon as it does not (a word done, a beam that narrowed, the request over), so the batcher waits for the
rows still coming and for no others. A cancelled request cancels its rows' futures (the batcher skips a
done future) and closes its stream at once; a drain stops the search between steps with `Draining`.

Knows nothing of gRPC: the front doors turn requests into texts and `TranslateOptions`, and translations
back into their messages.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass

import numpy as np

from seqserve import contract
from seqserve.beam_search import SearchOptions, Word, WordBeam, WordGreedy, advance
from seqserve.declaration import Declaration
from seqserve.service.engine.batcher import Batcher
from seqserve.service.engine.caller import current_caller
from seqserve.service.engine.errors import Draining, InvalidChunk, LimitExceeded, WrongTask
from seqserve.service.engine.inference import InferenceEngine
from seqserve.service.engine.kind import States
from seqserve.service.engine.repository import ServedModel
from seqserve.service.engine.state import SHUTDOWN, StreamState
from seqserve.service.kinds.tensors import TensorAnswer, Tensors
from seqserve.vocabularies import Tokens, Translation


class Seq2Seq(Tensors):
    """The decoder step's rows: each answers its log-probabilities (the attention weights are not read by
    the search, so they are left in the call's output) and its next state."""

    name = "seq2seq"

    def __init__(self, declaration: Declaration) -> None:
        super().__init__(declaration)
        self._outputs = [(contract.OUTPUT_LOG_PROBS, 0, None)]


@dataclass(frozen=True)
class TranslateOptions:
    """What a Translate request asks: beam width (1 is greedy search), how many hypotheses per input,
    the most output tokens (0: each input's 2 x its length + 10) and the length penalty (0: none)."""

    beam: int = 4
    nbest: int = 1
    max_steps: int = 0
    length_penalty: float = 0.0


def check_request(
    model: ServedModel,
    texts: list[str],
    options: TranslateOptions,
    max_beam: int,
    max_decode_steps: int,
    max_chunk_steps: int,
) -> list[list[int]]:
    """Each input's token ids after every check of the request; raises what is wrong and what was
    expected."""
    info = model.runtime.info
    if info.task != contract.SEQ2SEQ:
        raise WrongTask(
            f"model {model.key} is a {info.task} model; Translate needs a sequence-to-sequence model "
            f"(task {contract.SEQ2SEQ})"
        )
    if options.beam < 1:
        raise InvalidChunk(f"beam_width is {options.beam}; expected 1 (greedy) to {max_beam}")
    if options.beam > max_beam:
        raise LimitExceeded(f"beam_width is {options.beam}, the server's limit is {max_beam} (--max-beam)")
    if not 1 <= options.nbest <= options.beam:
        raise InvalidChunk(f"nbest is {options.nbest}; expected 1 to the beam width {options.beam}")
    if options.max_steps > max_decode_steps:
        raise LimitExceeded(
            f"max_steps is {options.max_steps}, the server's limit is {max_decode_steps} (--max-decode-steps)"
        )
    if not (math.isfinite(options.length_penalty) and options.length_penalty >= 0):
        raise InvalidChunk(f"length_penalty is {options.length_penalty}; expected a finite value >= 0")
    if not texts:
        raise InvalidChunk("no inputs; expected at least 1 text to translate")
    return [
        _encoded(model, tokens_of(info), text, index, max_chunk_steps) for index, text in enumerate(texts)
    ]


def tokens_of(info: contract.ModelInfo) -> Tokens:
    return Tokens(info.vocabulary, info.labels)


def _encoded(model: ServedModel, tokens: Tokens, text: str, index: int, max_steps: int) -> list[int]:
    if not text:
        raise InvalidChunk(f"input {index} is empty; expected at least 1 character")
    if len(text) > max_steps:
        raise LimitExceeded(
            f"input {index} has {len(text)} characters, the server's limit per input is {max_steps} "
            "(--max-chunk-steps)"
        )
    try:
        return tokens.encode_input(text)
    except ValueError as error:  # names the character, its position and the vocabulary
        raise InvalidChunk(f"input {index}: {error} of model {model.key}") from None


def words_for(
    tokens: Tokens, ids: list[list[int]], options: TranslateOptions, max_decode_steps: int
) -> list[Word]:
    """Each input's search: greedy at width 1 (the same choices as a beam of 1, without ranking), else a
    beam; an input's step limit is the asked one, or 2 x its length + 10 within the server's limit."""
    search = SearchOptions(options.beam, options.nbest, options.max_steps or None, options.length_penalty)
    limits = [min(search.steps_for(len(word)), max_decode_steps) for word in ids]
    if options.beam == 1:
        return [WordGreedy(tokens.start, tokens.end, limit) for limit in limits]
    return [WordBeam(tokens.start, tokens.end, limit, search) for limit in limits]


class _Rows:
    """The keys under which a request's rows are active in a batcher, one per row of the current step:
    the rows beyond a narrower step are forgotten at once, and all of them when the request ends."""

    def __init__(self, stream: StreamState, graph: str, batcher: Batcher) -> None:
        self.prefix = (stream.id, graph)
        self.batcher = batcher
        self.keys: list[tuple] = []

    def take(self, count: int) -> list[tuple]:
        for key in self.keys[count:]:
            self.batcher.forget(key)
        self.keys = self.keys[:count] + [(*self.prefix, i) for i in range(len(self.keys), count)]
        return self.keys

    def submit(self, rows: list[tuple[tuple[np.ndarray, ...], States]]) -> list[asyncio.Future]:
        return self.batcher.submit_many(rows, self.take(len(rows)))


async def _encode(model: ServedModel, stream: StreamState, ids: list[list[int]]) -> list[TensorAnswer]:
    """One encoder row per input: its memory (cut to its letters) and the decoder's first state."""
    rows = _Rows(stream, "encoder", model.encoder_batcher)
    try:
        return list(await asyncio.gather(*rows.submit([((np.array(w, np.int64),), ()) for w in ids])))
    finally:
        rows.take(0)


async def _search(
    model: ServedModel, stream: StreamState, words: list[Word], encoded: list[TensorAnswer]
) -> None:
    """Every word's search to its end, one decoder row per live hypothesis a step."""
    names = contract.state_outputs(model.runtime.info.cell)
    memories = [answer.tensors[contract.OUTPUT_MEMORY] for answer in encoded]
    lengths = [np.array(memory.shape[0], dtype=np.int32) for memory in memories]
    # The state of each live row, in the order of the rows of the active words.
    states: list[States] = [tuple(answer.tensors[name] for name in names) for answer in encoded]
    active = list(range(len(words)))
    rows = _Rows(stream, "decoder", model.batcher)
    try:
        while active:
            if stream.interrupted is not None:
                raise Draining(
                    "server shut down before the translation ended; send the request to another replica"
                )
            frames = [
                (words[w].previous[r, ...], memories[w], lengths[w])  # [r, ...]: a 0-d array, not a scalar
                for w in active
                for r in range(words[w].rows)
            ]
            answers = await asyncio.gather(*rows.submit(list(zip(frames, states, strict=True))))
            log_probs = np.concatenate([answer.tensors[contract.OUTPUT_LOG_PROBS] for answer in answers])
            active, chosen = advance(words, active, log_probs)
            states = [answers[index].states for index in chosen.tolist()]
    finally:
        rows.take(0)


async def translate(
    engine: InferenceEngine, model: ServedModel, texts: list[str], options: TranslateOptions
) -> list[list[Translation]]:
    """Each text's `options.nbest` outputs, best first, with their scores; bad requests raise before any
    row runs (`check_request`)."""
    config = engine.config
    ids = check_request(
        model, texts, options, config.max_beam, config.max_decode_steps, config.max_chunk_steps
    )
    if engine.store.draining:
        raise Draining("server is shutting down and takes no new requests; retry on another replica")
    tokens = tokens_of(model.runtime.info)
    words = words_for(tokens, ids, options, config.max_decode_steps)
    stream = engine.store.open(model, engine.idle_timeout_s(0), current_caller())
    reason = "error"
    try:
        model.metrics.steps.inc(sum(len(word) for word in ids))
        await _search(model, stream, words, await _encode(model, stream, ids))
        reason = "completed"
    except asyncio.CancelledError:
        reason = "cancelled"
        raise
    except Draining:
        reason = SHUTDOWN
        raise
    finally:
        engine.store.close(stream, reason)
    return [
        [Translation(text, tokens.decode_output(h.tokens), h.score, h.finished) for h in word.results()]
        for text, word in zip(texts, words, strict=True)
    ]
