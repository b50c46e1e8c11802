"""Generation on a language model: the prompt as one chunk, then one token per step, fed back as input.

Each open generation is a stream of the StateStore (so the stream limit, metrics, drain and shutdown apply
to it as to any stream) and one row of its model's batcher at every step: N generations in step share one
onnxruntime call per step. The next step's row is queued before the token is handed to the caller, so a
slow client write never keeps a row out of the next call.

Sampling is reproducible: every generation draws from its own `numpy.random.Generator(seed)`, never a
shared one, so the same request gives the same text whatever else the server runs. Temperature 0 is greedy
(the argmax of the logits, no draw). Otherwise p ~ softmax(log(scores) / temperature) over the top_k most
likely tokens (all when top_k is 0), and the token is the first whose cumulative p exceeds one uniform draw.

Knows nothing of gRPC: `service/frontends/` translates requests to `GenerateParams` and tokens back.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np

from seqserve.service.batcher import RowResult
from seqserve.service.errors import InvalidChunk, LimitExceeded, WrongTask
from seqserve.service.repository import ServedModel
from seqserve.service.state import SHUTDOWN, StateStore, StreamState

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


@dataclass(frozen=True, slots=True)
class Token:
    id: int
    text: str
    index: int  # position in the generation, from 0


@dataclass(frozen=True)
class GenerationEnd:
    reason: str  # MAX_TOKENS, STOP_STRING or SERVER_SHUTDOWN
    tokens: int
    stop: str = ""  # the stop string that matched


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
            return int(result.labels[-1])  # argmax of the logits themselves
        with np.errstate(divide="ignore"):
            logits = np.log(result.scores[-1].astype(np.float64)) / self.temperature
        if 0 < self.top_k < logits.shape[0]:
            threshold = np.partition(logits, -self.top_k)[-self.top_k]
            logits[logits < threshold] = -np.inf
        p = np.exp(logits - logits.max())
        cumulative = np.cumsum(p / p.sum())
        token = int(np.searchsorted(cumulative, self.rng.random(), side="right"))
        return min(token, logits.shape[0] - 1)  # rounding can leave the last cumulative a hair under 1


def _stop_matched(text: str, stops: tuple[str, ...]) -> str:
    return next((stop for stop in stops if text.endswith(stop)), "")


async def _step(model: ServedModel, stream: StreamState, tokens: np.ndarray) -> RowResult:
    """One row through the batcher from the stream's state; the stream keeps the new state."""
    result = await model.batcher.infer(tokens, stream.states, stream)
    stream.states = result.states
    stream.steps += tokens.shape[0]
    model.metrics.steps.inc(tokens.shape[0])
    return result


async def generate(
    store: StateStore,
    model: ServedModel,
    params: GenerateParams,
    prompt: np.ndarray,
    idle_timeout_s: float,
    emit: Callable[[Token], Awaitable[None]],
    caller: str | None = None,
) -> GenerationEnd:
    """Generate until max_tokens, a stop string or shutdown, awaiting `emit` for every token in order.
    A cancelled caller frees the stream (and its row) at once. `caller` counts against its own stream
    limit, as a Stream's does."""
    stream = store.open(model, idle_timeout_s, caller)
    vocabulary = model.runtime.info.vocabulary
    sampler = Sampler(params.temperature, params.top_k, params.seed)
    reason = "error"
    pending: asyncio.Future | None = None
    try:
        result = await _step(model, stream, prompt)
        text = ""
        for index in range(params.max_tokens):
            token = sampler.pick(result)
            text += vocabulary[token]
            stop = _stop_matched(text, params.stop)
            done = bool(stop) or index + 1 == params.max_tokens or stream.interrupted is not None
            if not done:
                # Queue the next step first: this row joins the next call even while the client reads.
                pending = asyncio.ensure_future(_step(model, stream, np.array([token], dtype=np.int64)))
            await emit(Token(token, vocabulary[token], index))
            if stream.interrupted is not None:
                reason = SERVER_SHUTDOWN
                return GenerationEnd(SERVER_SHUTDOWN, index + 1)
            if done:
                reason = "completed"
                return GenerationEnd(STOP_STRING if stop else MAX_TOKENS, index + 1, stop)
            result = await pending
            pending = None
        raise AssertionError("unreachable: the loop returns at max_tokens")
    except asyncio.CancelledError:
        reason = "cancelled"
        raise
    finally:
        if pending is not None:
            pending.cancel()
        store.close(stream, reason)
