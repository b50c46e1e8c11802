"""Bearer tokens: every RPC of every inference service must carry `authorization: Bearer <token>`.

The interceptor checks the token before the RPC's handler exists for the call: a missing or wrong token
gets UNAUTHENTICATED and no handler runs, no request is parsed. Default deny: every service needs a token
except `OPEN_SERVICES` (health, so Docker and Kubernetes probes work without a secret; reflection, which
only describes the API). seqserve.v1, inference.GRPCInferenceService and any service added later are
covered without a line here.

Tokens are compared as SHA-256 digests with `hmac.compare_digest`, against every token each time, so the
time taken says nothing of which token or how much of one matched. A token is never logged and never put
in a message or a metric: the caller is known by the token's name (`name:token` in the file).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from seqserve.service.engine.caller import set_caller
from seqserve.service.engine.errors import Unauthenticated
from seqserve.service.frontends.status import status_code

log = logging.getLogger(__name__)

TOKENS_ENV = "SEQSERVE_AUTH_TOKENS"  # same format as the file; commas may separate entries too
OPEN_SERVICES = frozenset(
    {
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    }
)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class TokenError(ValueError):
    """A tokens file or variable that cannot be used; the message never quotes a token."""


@dataclass(frozen=True)
class Token:
    name: str
    digest: bytes = field(repr=False)


def parse_tokens(text: str, source: str) -> list[Token]:
    """`name:token` or a bare token per line (named `<source>-<line>`); blank lines and # comments skipped."""
    tokens = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, named, secret = line.partition(":")
        if not named:
            name, secret = f"{source}-{number}", line
        name, secret = name.strip(), secret.strip()
        if not _NAME.fullmatch(name):
            # The text before ':' may be a token someone wrote with a colon in it: not quoted.
            raise TokenError(
                f"{source} line {number}: the part before ':' is not a token name "
                "(letters, digits, '_', '.', '-'; at most 64)"
            )
        if not secret:
            raise TokenError(f"{source} line {number}: token {name!r} is empty")
        tokens.append(Token(name, hashlib.sha256(secret.encode()).digest()))
    return tokens


class TokenTable:
    def __init__(self, tokens: list[Token]) -> None:
        names: dict[str, Token] = {}
        digests: dict[bytes, str] = {}
        for token in tokens:
            if token.name in names:
                raise TokenError(f"token name {token.name!r} is given twice; names must be unique")
            if token.digest in digests:
                raise TokenError(f"tokens {digests[token.digest]!r} and {token.name!r} are the same token")
            names[token.name] = token
            digests[token.digest] = token.name
        self._tokens = tuple(tokens)

    @classmethod
    def load(cls, path: Path | None, environment_value: str | None) -> TokenTable:
        """The tokens of the file and of the SEQSERVE_AUTH_TOKENS value together (either may be absent).

        A file or variable that is given but holds no token is an error, not an open server: a Secret that
        was never filled in must not turn authentication off.
        """
        tokens = []
        if path is not None:
            try:
                text = path.read_text()
            except OSError as exc:
                raise TokenError(f"cannot read tokens file {path}: {exc}") from exc
            tokens += parse_tokens(text, "file")
        if environment_value is not None:
            tokens += parse_tokens(environment_value.replace(",", "\n"), "env")
        if not tokens and (path is not None or environment_value is not None):
            given = " and ".join(
                ([f"tokens file {path}"] if path is not None else [])
                + ([TOKENS_ENV] if environment_value is not None else [])
            )
            raise TokenError(f"{given} holds no token; give at least one, or neither to serve without tokens")
        return cls(tokens)

    @property
    def names(self) -> list[str]:
        return [token.name for token in self._tokens]

    def __len__(self) -> int:
        return len(self._tokens)

    def authenticate(self, method: str, metadata: Iterable[tuple[str, str | bytes]] | None) -> str:
        """The name of the token the call carries; Unauthenticated when it carries none or an unknown one."""
        values = [value for key, value in metadata or () if key == "authorization"]
        if not values:
            raise Unauthenticated(
                f"{method} needs a bearer token: send metadata 'authorization: Bearer <token>'; none was sent"
            )
        value = values[-1] if isinstance(values[-1], str) else values[-1].decode(errors="replace")
        scheme, _, secret = value.strip().partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            raise Unauthenticated(
                f"{method}: authorization metadata is not of the form 'Bearer <token>' (contents not shown)"
            )
        digest = hashlib.sha256(secret.strip().encode()).digest()
        found = None
        for token in self._tokens:  # no early exit: every token is compared every time
            if hmac.compare_digest(digest, token.digest):
                found = token.name
        if found is None:
            raise Unauthenticated(f"{method}: the bearer token sent matches none of this server's tokens")
        return found


class ReloadingTokens:
    """The server's tokens, re-read when the tokens file changes on disk (a Kubernetes Secret is updated in
    place): one os.stat per RPC, a parse only on change. A file that no longer parses, or holds no token,
    leaves the previous tokens in force, with a WARNING. Removing a token refuses its new RPCs; streams it
    already opened go on to their end."""

    def __init__(self, path: Path | None, environment_value: str | None) -> None:
        self.path = path
        self._environment_value = environment_value
        self._stamp = self._stat()
        self.table = TokenTable.load(path, environment_value)
        self.reloads = 0

    def _stat(self) -> tuple[int, int, int] | None:
        if self.path is None:
            return None
        stat = os.stat(self.path)
        return stat.st_ino, stat.st_size, stat.st_mtime_ns

    def current(self) -> TokenTable:
        try:
            stamp = self._stat()
        except OSError as exc:
            log.warning("tokens file unreadable; the tokens read before stay in force: %s", exc)
            return self.table
        if stamp == self._stamp:
            return self.table
        self._stamp = stamp  # set first: a bad file warns once, not on every RPC
        try:
            self.table = TokenTable.load(self.path, self._environment_value)
        except TokenError as exc:
            log.warning("tokens file changed but cannot be used; the earlier tokens stay in force: %s", exc)
            return self.table
        self.reloads += 1
        log.info("tokens reloaded from %s: %d tokens", self.path, len(self.table))
        return self.table


def _refusal(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same kind that only ends the call; no deserializer, so no request is parsed."""

    async def refuse(request: object, context: grpc.aio.ServicerContext) -> None:
        await context.abort(code, message)

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(refuse)
    return grpc.unary_unary_rpc_method_handler(refuse)


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Inside `recording.RecordingInterceptor`, which counts its refusals under UNAUTHENTICATED."""

    def __init__(self, tokens: ReloadingTokens) -> None:
        self.tokens = tokens

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        service = details.method.lstrip("/").rpartition("/")[0]
        handler = await continuation(details)  # finds the handler; runs nothing of it
        if service in OPEN_SERVICES or handler is None:  # None: the server answers UNIMPLEMENTED
            return handler
        try:
            caller = self.tokens.current().authenticate(details.method, details.invocation_metadata)
        except Unauthenticated as refused:
            log.debug("refused %s", refused)  # the message holds no token
            return _refusal(handler, status_code(refused), str(refused))
        set_caller(caller)
        return handler
