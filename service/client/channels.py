"""Client channels to a seqserve server: plaintext, TLS (a CA to trust), mTLS (a client certificate too),
and a bearer token on every call. The load client, the CLI and the health probe all open channels here.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

TOKEN_ENV = "SEQSERVE_TOKEN"  # what the CLI's --token reads when not given

# gRPC's retry policy (gRFC A6) for a seqserve.v1 Stream refused at its open, as docs/operations.md
# recommends: pass it as the channel option ("grpc.service_config", STREAM_RETRY_POLICY). A server at a
# bound refuses RESOURCE_EXHAUSTED with grpc-retry-pushback-ms, which the client waits before the next
# attempt; behind HAProxy 2.6 that refusal reaches the client as CANCELLED. Only a call that got no response
# headers is retried: an opened stream never is.
STREAM_RETRY_POLICY = json.dumps({
    "methodConfig": [{
        "name": [{"service": "seqserve.v1.InferenceService", "method": "Stream"}],
        "retryPolicy": {
            "maxAttempts": 3, "initialBackoff": "0.05s", "maxBackoff": "1s", "backoffMultiplier": 2,
            "retryableStatusCodes": ["RESOURCE_EXHAUSTED", "CANCELLED"],
        },
    }],
})  # fmt: skip


@dataclass(frozen=True)
class ClientSecurity:
    """How to reach a secured server; the default is plaintext without a token."""

    tls: bool = False  # TLS with the system's trusted roots; implied by tls_ca or tls_cert
    tls_ca: Path | None = None  # PEM: the CA that signed the server's certificate
    tls_cert: Path | None = None  # PEM: this client's certificate, for a server that requires mTLS
    tls_key: Path | None = None  # PEM: its private key
    tls_server_name: str | None = None  # check the server's certificate for this name, not the target's
    token: str | None = field(default=None, repr=False)  # sent as `authorization: Bearer <token>`

    def __post_init__(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError(
                f"a client certificate needs its key: got tls_cert={self.tls_cert}, tls_key={self.tls_key}"
            )

    @property
    def uses_tls(self) -> bool:
        return self.tls or self.tls_ca is not None or self.tls_cert is not None

    def credentials(self) -> grpc.ChannelCredentials:
        def read(path: Path | None) -> bytes | None:
            try:
                return None if path is None else path.read_bytes()
            except OSError as exc:
                raise ValueError(f"cannot read {path}: {exc}") from exc

        return grpc.ssl_channel_credentials(
            root_certificates=read(self.tls_ca),
            private_key=read(self.tls_key),
            certificate_chain=read(self.tls_cert),
        )

    def options(self, options: Sequence[tuple[str, Any]]) -> list[tuple[str, Any]]:
        if self.tls_server_name is None:
            return list(options)
        return [*options, ("grpc.ssl_target_name_override", self.tls_server_name)]


class _Token:
    """Adds the token to a call's metadata. An interceptor rather than call credentials, which gRPC sends
    only over TLS: behind a TLS-terminating proxy or on localhost the channel itself may be plaintext."""

    def __init__(self, token: str) -> None:
        self._header = ("authorization", f"Bearer {token}")

    def _with_token(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(details.metadata or ()), self._header)
        return grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )


# grpc.aio files an interceptor under the first of the four kinds it is, so each kind is its own class.
class _UnaryUnaryToken(_Token, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(
        self, continuation: Any, details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        return await continuation(self._with_token(details), request)


class _UnaryStreamToken(_Token, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(
        self, continuation: Any, details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        return await continuation(self._with_token(details), request)


class _StreamUnaryToken(_Token, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(
        self, continuation: Any, details: grpc.aio.ClientCallDetails, requests: Any
    ) -> Any:
        return await continuation(self._with_token(details), requests)


class _StreamStreamToken(_Token, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(
        self, continuation: Any, details: grpc.aio.ClientCallDetails, requests: Any
    ) -> Any:
        return await continuation(self._with_token(details), requests)


def _token_interceptors(token: str | None) -> list[grpc.aio.ClientInterceptor] | None:
    if not token:
        return None
    kinds = (_UnaryUnaryToken, _UnaryStreamToken, _StreamUnaryToken, _StreamStreamToken)
    return [kind(token) for kind in kinds]


def open_channel(
    target: str, security: ClientSecurity | None = None, options: Sequence[tuple[str, Any]] = ()
) -> grpc.aio.Channel:
    """A grpc.aio channel to `target` as `security` says (plaintext, no token, when None)."""
    security = security or ClientSecurity()
    interceptors = _token_interceptors(security.token)
    if security.uses_tls:
        return grpc.aio.secure_channel(
            target, security.credentials(), security.options(options), interceptors=interceptors
        )
    return grpc.aio.insecure_channel(target, options=list(options), interceptors=interceptors)
