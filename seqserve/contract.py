"""The model contract, defined once: tensor names and shapes, `model.json`, the repository layout.

Exporter, service, tests and benchmarks import these names; nothing else spells them.
See docs/design.md section 2. This module imports only the standard library so the serving image can use it.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

# Tensor names of an exported graph.
INPUT_X = "x"  # float32 [batch, time, features], raw (normalisation is inside the graph)
INPUT_TOKENS = "tokens"  # language models only, in place of x: int64 [batch, time] token ids
INPUT_H0 = "h0"  # float32 [layers * directions, batch, hidden]
INPUT_C0 = "c0"  # LSTM only, as h0
INPUT_LENGTHS = "lengths"  # int32 [batch], valid steps per row
OUTPUT_LOGITS = "logits"  # many_to_many, language_model [batch, time, classes]; many_to_one [batch, classes]
OUTPUT_HN = "hn"  # state at each row's last valid step, feed back as h0
OUTPUT_CN = "cn"  # LSTM only, feed back as c0
# A forecaster's graph (training/forecaster.py): raw values in, the next value's distribution out, and
# everything it keeps of the past as state: h0/c0 as above plus the last raw values, a step count, the
# calendar clock and the running mean of |value| (its per-series scale), each paired with the output that
# continues it.
INPUT_Y = "y"  # float32 [batch, time], raw observations
INPUT_LAGS, OUTPUT_LAGS = "lags", "lags_out"  # float32 [batch, memory], oldest first
INPUT_COUNT, OUTPUT_COUNT = "count", "count_out"  # float32 [batch, 1], steps observed
# float32 [batch, 1], the calendar phase of the next step, in steps mod the periods' cycle; a stream starts
# at calendar_clock(its first observation's time), 0 at the model's calendar_origin.
INPUT_CLOCK, OUTPUT_CLOCK = "clock", "clock_out"
INPUT_LEVEL, OUTPUT_LEVEL = "level", "level_out"  # float32 [batch, 1], running mean of |value|
OUTPUT_LOC, OUTPUT_SCALE = "loc", "scale"  # float32 [batch, time]: the next value ~ Normal(loc, scale^2)
# A sequence-to-sequence model (training/seq2seq.py) is two graphs in one version, ENCODER_FILE and
# DECODER_FILE in place of model.onnx. The encoder takes `tokens` [batch, time] and `lengths`, and answers
# `memory` and the decoder's first state as hn (, cn) [1, batch, hidden]; the decoder step takes the
# previous output token, h0 (, c0), memory and lengths (the memory's valid steps), and answers
# log-probabilities over the output vocabulary, hn (, cn) and the attention weights.
SEQ2SEQ = "seq2seq"
ENCODER_FILE, DECODER_FILE = "encoder.onnx", "decoder_step.onnx"
OUTPUT_MEMORY = INPUT_MEMORY = "memory"  # float32 [batch, time, memory]; zero past a row's length
INPUT_PREVIOUS = "previous"  # int64 [batch], the output token chosen at the step before (start token first)
OUTPUT_LOG_PROBS = "log_probs"  # float32 [batch, output vocabulary]
OUTPUT_ATTENTION = "attention"  # float32 [batch, time], each row sums to 1 over its valid steps

Cell = Literal["rnn", "gru", "lstm"]
Task = Literal["many_to_one", "many_to_many", "language_model"]
Precision = Literal["fp32", "int8"]
CELLS: tuple[str, ...] = ("rnn", "gru", "lstm")
# What a classifier (SequenceClassifier, `seqserve train --task`) can be.
TASKS: tuple[str, ...] = ("many_to_one", "many_to_many")
# A language model: many-to-many over token ids, where the class at step t is the token at step t + 1.
# Its graph takes `tokens` in place of `x`, its classes are its vocabulary (`ModelInfo.vocabulary`, index =
# token id), and it is always unidirectional; h0/c0/lengths/logits/hn/cn are as for many_to_many.
LANGUAGE_MODEL = "language_model"
# A graph seqserve did not write, served through its declaration (seqserve/declaration.py): its model.json
# is optional, and its inputs, outputs and states are whatever the declaration names.
DECLARED = "declared"
DECLARED_CELL = "graph"
FORECAST = "forecast"
MODEL_TASKS: tuple[str, ...] = (*TASKS, LANGUAGE_MODEL, DECLARED, FORECAST, SEQ2SEQ)
PRECISIONS: tuple[str, ...] = ("fp32", "int8")

# Parity tolerance between PyTorch and ONNX (and between chunked and whole runs), float32.
PARITY_TOLERANCE = 1e-5
# LayerNormalization needs opset 17; ORT's CPU and CUDA EPs both run the RNN ops at this opset.
DEFAULT_OPSET = 17
MIN_OPSET = 17

MODEL_FILE = "model.onnx"
METADATA_FILE = "model.json"
METADATA_PREFIX = "seqserve."  # ONNX metadata_props keys are METADATA_PREFIX + ModelInfo field
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class ContractError(ValueError):
    """A model or repository does not follow the contract; the message says what and where."""


def state_inputs(cell: str) -> tuple[str, ...]:
    """Recurrent state inputs, in the order the graph declares them."""
    return (INPUT_H0, INPUT_C0) if cell == "lstm" else (INPUT_H0,)


def state_outputs(cell: str) -> tuple[str, ...]:
    """Recurrent state outputs, paired index by index with `state_inputs`."""
    return (OUTPUT_HN, OUTPUT_CN) if cell == "lstm" else (OUTPUT_HN,)


def sequence_input(task: str) -> str:
    """The input that carries the sequence: token ids for a language model, features for the rest."""
    return INPUT_TOKENS if task == LANGUAGE_MODEL else INPUT_X


def per_step(task: str) -> bool:
    """True when logits hold every step ([batch, time, classes]), False for one per row."""
    return task != "many_to_one"


def input_names(cell: str, task: str = "many_to_one") -> tuple[str, ...]:
    return (sequence_input(task), *state_inputs(cell), INPUT_LENGTHS)


def output_names(cell: str) -> tuple[str, ...]:
    return (OUTPUT_LOGITS, *state_outputs(cell))


def check_model_name(name: str) -> str:
    if not _MODEL_NAME.match(name):
        raise ContractError(
            f"model name {name!r} is not valid: expected letters, digits, '.', '_' or '-' "
            "(starting with a letter or digit, at most 128 characters)"
        )
    return name


@dataclass
class ModelInfo:
    """Everything `model.json` holds; the same facts (less sha256) go into the ONNX metadata_props."""

    name: str
    version: int
    task: str
    cell: str
    layers: int
    hidden: int
    bidirectional: bool
    features: int
    labels: list[str]
    opset: int = DEFAULT_OPSET
    precision: str = "fp32"
    # sha256 of model.onnx; kept out of metadata_props since the file cannot hold its own hash.
    sha256: str = ""
    parity: dict[str, Any] = field(default_factory=dict)
    test_metrics: dict[str, Any] = field(default_factory=dict)
    # Language models only: the characters, index = token id (equal to `labels`: the class is the next
    # character). Left out of model.json and metadata_props for every other model.
    vocabulary: list[str] = field(default_factory=list)
    # Forecasters only: lags, periods, season, memory (the lags state's length), horizon (of training), the
    # calendar, and the rollout's scale multipliers per step (scale_multipliers).
    forecast: dict[str, Any] = field(default_factory=dict)
    # Sequence-to-sequence only (the input vocabulary is `vocabulary`, the output one `labels`, index =
    # token id): encoder_hidden, encoder_layers, memory, embedding, attention, start, end, pad, graphs
    # (name -> file).
    # `hidden` and `layers` are the decoder's, `bidirectional` the encoder's; sha256 is of the graphs'
    # bytes, encoder then decoder step.
    seq2seq: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_model_name(self.name)
        if self.task not in MODEL_TASKS:
            raise ContractError(f"task {self.task!r} is not one of {', '.join(MODEL_TASKS)}")
        if self.task == DECLARED:
            if self.cell != DECLARED_CELL or self.version < 1:
                raise ContractError(
                    f"a declared graph has cell {DECLARED_CELL!r} and a version >= 1, got {self.cell!r}, "
                    f"{self.version}"
                )
            return
        if self.cell not in CELLS:
            raise ContractError(f"cell {self.cell!r} is not one of {', '.join(CELLS)}")
        if self.precision not in PRECISIONS:
            raise ContractError(f"precision {self.precision!r} is not one of {', '.join(PRECISIONS)}")
        if self.layers < 1 or self.hidden < 1 or self.features < 1 or self.version < 1:
            raise ContractError(
                f"layers, hidden, features and version must be >= 1, got "
                f"{self.layers}, {self.hidden}, {self.features}, {self.version}"
            )
        if self.task == FORECAST:
            if self.labels or self.features != 1 or not self.forecast.get("memory"):
                raise ContractError(
                    f"a forecaster reads one value a step, has no labels and says its memory: got features "
                    f"{self.features}, labels {self.labels!r}, forecast {self.forecast!r}"
                )
            scale_multipliers(self.forecast, 1)  # a bad calibration fails the load, not a forecast
            return
        if self.task == SEQ2SEQ:
            self._check_seq2seq()
            return
        if len(self.labels) < 2:
            raise ContractError(f"a classifier needs at least 2 labels, got {self.labels!r}")
        if self.task == LANGUAGE_MODEL:
            self._check_language_model()
        elif self.vocabulary:
            raise ContractError(f"task {self.task!r} takes features, not tokens: expected no vocabulary")

    def _check_language_model(self) -> None:
        if self.vocabulary != self.labels:
            raise ContractError(
                f"a language model's labels are its vocabulary (the next token): got labels {self.labels!r}, "
                f"vocabulary {self.vocabulary!r}"
            )
        if len(set(self.vocabulary)) != len(self.vocabulary):
            raise ContractError(f"vocabulary {self.vocabulary!r} repeats an entry; expected distinct tokens")
        if self.bidirectional or self.features != 1:
            raise ContractError(
                f"a language model is unidirectional with one token per step: got bidirectional="
                f"{self.bidirectional}, features={self.features}"
            )

    def _check_seq2seq(self) -> None:
        details = self.seq2seq
        for name, tokens in (("vocabulary", self.vocabulary), ("labels", self.labels)):
            if len(tokens) < 3 or len(set(tokens)) != len(tokens):
                raise ContractError(
                    f"a seq2seq model's {name} {tokens!r}: expected 3 or more distinct tokens"
                )
        expected = (details.get("pad"), details.get("start"), details.get("end"))
        if (self.vocabulary[0], *self.labels[:2]) != expected or not details.get("memory"):
            raise ContractError(
                f"a seq2seq model pads its input with token 0 and starts and ends its output with tokens 0 "
                f"and 1, and says its memory size: got vocabulary[0] {self.vocabulary[0]!r}, labels[:2] "
                f"{self.labels[:2]!r}, seq2seq {details!r}"
            )

    @property
    def streamable(self) -> bool:
        """A bidirectional model needs the whole sequence, so it answers only at end of stream; a seq2seq
        model answers once its input is whole."""
        return not self.bidirectional and self.task != SEQ2SEQ

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def classes(self) -> int:
        return len(self.labels)

    def state_shape(self, batch: int) -> tuple[int, int, int]:
        """Shape of each state tensor (h0, and c0 for LSTM) for `batch` rows (a seq2seq: its decoder's)."""
        directions = 1 if self.task == SEQ2SEQ else self.directions
        return (self.layers * directions, batch, self.hidden)

    @property
    def is_language_model(self) -> bool:
        return self.task == LANGUAGE_MODEL

    def to_dict(self) -> dict[str, Any]:
        data = {**asdict(self), "streamable": self.streamable}
        if not self.vocabulary:
            del data["vocabulary"]  # every model that is not a language model keeps its model.json as it was
        if not self.forecast:
            del data["forecast"]
        if not self.seq2seq:
            del data["seq2seq"]
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "model.json") -> ModelInfo:
        known = {f.name for f in fields(cls)}
        required = {
            "name",
            "version",
            "task",
            "cell",
            "layers",
            "hidden",
            "bidirectional",
            "features",
            "labels",
        }
        missing = sorted(required - data.keys())
        if missing:
            raise ContractError(f"{source}: missing field(s) {', '.join(missing)}")
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except TypeError as exc:
            raise ContractError(f"{source}: {exc}") from exc

    def metadata_props(self) -> dict[str, str]:
        """ONNX metadata_props: one key per field, JSON-encoded values, sha256 left out."""
        return {
            METADATA_PREFIX + key: json.dumps(value, sort_keys=True)
            for key, value in self.to_dict().items()
            if key != "sha256"
        }

    @classmethod
    def from_metadata_props(cls, props: dict[str, str], source: str = "model.onnx") -> ModelInfo:
        data = {
            key[len(METADATA_PREFIX) :]: json.loads(value)
            for key, value in props.items()
            if key.startswith(METADATA_PREFIX)
        }
        return cls.from_dict(data, source=source)


