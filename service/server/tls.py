"""TLS for the gRPC port: server credentials from PEM files, re-read when the files change on disk.

cert-manager (through the kubelet's Secret volume) rotates a certificate by replacing the files under the
mount. gRPC's dynamic certificate configuration calls `ReloadingCertificates.fetch` before every new TLS
handshake: it answers None while the files are unchanged, and the new configuration once they have
changed and the new pair loads. New connections then get the new certificate; connections already open
keep the session they negotiated, so their streams go on. The server never restarts.

With a client CA (`--tls-client-ca`) every client must present a certificate that CA signed (mTLS).
"""

from __future__ import annotations

import logging
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CertificateFiles:
    cert: Path  # PEM: the server's certificate chain, leaf first
    key: Path  # PEM: its private key
    client_ca: Path | None = None  # PEM: CA bundle client certificates must chain to; None: no client certs


class CertificateError(ValueError):
    """PEM files that cannot serve: unreadable, or a certificate that does not match its key."""


def _stamp(files: CertificateFiles) -> tuple:
    """What changes when a file is replaced or rewritten (os.stat follows the kubelet's symlinks)."""
    paths = [files.cert, files.key] + ([files.client_ca] if files.client_ca else [])
    return tuple((s.st_ino, s.st_size, s.st_mtime_ns) for s in map(os.stat, paths))


def _read(files: CertificateFiles) -> tuple[bytes, bytes, bytes | None]:
    """The PEM bytes, checked: the certificate matches the key and the client CA parses."""
    try:
        pems = (
            files.cert.read_bytes(),
            files.key.read_bytes(),
            files.client_ca.read_bytes() if files.client_ca else None,
        )
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(files.cert, files.key)
        if pems[2] is not None:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_verify_locations(cadata=pems[2].decode())
    except (OSError, ssl.SSLError, UnicodeDecodeError) as exc:
        raise CertificateError(
            f"cannot serve TLS with certificate {files.cert}, key {files.key}"
            + (f", client CA {files.client_ca}" if files.client_ca else "")
            + f": {exc}"
        ) from exc
    # load_cert_chain read the files again: if they changed in between, the check says nothing of `pems`.
    if (files.cert.read_bytes(), files.key.read_bytes()) != pems[:2]:
        raise CertificateError(f"certificate {files.cert} or key {files.key} changed while being read")
    return pems


def _configuration(pems: tuple[bytes, bytes, bytes | None]) -> grpc.ServerCertificateConfiguration:
    cert, key, client_ca = pems
    return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=client_ca)


class ReloadingCertificates:
    """The certificate configuration of the server, and the fetcher that swaps it when the files change."""

    def __init__(self, files: CertificateFiles) -> None:
        self.files = files
        self._stamp = _stamp(files)
        self._pems = _read(files)  # a bad pair at start is an error, not a warning
        self.reloads = 0
        # Held here: gRPC calls `fetch` for as long as the server lives.
        self.credentials = grpc.dynamic_ssl_server_credentials(
            _configuration(self._pems), self.fetch, require_client_authentication=files.client_ca is not None
        )

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """Called by gRPC before each handshake, on its own threads: None keeps the current configuration.

        A pair caught half-written (the new certificate beside the old key) is skipped and read again at the
        next handshake; the old pair keeps serving meanwhile.
        """
        try:
            stamp = _stamp(self.files)
            if stamp == self._stamp:
                return None
            pems = _read(self.files)
        except (OSError, CertificateError) as exc:
            log.warning("TLS files changed but do not load yet; the current certificate serves: %s", exc)
            return None
        self._stamp = stamp
        if pems == self._pems:
            return None
        self._pems = pems
        self.reloads += 1
        log.info("TLS certificate reloaded from %s (reload %d)", self.files.cert, self.reloads)
        return _configuration(pems)
