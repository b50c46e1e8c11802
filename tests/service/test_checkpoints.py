"""The checkpoint token alone: it carries the state bit for bit, and every token a server did not sign as
it stands (tampered, other key, expired, other format, malformed) is refused with the reason named."""

from __future__ import annotations

import struct
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from seqserve.service.engine import checkpoints
from seqserve.service.engine.checkpoints import (
    ModelIdentity,
    StateKeys,
    StreamSnapshot,
    decode,
    encode,
    key_id,
)
from seqserve.service.engine.errors import BadResumeToken

KEY = b"current-key-0123456789abcdef"
OLD = b"previous-key-0123456789abcdef"
NOW = 1_800_000_000.0


def _snapshot(cell_states: int = 2, answer: bool = True) -> StreamSnapshot:
    rng = np.random.default_rng(0)
    states = tuple(rng.standard_normal((2, 32)).astype(np.float32) for _ in range(cell_states))
    return StreamSnapshot(
        model=ModelIdentity("jv-lstm", 3, "ab" * 32),
        steps=17,
        chunks=5,
        states=states,
        answer=(4, rng.random(9).astype(np.float32), rng.standard_normal(9).astype(np.float32))
        if answer
        else None,
        include_scores=True,
        final_only=False,
        idle_timeout_ms=1500,
        checkpoint_every_chunks=4,
        expires_at=int(NOW) + 60,
    )


KEYS = StateKeys(KEY)


def _refusal(token: bytes, keys: StateKeys = KEYS, now: float = NOW) -> BadResumeToken:
    with pytest.raises(BadResumeToken) as refused:
        decode(token, keys, now)
    return refused.value


@pytest.mark.parametrize("states, answer", [(1, False), (2, True)])
def test_a_token_round_trips_every_field_bit_for_bit(states: int, answer: bool) -> None:
    snapshot = _snapshot(states, answer)
    token = encode(snapshot, KEY)
    back = decode(token, StateKeys(KEY), NOW)
    for got, want in zip(back.states, snapshot.states, strict=True):
        assert got.tobytes() == want.tobytes()  # max difference 0.0: the same float32 bits
    if answer:
        assert back.answer[0] == 4
        assert [v.tobytes() for v in back.answer[1:]] == [v.tobytes() for v in snapshot.answer[1:]]
    assert replace(back, states=(), answer=None) == replace(snapshot, states=(), answer=None)
    # The documented size: header, name, sha256, state rows (each dtype, rank, 2 dims, values), answer,
    # signature.
    expected = (
        61 + len("jv-lstm") + 32 + states * (2 + 2 * 4 + 2 * 32 * 4) + (4 + 2 * 9 * 4 if answer else 0) + 32
    )
    assert len(token) == expected


def test_the_previous_key_still_verifies_so_keys_rotate() -> None:
    token = encode(_snapshot(), OLD)
    assert decode(token, StateKeys(KEY, previous=OLD), NOW).steps == 17
    refused = _refusal(token, StateKeys(KEY))
    assert refused.reason == checkpoints.OTHER_KEY and key_id(OLD).hex() in str(refused)
    assert key_id(KEY).hex() in str(refused)


def test_each_bad_token_is_refused_with_its_reason() -> None:
    token = encode(_snapshot(), KEY)
    state_byte = len(token) - 200  # inside the state rows
    tampered = bytearray(token)
    tampered[state_byte] ^= 1
    cases = {
        checkpoints.TAMPERED: bytes(tampered),
        checkpoints.EXPIRED: encode(replace(_snapshot(), expires_at=int(NOW) - 5), KEY),
        checkpoints.FORMAT: token[:4] + bytes([1]) + token[5:],
        checkpoints.MALFORMED: b"not a token at all",
    }
    messages = {reason: str(_refusal(bad)) for reason, bad in cases.items()}
    assert {reason: _refusal(bad).reason for reason, bad in cases.items()} == {r: r for r in cases}
    assert "tampered" in messages[checkpoints.TAMPERED]
    assert "expired 5 s ago" in messages[checkpoints.EXPIRED]
    assert "format version 1" in messages[checkpoints.FORMAT] and "version 2" in messages[checkpoints.FORMAT]
    assert "18 bytes" in messages[checkpoints.MALFORMED]
    assert "starts with b'XXXX'" in str(_refusal(b"XXXX" + token[4:]))


def test_a_signed_token_whose_lengths_disagree_is_malformed_not_trusted() -> None:
    body = encode(_snapshot(), KEY)[: -checkpoints.MAC_BYTES]
    lying = bytearray(body)
    first_state = checkpoints.HEADER.size + len("jv-lstm") + checkpoints.SHA256_BYTES
    struct.pack_into("<I", lying, first_state + checkpoints.ARRAY.size, 3)  # state rows 3, not 2
    resigned = checkpoints.hmac.new(KEY, bytes(lying), "sha256").digest()
    assert _refusal(bytes(lying) + resigned).reason == checkpoints.MALFORMED


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_flipping_any_bytes_of_a_token_never_gets_it_accepted(data: st.DataObject) -> None:
    token = encode(_snapshot(), KEY)
    positions = data.draw(st.lists(st.integers(0, len(token) - 1), min_size=1, max_size=8, unique=True))
    flipped = bytearray(token)
    for position in positions:
        flipped[position] ^= data.draw(st.integers(1, 255))
    cut = data.draw(st.integers(0, 2))  # also shortened or lengthened
    bad = bytes(flipped)[: len(token) - cut] if cut < 2 else bytes(flipped) + b"\0"
    with pytest.raises(BadResumeToken):
        decode(bad, StateKeys(KEY, previous=OLD), NOW)


def test_keys_load_from_a_file_or_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text(f"{KEY.decode()}\n{OLD.decode()}\n")
    assert StateKeys.load(path, {}) == StateKeys(KEY, OLD)
    assert StateKeys.load(None, {checkpoints.KEYS_ENV: f"{KEY.decode()},{OLD.decode()}"}) == StateKeys(
        KEY, OLD
    )
    assert StateKeys.load(None, {}) is None
    with pytest.raises(ValueError, match="too short"):
        StateKeys.parse("short", "test")
    with pytest.raises(ValueError, match="holds 3 keys"):
        StateKeys.parse(f"{KEY.decode()}\n{KEY.decode()}\n{KEY.decode()}", "test")
    with pytest.raises(ValueError, match="cannot read --state-key-file"):
        StateKeys.load(tmp_path / "missing", {})
