"""The language-model kind: a row is int64 token ids, its answer the logits of the next token at every step
(the classifier's rendering, over the vocabulary). Generate: the prompt as one chunk, then one token per
step, fed back as input.

Each open generation is a stream of the StateStore (so the stream limit, metrics, drain and shutdown apply
to it as to any stream) and one row of its model's batcher at every step: N generations in step share one
onnxruntime call per step.

Stepping and sending are decoupled. A generation queues its next step as soon as it has picked a token and
appends the token to its `Outbox`; the outbox's writer sends whatever has accumulated as one piece once
the previous piece has gone out. Writes are budgeted: a model's generations send about
`MESSAGES_PER_STEP` messages per step between them, so with up to 8 open each token goes out alone
(streaming stays live) and with 64 a message carries 8; a slow reader gets larger pieces too. The text is
the same whatever the pieces. The lead is bounded: with `MAX_UNSENT_TOKENS` made
and not yet sent, the generation stops stepping (and leaves its batcher's set of rows waited for) until the
writer has taken them, so a client that does not read costs at most that many tokens of memory and no
row in the calls of the others. A stop string is matched on the text as made, whatever pieces it is sent
in, and nothing after it is made at all. The generation's row and state are freed as soon as it stops
stepping; the tail of the text then goes out at the client's pace.

Sampling is reproducible: every generation draws from its own `numpy.random.Generator(seed)`, never a
shared one, so the same request gives the same text whatever else the server runs. Temperature 0 is greedy
(the batcher's argmax of the logits, no draw). Otherwise p ~ softmax(logits / temperature) over the top_k
most likely tokens (all when top_k is 0), and the token is the first whose cumulative p exceeds one
uniform draw.

Knows nothing of gRPC: `service/frontends/` translates requests to `GenerateParams` and pieces back, and
calls `generate(engine, ...)`.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np

from seqserve.service.engine.caller import current_caller
from seqserve.service.engine.errors import InvalidChunk, LimitExceeded, WrongTask
from seqserve.service.engine.inference import InferenceEngine
from seqserve.service.engine.repository import ServedModel
from seqserve.service.engine.state import SHUTDOWN, StateStore, StreamState
from seqserve.service.kinds.classifier import Classifier, RowResult

log = logging.getLogger(__name__)

MAX_TOKENS = "max_tokens"
STOP_STRING = "stop_string"
SERVER_SHUTDOWN = SHUTDOWN


@dataclass(frozen=True)
class GenerateParams:
    prompt: str
    max_tokens: int
    temperature: float = 0.0
    top_k: int = 0
    seed: int = 0
    stop: tuple[str, ...] = ()


# Tokens a generation may make ahead of what its writer has taken. A message carries them all at once, so
# past a few the lead buys nothing; 256 characters of a character model are a few hundred bytes a stream.
MAX_UNSENT_TOKENS = 256
# The write budget: a model's open generations send about this many messages per step between them. A
# message costs the server a write and the client a read (tens of microseconds each in Python, more than a
# row of the step's onnxruntime call), so with more generations than this open, each waits for
# ceil(generations / budget) tokens before it sends: 1 up to 8 generations, 8 at 64 (bench/README.md).
MESSAGES_PER_STEP = 8
MAX_TOKENS_PER_MESSAGE = 64  # the budget's rule stops here, well under the lead


@dataclass(frozen=True, slots=True)
class Piece:
    """Tokens made since the previous piece, in order: what one message carries."""

    ids: list[int]
    text: str
    index: int  # position of the first token in the generation, from 0


@dataclass(frozen=True)
class GenerationEnd:
    reason: str  # MAX_TOKENS, STOP_STRING or SERVER_SHUTDOWN
    tokens: int
    stop: str = ""  # the stop string that matched


class LanguageModel(Classifier):
    """Token ids in, the next token's logits out at every step: a classifier over the vocabulary, whose
    argmax is the greedy next token."""

    name = "language_model"


def encode_prompt(model: ServedModel, params: GenerateParams, max_tokens: int, max_steps: int) -> np.ndarray:
    """The prompt's token ids after every check of the request; raises what is wrong and what was expected."""
    info = model.runtime.info
    if not info.is_language_model:
        raise WrongTask(
            f"model {model.key} is a {info.task} classifier; Generate needs a language model "
            "(task language_model)"
        )
    if not params.prompt:
        raise InvalidChunk("prompt is empty; expected at least 1 character")
    index = {token: i for i, token in enumerate(info.vocabulary)}
    for position, char in enumerate(params.prompt):
        if char not in index:
            raise InvalidChunk(
                f"prompt character {char!r} at position {position} is not in the vocabulary of model "
                f"{model.key} ({len(index)} characters)"
            )
    if len(params.prompt) > max_steps:
        raise LimitExceeded(
            f"prompt has {len(params.prompt)} characters, the server's limit per chunk is {max_steps}"
        )
    if params.max_tokens < 1:
        raise InvalidChunk(f"max_tokens is {params.max_tokens}; expected 1 to {max_tokens}")
    if params.max_tokens > max_tokens:
        raise LimitExceeded(f"max_tokens is {params.max_tokens}, the server's limit is {max_tokens}")
    if not math.isfinite(params.temperature) or params.temperature < 0:
        raise InvalidChunk(f"temperature is {params.temperature}; expected a finite value >= 0 (0 is greedy)")
    if not 0 <= params.top_k <= len(index):
        raise InvalidChunk(f"top_k is {params.top_k}; expected 0 (all) to the vocabulary size {len(index)}")
    for number, stop in enumerate(params.stop):
        if not stop:
            raise InvalidChunk(f"stop string {number} is empty; expected at least 1 character")
    return np.fromiter((index[char] for char in params.prompt), dtype=np.int64, count=len(params.prompt))


