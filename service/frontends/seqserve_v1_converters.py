"""Proto messages <-> numpy arrays and domain records. Validation of a chunk's bytes lives here."""

from __future__ import annotations

import numpy as np

from seqserve.declaration import V2_DATATYPES
from seqserve.service.engine import (
    InvalidChunk,
    IssuedCheckpoint,
    LimitExceeded,
    ServedModel,
    ServiceError,
    StreamOptions,
    StreamState,
)
from seqserve.service.frontends import tensors
from seqserve.service.frontends.values import all_finite
from seqserve.service.kinds import forecaster as forecasting
from seqserve.service.kinds import language_model as generation
from seqserve.service.kinds import seq2seq
from seqserve.service.kinds.classifier import RowResult
from seqserve.service.kinds.tensors import TensorAnswer, check_inputs
from seqserve.v1 import seqserve_pb2 as pb
from seqserve.vocabularies import Translation

_FLOAT32 = np.dtype("<f4")
_STOP_REASONS = {
    generation.MAX_TOKENS: pb.GENERATE_STOP_REASON_MAX_TOKENS,
    generation.STOP_STRING: pb.GENERATE_STOP_REASON_STOP_STRING,
    generation.SERVER_SHUTDOWN: pb.GENERATE_STOP_REASON_SERVER_SHUTDOWN,
}


def values_array(
    message: pb.StreamChunk | pb.Sequence, model: ServedModel, kind: str, index: int, max_steps: int | None
) -> np.ndarray | tuple[np.ndarray, ...]:
    """float32 [steps, features] over the message's bytes (no copy); a bad message raises what is wrong.
    A language model's message carries token ids instead: int64 [steps]; a declared graph's, its named
    stream inputs (one array each, in the declaration's order)."""
    if model.declared:
        return declared_inputs(message, model, f"{kind} {index}", max_steps)
    if model.runtime.info.is_language_model:
        return tokens_array(message, model, kind, index, max_steps)
    steps, values = message.steps, message.values
    features = model.runtime.info.features
    if message.tokens:
        raise InvalidChunk(
            f"{kind} {index} has {len(message.tokens)} tokens; model {model.key} is a "
            f"{model.runtime.info.task} classifier and takes float32 values ({features} features per step), "
            "not tokens"
        )
    if 0 < steps <= (max_steps or steps) and len(values) == 4 * steps * features:
        x = np.frombuffer(values, dtype=_FLOAT32).reshape(steps, features)
        if all_finite(x):
            return x.reshape(steps) if model.kind.name == forecasting.Forecaster.name else x
    raise _problem(steps, values, model, f"{kind} {index}", max_steps)


def _problem(steps: int, values: bytes, model: ServedModel, what: str, max_steps: int | None) -> ServiceError:
    """The first thing wrong with a chunk or sequence, in the numbers the client sent (steps, bytes) and
    what the model expects."""
    features = model.runtime.info.features
    size = len(values)
    expected = f"steps x {features} features x 4 bytes"
    if steps == 0:
        return InvalidChunk(
            f"{what} is empty (steps=0, {size} bytes of values); expected steps >= 1 and {expected}"
        )
    if max_steps is not None and steps > max_steps:
        return LimitExceeded(f"{what} has steps={steps}, the server's limit per chunk is {max_steps}")
    want = 4 * steps * features
    if size % 4:
        return InvalidChunk(
            f"{what} has {size} bytes of values, not a multiple of 4 (float32 values expected); "
            f"model {model.key} expects steps={steps} x {features} features x 4 bytes = {want} bytes"
        )
    if size != want and size % (4 * steps) == 0 and size > 0:
        return InvalidChunk(
            f"{what} has {size} bytes for steps={steps}, that is {size // (4 * steps)} features per step; "
            f"model {model.key} expects {features} features: {steps} x {features} x 4 = {want} bytes"
        )
    if size != want:
        return InvalidChunk(
            f"{what} has {size} bytes of values for steps={steps}; model {model.key} expects "
            f"{expected} = {want} bytes"
        )
    x = np.frombuffer(values, dtype=_FLOAT32).reshape(steps, features)
    step, feature = np.argwhere(~np.isfinite(x))[0].tolist()
    return InvalidChunk(
        f"{what} has {x[step, feature]} at step {step}, feature {feature}; expected finite values"
    )


def tokens_array(
    message: pb.StreamChunk | pb.Sequence, model: ServedModel, kind: str, index: int, max_steps: int | None
) -> np.ndarray:
    """A language model's chunk or sequence: int64 token ids [steps]; a bad message raises what is wrong."""
    what, steps, vocabulary = f"{kind} {index}", message.steps, len(model.runtime.info.vocabulary)
    if message.values:
        raise InvalidChunk(
            f"{what} has {len(message.values)} bytes of values; model {model.key} is a language model and "
            "takes token ids in `tokens`"
        )
    if steps == 0 or not message.tokens:
        raise InvalidChunk(
            f"{what} is empty ({steps} steps, {len(message.tokens)} tokens); expected at least 1"
        )
    if max_steps is not None and steps > max_steps:
        raise LimitExceeded(f"{what} has {steps} steps, the server's limit per chunk is {max_steps}")
    if len(message.tokens) != steps:
        raise InvalidChunk(
            f"{what} has {len(message.tokens)} tokens for {steps} steps; expected one per step"
        )
    tokens = np.fromiter(message.tokens, dtype=np.int64, count=steps)
    if int(tokens.max()) >= vocabulary:
        step = int(np.argmax(tokens >= vocabulary))
        raise InvalidChunk(
            f"{what} has token {tokens[step]} at step {step}; model {model.key} has token ids 0 to "
            f"{vocabulary - 1}"
        )
    return tokens