def declared(name: str, version: int, sha256: str = "") -> ModelInfo:
    """The record of a graph seqserve did not write: what its declaration does not say."""
    return ModelInfo(
        name=name, version=version, task=DECLARED, cell=DECLARED_CELL, layers=0, hidden=0,
        bidirectional=False,
        features=0, labels=[], sha256=sha256,
    )  # fmt: skip


def declaration_for(info: ModelInfo, graph: str = MODEL_FILE) -> dict[str, Any]:
    """The declaration (seqserve/declaration.py) of a graph seqserve exported: h0/c0 -> hn/cn along axis 1,
    x (or tokens) [batch, time, ...], lengths, and logits with the model's labels. The exporter writes it
    beside model.json, and a version without one gets this: one mechanism serves every graph. A seq2seq
    version's two graphs are told apart by `graph`, their file name."""
    if info.task == FORECAST:
        return forecaster_declaration(info)
    if info.task == SEQ2SEQ:
        return seq2seq_declaration(info, graph)
    states = [
        {"input": name, "output": output, "batch_axis": 1}
        for name, output in zip(state_inputs(info.cell), state_outputs(info.cell), strict=True)
    ]
    logits: dict[str, Any] = {"name": OUTPUT_LOGITS, "batch_axis": 0, "labels": list(info.labels)}
    if per_step(info.task):
        logits["time_axis"] = 1
    return {
        "rendering": LANGUAGE_MODEL if info.is_language_model else "classifier",
        "states": states,
        "inputs": [{"name": sequence_input(info.task), "batch_axis": 0, "time_axis": 1}],
        "lengths": INPUT_LENGTHS,
        "outputs": [logits],
    }