class Sampler:
    """One generation's choice of the next token, from its own seeded generator."""

    def __init__(self, temperature: float, top_k: int, seed: int) -> None:
        self.temperature = temperature
        self.top_k = top_k
        self.rng = np.random.default_rng(seed)

    def pick(self, result: RowResult) -> int:
        """The next token after the row's last step."""
        if self.temperature == 0:
            return int(result.labels[-1])  # the batcher's argmax of the logits themselves
        # float64: the cumulative sum's rounding stays far below the spacing of a uniform draw.
        logits = result.logits[-1].astype(np.float64)
        if 0 < self.top_k < logits.shape[0]:
            threshold = np.partition(logits, -self.top_k)[-self.top_k]
            logits[logits < threshold] = -np.inf
        cumulative = np.cumsum(np.exp((logits - logits.max()) / self.temperature))
        token = int(np.searchsorted(cumulative, self.rng.random() * cumulative[-1], side="right"))
        return min(token, logits.shape[0] - 1)  # a draw that rounds up to the total picks the last token


class Outbox:
    """The tokens a generation has made and not yet sent, and the writer task that sends them: each send
    takes everything waiting as one `Piece` once `tokens_per_message()` have gathered (whatever is left at
    the end), so a writer that falls behind sends fewer, larger messages."""

    def __init__(
        self,
        emit: Callable[[Piece], Awaitable[None]],
        tokens_per_message: Callable[[], int] = lambda: 1,
        limit: int = MAX_UNSENT_TOKENS,
    ) -> None:
        self._emit = emit
        self._tokens_per_message = tokens_per_message
        self._limit = limit
        self._ids: list[int] = []
        self._texts: list[str] = []
        self._index = 0  # position of the first unsent token
        self._ended = False
        self._waiting = asyncio.Event()  # tokens to send, or the end
        self._room = asyncio.Event()  # fewer than `limit` unsent, or the writer has stopped
        self._room.set()
        self._writer = asyncio.ensure_future(self._send_all())
        self._writer.add_done_callback(lambda _: self._room.set())

    @property
    def full(self) -> bool:
        return len(self._ids) >= self._limit

    def add(self, token: int, text: str) -> None:
        self._ids.append(token)
        self._texts.append(text)
        if len(self._ids) >= self._tokens_per_message():
            self._waiting.set()
        if len(self._ids) >= self._limit:
            self._room.clear()

    async def wait_for_room(self) -> None:
        await self._room.wait()
        self.raise_failure()

    def raise_failure(self) -> None:
        """A writer that failed (the client's call broke) stops the generation with its error."""
        if self._writer.done() and not self._writer.cancelled() and self._writer.exception() is not None:
            raise self._writer.exception()

    async def finish(self) -> None:
        """Send what is left, then return; a cancel here stops the writer too."""
        self._ended = True
        self._waiting.set()
        try:
            await self._writer
        finally:
            self._writer.cancel()

    def cancel(self) -> None:
        self._writer.cancel()

    async def _send_all(self) -> None:
        while True:
            while not self._ids or (len(self._ids) < self._tokens_per_message() and not self._ended):
                if self._ended:
                    return
                self._waiting.clear()
                await self._waiting.wait()
            piece = Piece(self._ids, "".join(self._texts), self._index)
            self._ids, self._texts = [], []
            self._index += len(piece.ids)
            self._room.set()
            await self._emit(piece)