def declared_inputs(
    message: pb.StreamChunk | pb.Sequence, model: ServedModel, what: str, max_steps: int | None
) -> tuple[np.ndarray, ...]:
    if message.values or message.tokens:
        raise InvalidChunk(
            f"{what} has values or tokens; model {model.key} is a declared graph and takes named tensors "
            "in `tensors`"
        )
    arrays = {}
    for tensor in message.tensors:
        if tensor.name in arrays:
            raise InvalidChunk(f"{what} has tensor {tensor.name} twice; expected each input once")
        arrays[tensor.name] = tensors.to_array(
            tensor.name, tensor.datatype, list(tensor.shape), tensor.data, what
        )
    inputs = check_inputs(model.runtime.declaration, arrays, model.key, what, max_steps)
    if message.steps and message.steps != inputs[0].shape[0]:
        raise InvalidChunk(f"{what} says steps={message.steps}, its tensors have {inputs[0].shape[0]}")
    return inputs


def constants(message: pb.StreamOpen, model: ServedModel) -> dict[str, object]:
    """The constants a stream picked at open, as plain values (checked against the choices by the engine)."""
    chosen: dict[str, object] = {}
    for tensor in message.constants:
        array = tensors.to_array(tensor.name, tensor.datatype, list(tensor.shape), tensor.data, "open")
        chosen[tensor.name] = array.item() if array.size == 1 else array.tolist()
    return chosen


def _tensor(message: pb.Tensor, name: str, array: np.ndarray) -> None:
    message.name = name
    message.datatype = tensors.datatype(array)
    message.shape.extend(array.shape)
    message.data = tensors.to_bytes(array)


def fill_outputs(
    result: pb.ChunkResult | pb.SequenceResult,
    answer: TensorAnswer,
    model: ServedModel,
    last_step: int,
    include_scores: bool,
) -> None:
    """A declared graph's answer: its named outputs, and for an output declared with labels one
    StepResult per step (label, probabilities), as a classifier answers."""
    for name, array in answer.tensors.items():
        _tensor(result.outputs.add(), name, array)
    for name, labels in model.kind.scored:
        fill_steps(result.results, model.kind.classified(answer, name), last_step, labels, include_scores)


def forecast_ask(ask: pb.ForecastAsk) -> forecasting.ForecastAsk:
    return forecasting.ForecastAsk(ask.horizon, tuple(ask.quantiles))


def histories(request: pb.ForecastRequest) -> list[forecasting.History]:
    return [
        forecasting.History(
            np.fromiter(series.values, dtype=_FLOAT32, count=len(series.values)),
            series.start_unix_s if series.HasField("start_unix_s") else None,
        )
        for series in request.series
    ]


def forecast(answer: forecasting.ForecastAnswer) -> pb.Forecast:
    message = pb.Forecast(from_step=answer.from_step, mean=answer.mean.tolist(), scale=answer.scale.tolist())
    for level, values in zip(answer.levels, answer.quantiles, strict=True):
        message.quantiles.add(level=level, values=values.tolist())
    return message


def translate_options(request: pb.TranslateRequest) -> seq2seq.TranslateOptions:
    return seq2seq.TranslateOptions(
        beam=request.beam_width,
        nbest=request.nbest,
        max_steps=request.max_steps,
        length_penalty=request.length_penalty,
    )


def translation(text: str, n_best: list[Translation]) -> pb.Translation:
    return pb.Translation(
        input=text,
        hypotheses=[pb.Hypothesis(output=h.output, score=h.score, finished=h.finished) for h in n_best],
    )


def generate_params(request: pb.GenerateRequest) -> generation.GenerateParams:
    return generation.GenerateParams(
        prompt=request.prompt,
        max_tokens=request.max_tokens,
        temperature=request.temperature,
        top_k=request.top_k,
        seed=request.seed,
        stop=tuple(request.stop),
    )


def generated_text(piece: generation.Piece) -> pb.GenerateResponse:
    return pb.GenerateResponse(text=pb.GeneratedText(text=piece.text, tokens=piece.ids, index=piece.index))


def generate_ended(end: generation.GenerationEnd, message: str = "") -> pb.GenerateResponse:
    return pb.GenerateResponse(
        ended=pb.GenerateEnded(
            reason=_STOP_REASONS[end.reason], tokens=end.tokens, stop=end.stop, message=message
        )
    )