def forecaster_declaration(info: ModelInfo) -> dict[str, Any]:
    """A forecaster's: h0/c0 on axis 1 and lags/count/clock/level on axis 0 as states, y [batch, time],
    lengths, and loc/scale per step."""
    states = [
        {"input": name, "output": output, "batch_axis": 1}
        for name, output in zip(state_inputs(info.cell), state_outputs(info.cell), strict=True)
    ]
    states += [
        {"input": name, "output": output, "batch_axis": 0}
        for name, output in (
            (INPUT_LAGS, OUTPUT_LAGS),
            (INPUT_COUNT, OUTPUT_COUNT),
            (INPUT_CLOCK, OUTPUT_CLOCK),
            (INPUT_LEVEL, OUTPUT_LEVEL),
        )
    ]
    return {
        "rendering": "forecaster",
        "states": states,
        "inputs": [{"name": INPUT_Y, "batch_axis": 0, "time_axis": 1}],
        "lengths": INPUT_LENGTHS,
        "outputs": [{"name": name, "batch_axis": 0, "time_axis": 1} for name in (OUTPUT_LOC, OUTPUT_SCALE)],
    }


def seq2seq_declaration(info: ModelInfo, graph: str) -> dict[str, Any]:
    """A seq2seq version's graph. The encoder: tokens [batch, time] with lengths, answering memory along
    time and the decoder's first state hn (, cn) [1, batch, hidden] as plain outputs (it keeps no state).
    The decoder step, a frame model (one step a call, no time axis): previous [batch], memory
    [batch, time, memory] and lengths [batch] (the memory's valid steps) as each row's frame, h0 (, c0)
    -> hn (, cn) along axis 1 as state, log_probs and attention as answers. The memory's time differs per
    word: this declaration alone leaves that dim free (`declaration.resolve(free_frame_dims=True)`), and
    the batcher zero-pads the rows of a call to the longest (service/engine/layout.py); the graph masks
    each row's attention by its lengths, so padding changes nothing."""
    states = list(zip(state_inputs(info.cell), state_outputs(info.cell), strict=True))
    if graph == ENCODER_FILE:
        return {
            "inputs": [{"name": INPUT_TOKENS, "batch_axis": 0, "time_axis": 1}],
            "lengths": INPUT_LENGTHS,
            "outputs": [
                {"name": OUTPUT_MEMORY, "batch_axis": 0, "time_axis": 1},
                *({"name": output, "batch_axis": 1} for _, output in states),
            ],
        }
    if graph == DECODER_FILE:
        return {
            "rendering": SEQ2SEQ,
            "states": [{"input": name, "output": output, "batch_axis": 1} for name, output in states],
            "inputs": [
                {"name": name, "batch_axis": 0, "time_axis": None}
                for name in (INPUT_PREVIOUS, INPUT_MEMORY, INPUT_LENGTHS)
            ],
            "outputs": [
                {"name": OUTPUT_LOG_PROBS, "batch_axis": 0},
                {"name": OUTPUT_ATTENTION, "batch_axis": 0},
            ],
        }
    raise ContractError(
        f"{info.name}: a seq2seq version's graphs are {ENCODER_FILE} and {DECODER_FILE}, not {graph!r}"
    )