def tokens_per_message(generations: int) -> int:
    """Tokens a generation gathers before it sends, with this many open on its model: the write budget."""
    return min(MAX_TOKENS_PER_MESSAGE, max(1, -(-generations // MESSAGES_PER_STEP)))


def _stop_matched(text: str, stops: tuple[str, ...]) -> str:
    return next((stop for stop in stops if text.endswith(stop)), "")


async def _step(model: ServedModel, stream: StreamState, tokens: np.ndarray) -> RowResult:
    """One row through the batcher from the stream's state; the stream keeps the new state."""
    result = await model.batcher.infer(tokens, stream.states, stream)
    stream.states = result.states
    stream.steps += tokens.shape[0]
    model.metrics.steps.inc(tokens.shape[0])
    return result


async def _make(
    model: ServedModel, stream: StreamState, params: GenerateParams, prompt: np.ndarray, outbox: Outbox
) -> GenerationEnd:
    """Step until max_tokens, a stop string or shutdown, adding each token to the outbox."""
    vocabulary = model.runtime.info.vocabulary
    sampler = Sampler(params.temperature, params.top_k, params.seed)
    longest_stop = max((len(stop) for stop in params.stop), default=0)
    tail = ""  # the text's last characters, as many as the longest stop string
    result = await _step(model, stream, prompt)
    for index in range(params.max_tokens):
        token = sampler.pick(result)
        text = vocabulary[token]
        outbox.add(token, text)
        if longest_stop:
            tail = (tail + text)[-longest_stop:]
            stop = _stop_matched(tail, params.stop)
            if stop:
                return GenerationEnd(STOP_STRING, index + 1, stop)
        if stream.interrupted is not None:
            return GenerationEnd(SERVER_SHUTDOWN, index + 1)
        if index + 1 == params.max_tokens:
            return GenerationEnd(MAX_TOKENS, index + 1)
        if outbox.full:
            # Paused: the batcher stops waiting for this row, so the others' calls go without it.
            model.batcher.forget(stream)
            await outbox.wait_for_room()
        outbox.raise_failure()
        result = await _step(model, stream, np.array([token], dtype=np.int64))
        # A call the batcher ran inline (a lone row) returns without suspending: yield once, so the writer,
        # new generations (which then share the calls) and cancellation get their turn.
        await asyncio.sleep(0)
    raise AssertionError("unreachable: the loop returns at max_tokens")


async def run_generation(
    store: StateStore,
    model: ServedModel,
    params: GenerateParams,
    prompt: np.ndarray,
    idle_timeout_s: float,
    emit: Callable[[Piece], Awaitable[None]],
    caller: str | None = None,
) -> GenerationEnd:
    """Generate until max_tokens, a stop string or shutdown, awaiting `emit` for each piece of text in
    order (one writer task, never two sends at once); returns once the last piece has been sent. A
    cancelled caller frees the stream (and its row) at once. `caller` counts against its own stream
    limit, as a Stream's does."""
    stream = store.open(model, idle_timeout_s, caller)
    model.open_generations += 1
    outbox = Outbox(emit, lambda: tokens_per_message(model.open_generations))
    reason = "error"
    try:
        end = await _make(model, stream, params, prompt, outbox)
        reason = SERVER_SHUTDOWN if end.reason == SERVER_SHUTDOWN else "completed"
    except asyncio.CancelledError:
        reason = "cancelled"
        raise
    finally:
        model.open_generations -= 1
        store.close(stream, reason)  # the row goes before the tail is sent
        if reason in ("error", "cancelled"):
            outbox.cancel()
    await outbox.finish()
    return end


async def generate(
    engine: InferenceEngine,
    model: ServedModel,
    params: GenerateParams,
    emit: Callable[[Piece], Awaitable[None]],
) -> GenerationEnd:
    """Continue a language model's prompt on `engine`, awaiting `emit` for each piece of text (one or more
    tokens); bad requests raise before any token (see `encode_prompt`)."""
    config = engine.config
    prompt = encode_prompt(model, params, config.max_generate_tokens, config.max_chunk_steps)
    return await run_generation(
        engine.store, model, params, prompt, engine.idle_timeout_s(0), emit, current_caller()
    )