def model_info(model: ServedModel) -> pb.ModelInfo:
    info = model.runtime.info
    return pb.ModelInfo(
        name=info.name,
        version=info.version,
        task=info.task,
        cell=info.cell,
        layers=info.layers,
        hidden=info.hidden,
        bidirectional=info.bidirectional,
        streamable=info.streamable,
        features=info.features,
        labels=info.labels,
        precision=info.precision,
        opset=info.opset,
        sha256=info.sha256,
        test_accuracy=float(info.test_metrics.get("test_accuracy", info.test_metrics.get("accuracy", 0.0))),
        execution_provider=model.runtime.provider,
        default_version=model.default,
        vocabulary=info.vocabulary,
        **(_declared_info(model) if model.declared else {}),
        **(_forecast_info(info.forecast) if info.forecast else {}),
    )


def _forecast_info(forecast: dict[str, object]) -> dict[str, object]:
    return {
        "forecast_horizon": forecast.get("horizon", 0),
        "forecast_distribution": forecast.get("distribution", ""),
        "forecast_calendar_origin": forecast.get("calendar_origin") or "",
        "forecast_step_seconds": forecast.get("step_seconds") or 0.0,
    }


def _declared_info(model: ServedModel) -> dict[str, object]:
    declaration = model.runtime.declaration
    inputs = [
        pb.TensorSpec(
            name=i.name, datatype=V2_DATATYPES[i.dtype], shape=i.sent_shape, frames=i.time_axis is None
        )
        for i in declaration.inputs
    ]
    outputs = [
        pb.TensorSpec(
            name=o.name, datatype=V2_DATATYPES[o.dtype], shape=model.output_shapes[o.name], labels=o.labels
        )
        for o in declaration.outputs
    ]
    constants = []
    for c in declaration.constants:
        spec = pb.ConstantSpec(name=c.name, datatype=V2_DATATYPES[c.dtype], shape=c.shape)
        for choice in c.choices:
            _tensor(spec.choices.add(), c.name, c.value(choice))
        constants.append(spec)
    return {
        "inputs": inputs, "outputs": outputs, "constants": constants, "batched": declaration.batchable,
        "batch_note": model.runtime.batch_note,
    }  # fmt: skip


def fill_steps(container, result: RowResult, last_step: int, labels: list[str], include_scores: bool) -> None:
    """Append one StepResult per output step; `last_step` is the absolute index of the row's last step."""
    first = last_step - len(result.labels) + 1
    scores = result.scores.tolist() if include_scores else None
    for offset, index in enumerate(result.labels.tolist()):
        step = container.add(step=first + offset, label_index=index, label=labels[index])
        if scores is not None:
            step.scores.extend(scores[offset])


def stream_options(message: pb.StreamOpen) -> StreamOptions:
    return StreamOptions(
        include_scores=message.include_scores,
        final_only=message.emit == pb.EMIT_MODE_FINAL_ONLY,
        idle_timeout_ms=message.idle_timeout_ms,
        checkpoint_every_chunks=message.checkpoint_every_chunks,
    )


def opened(stream: StreamState, resumed: bool) -> pb.StreamResponse:
    return pb.StreamResponse(
        opened=pb.StreamOpened(
            stream_id=stream.id,
            model=model_info(stream.model),
            idle_timeout_ms=round(stream.idle_timeout_s * 1000),
            streamable=stream.model.streamable,
            resumed=resumed,
            resumed_chunks=stream.chunks if resumed else 0,
            resumed_steps=stream.steps if resumed else 0,
        )
    )


def _fill_checkpoint(message: pb.Checkpoint, checkpoint: IssuedCheckpoint) -> None:
    message.token = checkpoint.token
    message.chunks = checkpoint.chunks
    message.steps = checkpoint.steps
    message.expires_unix_s = checkpoint.expires_at


def chunk_response(
    chunk_index: int,
    result: RowResult | TensorAnswer | None,
    last_step: int,
    labels: list[str],
    include_scores: bool,
    checkpoint: IssuedCheckpoint | None = None,
    model: ServedModel | None = None,
) -> pb.StreamResponse:
    """`model` is needed for a declared graph's answer (a TensorAnswer) only."""
    response = pb.StreamResponse()
    response.chunk.chunk_index = chunk_index
    if isinstance(result, TensorAnswer):
        fill_outputs(response.chunk, result, model, last_step, include_scores)
    elif result is not None:
        fill_steps(response.chunk.results, result, last_step, labels, include_scores)
    if checkpoint is not None:
        _fill_checkpoint(response.chunk.checkpoint, checkpoint)
    return response


def ended(
    reason: int,
    steps: int,
    final: RowResult | None,
    labels: list[str],
    include_scores: bool,
    message: str = "",
    checkpoint: IssuedCheckpoint | None = None,
) -> pb.StreamResponse:
    response = pb.StreamResponse()
    response.ended.reason = reason
    response.ended.steps = steps
    response.ended.message = message
    if final is not None:
        fill_steps(response.ended.final_results, final, steps - 1, labels, include_scores)
    if checkpoint is not None:
        _fill_checkpoint(response.ended.checkpoint, checkpoint)
    return response