def calendar_clock(start_unix_s: float, forecast: dict[str, Any]) -> float:
    """A forecaster stream's initial `clock` (its calendar position, in steps) when its first observation
    is at `start_unix_s`: steps since the model's `calendar_origin` (phase 0 of every period), every
    `step_seconds`, reduced modulo the periods' common cycle when they are whole steps (float32 keeps the
    phase exact). 0 for a model without a calendar."""
    import datetime

    step, origin, periods = (forecast.get(k) for k in ("step_seconds", "calendar_origin", "periods"))
    if not step or not origin or not periods:
        return 0.0
    at = datetime.datetime.fromisoformat(origin)
    if at.tzinfo is None:
        at = at.replace(tzinfo=datetime.UTC)
    steps = (start_unix_s - at.timestamp()) / step
    cycle = calendar_cycle(periods)
    return float(steps % cycle) if cycle else float(steps)


SCALE_BEYOND = ("sqrt", "last")  # how scale_multipliers extends past the measured steps


def scale_multipliers(forecast: dict[str, Any], horizon: int) -> list[float]:
    """m_1 .. m_horizon: what a forecaster's rollout multiplies the scale of its k-th step by, read from
    model.json's `forecast` dict. `scale_by_horizon` holds m_1 .. m_K, measured on held-out data after
    training (the rollout's k-step errors against its scale); past K, `scale_beyond` says how they go on:
    "sqrt" m_K * sqrt(k / K) (a random walk's error growth), "last" m_K. A dict without the key (or with
    an empty list) gives all 1: the model's own scale."""
    measured = [float(m) for m in forecast.get("scale_by_horizon") or ()]
    if not measured:
        return [1.0] * horizon
    rule = forecast.get("scale_beyond", SCALE_BEYOND[0])
    if rule not in SCALE_BEYOND or not all(math.isfinite(m) and m > 0 for m in measured):
        raise ContractError(
            f"forecast scale_by_horizon {measured!r} with scale_beyond {rule!r}: expected positive finite "
            f"multipliers and a rule of {', '.join(SCALE_BEYOND)}"
        )
    known = len(measured)
    return [
        measured[k - 1] if k <= known else measured[-1] * (math.sqrt(k / known) if rule == "sqrt" else 1.0)
        for k in range(1, horizon + 1)
    ]


