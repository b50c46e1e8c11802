"""Signed state checkpoints: a stream's state as an opaque token any replica holding the key resumes from.

A token is a compact binary record (the layout is in docs/checkpoint_token.md, for clients in other
languages): a fixed little-endian header, the model's name and sha256, each state row and each carried
context as a typed array (dtype, shape, raw bytes, so a resume continues bit for bit), the stream's
constants, the running many-to-one answer (label, scores, logits), and an HMAC-SHA256 over all of it under
the server's current key. Verification accepts the current and the
previous key, so keys rotate without dropping streams: roll out `current=new, previous=old`, then drop the
old one once every token signed with it has expired.

Knows no protocol; `InferenceEngine` issues and verifies tokens, the front doors only carry the bytes.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import os
import struct
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from seqserve.declaration import hashable
from seqserve.service.engine.errors import BadResumeToken

MAGIC = b"SQST"
FORMAT_VERSION = 2
KEYS_ENV = "SEQSERVE_STATE_KEYS"
MIN_KEY_BYTES = 16
MAC_BYTES = 32
SHA256_BYTES = 32
# magic, format version, state tensors, flags, name length, key id, expires_at (unix s), model version,
# steps, chunks, idle timeout ms, checkpoint every N chunks, carried contexts, constants' bytes, classes of
# the answer.
HEADER = struct.Struct("<4sBBBB8sQqQQIIBHH")
# A typed array: dtype code (index in DTYPES), number of dims; then each dim (u32), then the bytes.
ARRAY = struct.Struct("<BB")
DTYPES = ("float32", "float16", "float64", "int64", "int32", "int16", "int8", "uint8", "bool")
KEY_ID_OFFSET = 8
_INCLUDE_SCORES, _FINAL_ONLY, _HAS_ANSWER = 1, 2, 4
_FLOAT32 = np.dtype("<f4")

# Why a token was refused: the label of seqserve_resumes_refused_total, and the first words of the message.
MALFORMED = "malformed"
FORMAT = "format_version"
OTHER_KEY = "other_key"
TAMPERED = "tampered"
EXPIRED = "expired"
OTHER_MODEL = "other_model"
NO_KEY = "no_key"
REFUSAL_REASONS = (MALFORMED, FORMAT, OTHER_KEY, TAMPERED, EXPIRED, OTHER_MODEL, NO_KEY)


@functools.lru_cache(maxsize=8)  # a server holds two keys; tokens are signed per chunk
def key_id(key: bytes) -> bytes:
    """8 bytes naming a key without revealing it: tells 'signed by another key' from 'tampered'."""
    return hashlib.sha256(b"seqserve-state-key\0" + key).digest()[:8]


@dataclass(frozen=True)
class StateKeys:
    """The key new tokens are signed with, and the previous one, still accepted for verification."""

    current: bytes
    previous: bytes | None = None

    def __post_init__(self) -> None:
        for key in (self.current, self.previous):
            if key is not None and len(key) < MIN_KEY_BYTES:
                raise ValueError(
                    f"state key of {len(key)} bytes is too short: expected at least {MIN_KEY_BYTES} "
                    "(make one with `openssl rand -hex 32`)"
                )

    @classmethod
    def parse(cls, text: str, source: str) -> StateKeys:
        """One or two keys separated by newlines or commas: current first, then previous."""
        keys = [k.strip() for k in text.replace(",", "\n").splitlines() if k.strip()]
        if not keys or len(keys) > 2:
            raise ValueError(
                f"{source} holds {len(keys)} keys; expected 1 (current) or 2 (current, then previous), "
                "one per line"
            )
        return cls(keys[0].encode(), keys[1].encode() if len(keys) == 2 else None)

    @classmethod
    def load(cls, path: Path | None, environ: Mapping[str, str] = os.environ) -> StateKeys | None:
        """The keys from `path` (--state-key-file) if given, else from $SEQSERVE_STATE_KEYS, else None."""
        if path is not None:
            try:
                text = Path(path).read_text()
            except OSError as exc:
                raise ValueError(f"cannot read --state-key-file {path}: {exc}") from exc
            return cls.parse(text, f"--state-key-file {path}")
        if environ.get(KEYS_ENV, "").strip():
            return cls.parse(environ[KEYS_ENV], f"${KEYS_ENV}")
        return None

    def for_id(self, wanted: bytes) -> bytes | None:
        for key in (self.current, self.previous):
            if key is not None and hmac.compare_digest(key_id(key), wanted):
                return key
        return None


@dataclass(frozen=True)
class ModelIdentity:
    """What a token is bound to: a resume on a replica with other weights under the same name is refused."""

    name: str
    version: int
    sha256: str  # hex, as in model.json


@dataclass(frozen=True)
class StreamSnapshot:
    """Everything a stream needs to continue: what a token holds, decoded."""

    model: ModelIdentity
    steps: int
    chunks: int
    states: tuple[np.ndarray, ...]  # each a state row (the tensor less its batch axis), any dtype
    # Many-to-one: the running answer after the last chunk (label index, float32 scores and logits, each
    # [classes]).
    answer: tuple[int, np.ndarray, np.ndarray] | None
    include_scores: bool
    final_only: bool
    idle_timeout_ms: int
    checkpoint_every_chunks: int
    expires_at: int  # unix seconds
    # A declared graph's context carried into the next chunk (one per stream input with context), and
    # its per-stream constants (JSON-encodable values).
    carry: tuple[np.ndarray, ...] = ()
    constants: tuple = ()


@dataclass(frozen=True, slots=True)
class IssuedCheckpoint:
    """A token and the plain facts a client needs beside it: which chunks and steps it covers."""

    token: bytes
    steps: int
    chunks: int
    expires_at: int  # unix seconds


def _array(values: np.ndarray) -> bytes:
    values = np.asarray(values, dtype=values.dtype.newbyteorder("<"), order="C")  # 0-d stays 0-d
    return (
        ARRAY.pack(DTYPES.index(values.dtype.name), values.ndim)
        + struct.pack(f"<{values.ndim}I", *values.shape)
        + values.tobytes()
    )


def encode(snapshot: StreamSnapshot, key: bytes) -> bytes:
    """The signed token of `snapshot`; its expiry is `snapshot.expires_at`."""
    name = snapshot.model.name.encode()
    constants = json.dumps(list(snapshot.constants)).encode() if snapshot.constants else b""
    classes = 0 if snapshot.answer is None else snapshot.answer[1].shape[-1]
    flags = (
        (_INCLUDE_SCORES if snapshot.include_scores else 0)
        | (_FINAL_ONLY if snapshot.final_only else 0)
        | (_HAS_ANSWER if snapshot.answer is not None else 0)
    )
    parts = [
        HEADER.pack(
            MAGIC,
            FORMAT_VERSION,
            len(snapshot.states),
            flags,
            len(name),
            key_id(key),
            snapshot.expires_at,
            snapshot.model.version,
            snapshot.steps,
            snapshot.chunks,
            snapshot.idle_timeout_ms,
            snapshot.checkpoint_every_chunks,
            len(snapshot.carry),
            len(constants),
            classes,
        ),  # fmt: skip
        name,
        bytes.fromhex(snapshot.model.sha256),
        *(_array(values) for values in (*snapshot.states, *snapshot.carry)),
        constants,
    ]
    if snapshot.answer is not None:
        label, scores, logits = snapshot.answer
        parts.append(struct.pack("<I", label))
        parts += [np.ascontiguousarray(values, dtype=_FLOAT32).tobytes() for values in (scores, logits)]
    body = b"".join(parts)
    return body + hmac.digest(key, body, "sha256")


def decode(token: bytes, keys: StateKeys, now: float | None = None) -> StreamSnapshot:
    """The snapshot a valid token holds; anything else raises BadResumeToken saying what is wrong."""
    minimum = HEADER.size + SHA256_BYTES + MAC_BYTES
    if len(token) < minimum:
        raise BadResumeToken(
            MALFORMED, f"malformed resume token: {len(token)} bytes, a token has at least {minimum}"
        )
    magic, version = token[:4], token[4]
    if magic != MAGIC:
        raise BadResumeToken(MALFORMED, f"malformed resume token: starts with {magic!r}, expected {MAGIC!r}")
    if version != FORMAT_VERSION:
        raise BadResumeToken(
            FORMAT, f"resume token has format version {version}; this server reads version {FORMAT_VERSION}"
        )
    body, mac = token[:-MAC_BYTES], token[-MAC_BYTES:]
    wanted = body[KEY_ID_OFFSET : KEY_ID_OFFSET + 8]
    key = keys.for_id(wanted)
    if key is None:
        raise BadResumeToken(
            OTHER_KEY,
            f"resume token is signed by another key (key id {wanted.hex()}); this server accepts key ids "
            + ", ".join(key_id(k).hex() for k in (keys.current, keys.previous) if k is not None),
        )
    if not hmac.compare_digest(mac, hmac.digest(key, body, "sha256")):
        raise BadResumeToken(TAMPERED, "resume token was tampered with: its signature does not match it")
    snapshot = _parse(body)
    now = time.time() if now is None else now
    if now >= snapshot.expires_at:
        raise BadResumeToken(
            EXPIRED,
            f"resume token expired {now - snapshot.expires_at:.0f} s ago (at unix time "
            f"{snapshot.expires_at}); resume sooner or raise the server's --checkpoint-ttl-s",
        )
    return snapshot


class _Reader:
    """Reads a signed body front to back; running past its end is a malformed token."""

    def __init__(self, body: bytes, offset: int) -> None:
        self.body = body
        self.offset = offset

    def take(self, size: int) -> bytes:
        if self.offset + size > len(self.body):
            raise BadResumeToken(
                MALFORMED,
                f"malformed resume token: {len(self.body)} bytes before the signature, its fields need more",
            )
        piece = self.body[self.offset : self.offset + size]
        self.offset += size
        return piece

    def array(self) -> np.ndarray:
        code, ndim = ARRAY.unpack(self.take(ARRAY.size))
        if code >= len(DTYPES):
            raise BadResumeToken(MALFORMED, f"malformed resume token: dtype code {code}")
        shape = struct.unpack(f"<{ndim}I", self.take(4 * ndim))
        dtype = np.dtype(DTYPES[code]).newbyteorder("<")
        count = int(np.prod(shape, dtype=np.int64))
        return np.frombuffer(self.take(count * dtype.itemsize), dtype, count).reshape(shape)


def _parse(body: bytes) -> StreamSnapshot:
    """The fields of a signed body. Only a server's own bug makes a signed body inconsistent."""
    (_, _, n_states, flags, name_len, _, expires_at, version, steps, chunks, idle_ms, every, n_carry,
     constants_len, classes) = HEADER.unpack_from(body)  # fmt: skip
    reader = _Reader(body, HEADER.size)
    name = reader.take(name_len).decode(errors="replace")
    sha256 = reader.take(SHA256_BYTES).hex()
    states = tuple(reader.array() for _ in range(n_states))
    carry = tuple(reader.array() for _ in range(n_carry))
    constants = hashable(json.loads(reader.take(constants_len))) if constants_len else ()
    answer = None
    if flags & _HAS_ANSWER:
        (label,) = struct.unpack("<I", reader.take(4))
        scores = np.frombuffer(reader.take(4 * classes), _FLOAT32)
        answer = (label, scores, np.frombuffer(reader.take(4 * classes), _FLOAT32))
    if reader.offset != len(body):
        raise BadResumeToken(
            MALFORMED,
            f"malformed resume token: {len(body)} bytes before the signature, its fields end at "
            f"{reader.offset}",
        )
    return StreamSnapshot(
        model=ModelIdentity(name, version, sha256),
        steps=steps,
        chunks=chunks,
        states=states,
        answer=answer,
        include_scores=bool(flags & _INCLUDE_SCORES),
        final_only=bool(flags & _FINAL_ONLY),
        idle_timeout_ms=idle_ms,
        checkpoint_every_chunks=every,
        expires_at=expires_at,
        carry=carry,
        constants=constants,
    )
