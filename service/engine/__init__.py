"""The engine: rows of recurrent state, batched across streams into onnxruntime calls.

It imports no grpc, no protobuf, no front door and no model kind (tests/service/test_boundaries.py proves
it). The front doors use only the names below; the server's wiring builds the engine from them.
"""

from seqserve.service.engine import errors
from seqserve.service.engine.checkpoints import IssuedCheckpoint, StateKeys
from seqserve.service.engine.errors import (
    AtCapacity,
    BadResumeToken,
    Draining,
    IdleTimeout,
    InferenceFailed,
    InvalidChunk,
    LimitExceeded,
    ModelNotFound,
    NoStateKey,
    OutOfOrder,
    ServiceError,
    Unauthenticated,
    UnparsableRequest,
    Unsupported,
    WrongTask,
)
from seqserve.service.engine.inference import InferenceEngine
from seqserve.service.engine.metrics import ModelTotals, ServiceMetrics
from seqserve.service.engine.repository import ModelRepository, ServedModel
from seqserve.service.engine.sequences import SequenceId, outcome
from seqserve.service.engine.state import IDLE_TIMEOUT, SHUTDOWN, StateStore, StreamOptions, StreamState

__all__ = [
    "IDLE_TIMEOUT",
    "SHUTDOWN",
    "AtCapacity",
    "BadResumeToken",
    "Draining",
    "IdleTimeout",
    "InferenceEngine",
    "InferenceFailed",
    "InvalidChunk",
    "IssuedCheckpoint",
    "LimitExceeded",
    "ModelNotFound",
    "ModelRepository",
    "ModelTotals",
    "NoStateKey",
    "OutOfOrder",
    "SequenceId",
    "ServedModel",
    "ServiceError",
    "ServiceMetrics",
    "StateKeys",
    "StateStore",
    "StreamOptions",
    "StreamState",
    "Unauthenticated",
    "UnparsableRequest",
    "Unsupported",
    "WrongTask",
    "errors",
    "outcome",
]
