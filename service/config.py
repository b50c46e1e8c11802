"""The server's knobs in one record: what `seqserve serve` flags set and what tests and the demo pass."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEVICES = ("cpu", "cuda")


@dataclass(frozen=True)
class ServerConfig:
    repository: Path
    host: str = "127.0.0.1"
    port: int = 50051
    metrics_port: int = 9090  # -1 disables the /metrics HTTP server
    # Apart from the gRPC host: /metrics tells anyone who reads it which models serve and how busy they are.
    metrics_host: str = "127.0.0.1"
    device: str = "cpu"
    max_batch: int = 64
    max_delay_ms: float = 2.0
    max_streams: int = 200  # the overload run in docs/operations.md chose it
    # Past this accept delay (measured by service/server/accept_delay.py) new streams are refused; 0: never.
    max_accept_delay_ms: float = 100.0
    max_chunk_steps: int = 4096
    max_message_bytes: int = 4 << 20
    idle_timeout_s: float = 30.0
    max_idle_timeout_s: float = 300.0
    grace_s: float = 10.0
    inference_threads: int = 1
    calls_in_flight: int = 2
    inline_max_us: float = 500.0
    # `--workers N`: N processes on one port (service/server/workers.py). The next two are what the supervisor
    # sets for each worker, not flags.
    workers: int = 1
    reuse_port: bool = False
    stream_id_prefix: str = ""
    # Signed state checkpoints (service/engine/checkpoints.py): without a key (this file or
    # $SEQSERVE_STATE_KEYS) the server issues none and resumes none.
    state_key_file: Path | None = None
    checkpoint_ttl_s: float = 3600.0
    poll_repository_s: float = 0.0  # 0: the repository is read once at start
    # TLS (service/server/tls.py): PEM files, reloaded when they change; a client CA requires client
    # certificates.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    # Bearer tokens (service/server/auth.py): this file and the SEQSERVE_AUTH_TOKENS variable; none: no
    # tokens.
    auth_tokens_file: Path | None = None
    max_streams_per_token: int = 0  # 0: only max_streams bounds a token's streams
    max_generate_tokens: int = 2048  # most tokens one Generate call may ask for
    max_forecast_steps: int = 2016  # most steps one forecast may ask for (6 weeks of half-hours)
    max_beam: int = 16  # widest beam one Translate may ask for (each beam is a row of every step's call)
    max_decode_steps: int = 200  # most output tokens one Translate may ask for per input

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise ValueError(f"device {self.device!r} is not one of {', '.join(DEVICES)}")
        positive = {
            "max_batch": self.max_batch,
            "max_streams": self.max_streams,
            "max_chunk_steps": self.max_chunk_steps,
            "max_message_bytes": self.max_message_bytes,
            "idle_timeout_s": self.idle_timeout_s,
            "max_idle_timeout_s": self.max_idle_timeout_s,
            "inference_threads": self.inference_threads,
            "calls_in_flight": self.calls_in_flight,
            "workers": self.workers,
            "checkpoint_ttl_s": self.checkpoint_ttl_s,
            "max_generate_tokens": self.max_generate_tokens,
            "max_forecast_steps": self.max_forecast_steps,
            "max_beam": self.max_beam,
            "max_decode_steps": self.max_decode_steps,
        }
        for name, value in positive.items():
            if value <= 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        if self.inline_max_us < 0:
            raise ValueError(f"inline_max_us must be >= 0, got {self.inline_max_us}")
        if self.max_accept_delay_ms < 0:
            raise ValueError(f"max_accept_delay_ms must be >= 0, got {self.max_accept_delay_ms}")
        if self.poll_repository_s < 0:
            raise ValueError(f"poll_repository_s must be >= 0, got {self.poll_repository_s}")
        if self.max_delay_ms < 0 or self.grace_s < 0:
            raise ValueError(
                f"max_delay_ms and grace_s must be >= 0, got {self.max_delay_ms}, {self.grace_s}"
            )
        if self.max_streams < self.workers:
            raise ValueError(f"max_streams {self.max_streams} is below workers {self.workers}, 1 each")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError(
                f"TLS needs both a certificate and its key, got tls_cert={self.tls_cert}, "
                f"tls_key={self.tls_key}"
            )
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError(f"tls_client_ca {self.tls_client_ca} needs TLS: give tls_cert and tls_key too")
        if self.max_streams_per_token < 0:
            raise ValueError(
                f"max_streams_per_token must be >= 0 (0: no limit), got {self.max_streams_per_token}"
            )
        if self.idle_timeout_s > self.max_idle_timeout_s:
            raise ValueError(
                f"idle_timeout_s {self.idle_timeout_s} is above max_idle_timeout_s {self.max_idle_timeout_s}"
            )