def calendar_cycle(periods: list[float] | tuple[float, ...]) -> int:
    """The least common multiple of the calendar periods (where a forecaster's clock wraps), 0 when there
    are none or one is not a whole number of steps (then the clock never wraps)."""
    if not periods or not all(float(p).is_integer() for p in periods):
        return 0
    return math.lcm(*(int(p) for p in periods))


# --- Repository layout (Triton's): <repo>/<model>/<version>/model.onnx + model.json -----------------


def version_dir(repository: Path, name: str, version: int) -> Path:
    return Path(repository) / check_model_name(name) / str(version)


def list_versions(repository: Path, name: str) -> list[int]:
    """Numeric versions of a model that hold a model file (model.onnx, or a seq2seq's ENCODER_FILE),
    ascending. Half-written ones are skipped."""
    model_dir = Path(repository) / name
    if not model_dir.is_dir():
        return []
    return sorted(
        int(child.name)
        for child in model_dir.iterdir()
        if child.is_dir()
        and child.name.isdigit()
        and int(child.name) > 0
        and any((child / graph).is_file() for graph in (MODEL_FILE, ENCODER_FILE))
    )


def list_models(repository: Path) -> list[str]:
    repository = Path(repository)
    if not repository.is_dir():
        return []
    return sorted(
        child.name
        for child in repository.iterdir()
        if child.is_dir() and list_versions(repository, child.name)
    )


def read_model_info(version_path: Path) -> ModelInfo:
    path = Path(version_path) / METADATA_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ContractError(f"{path}: missing; every model version needs {METADATA_FILE}") from exc
    except json.JSONDecodeError as exc:
        raise ContractError(f"{path}: not valid JSON ({exc})") from exc
    return ModelInfo.from_dict(data, source=str(path))
