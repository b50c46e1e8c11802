"""seqserve: train, export and serve recurrent sequence models.

`from seqserve import Client, AsyncClient` loads the gRPC client on first use only: importing seqserve
itself stays cheap and imports no grpc (the training image has none).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"  # the one place the version lives; pyproject.toml reads it from here

if TYPE_CHECKING:
    from seqserve.service.client.answers import Answer as Answer
    from seqserve.service.client.answers import Classification as Classification
    from seqserve.service.client.answers import Ended as Ended
    from seqserve.service.client.answers import Forecast as Forecast
    from seqserve.service.client.answers import ModelInfo as ModelInfo
    from seqserve.service.client.client import AsyncClient as AsyncClient
    from seqserve.service.client.streams import AsyncStream as AsyncStream
    from seqserve.service.client.sync import Client as Client
    from seqserve.service.client.sync import Stream as Stream

_CLIENT = {
    "Client": "seqserve.service.client.sync",
    "Stream": "seqserve.service.client.sync",
    "AsyncClient": "seqserve.service.client.client",
    "AsyncStream": "seqserve.service.client.streams",
    "Answer": "seqserve.service.client.answers",
    "Ended": "seqserve.service.client.answers",
    "Forecast": "seqserve.service.client.answers",
    "Classification": "seqserve.service.client.answers",
    "ModelInfo": "seqserve.service.client.answers",
}
__all__ = ["__version__", *_CLIENT]


def __getattr__(name: str) -> Any:
    if name in _CLIENT:
        import importlib

        return getattr(importlib.import_module(_CLIENT[name]), name)
    raise AttributeError(f"module 'seqserve' has no attribute {name!r}")
