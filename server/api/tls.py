"""TLS on both ports (`--tls-cert`, `--tls-key`), mutual TLS with `--tls-client-ca` (a client
certificate signed by that CA is required on both), and certificate rotation without a restart.

Rotation (cert-manager renews a Secret in place; SIGHUP or a change of the files): the HTTP side
loads the new key pair into the SSL context uvicorn serves from, the gRPC side hands the new pair
to grpc's dynamic credentials, which ask for it at every new handshake. Connections already open
keep the session they negotiated; new ones get the new certificate. A client CA added this way is
trusted from then on; one taken away stays trusted until the next restart (OpenSSL's trust store
only grows).
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc

from server.api.security import file_stamp

log = logging.getLogger("electra.tls")


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path
    client_ca: Path | None = None

    def stamp(self) -> tuple[object, ...]:
        return tuple(file_stamp(p) for p in (self.cert, self.key, self.client_ca) if p is not None)

    def read(self) -> tuple[bytes, bytes, bytes | None]:
        return (
            self.cert.read_bytes(),
            self.key.read_bytes(),
            self.client_ca.read_bytes() if self.client_ca else None,
        )


class Tls:
    """The certificates of both servers, and their reload."""

    def __init__(self, files: TlsFiles) -> None:
        self.files = files
        self._stamp = files.stamp()
        cert, key, ca = files.read()
        self._grpc_config = self._grpc_certificates(cert, key, ca)
        self._grpc_fresh = False
        self._http_context: ssl.SSLContext | None = None
        self.http_context()  # fail at start, with the file named, when a file is unusable

    @staticmethod
    def _grpc_certificates(cert: bytes, key: bytes, ca: bytes | None) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)

    def http_context(self) -> ssl.SSLContext:
        """The context uvicorn serves from (the same object for good: reloads change it in place)."""
        if self._http_context is None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.load_cert_chain(self.files.cert, self.files.key)
            if self.files.client_ca is not None:
                context.verify_mode = ssl.CERT_REQUIRED
                context.load_verify_locations(cafile=str(self.files.client_ca))
            self._http_context = context
        return self._http_context

    def grpc_credentials(self) -> grpc.ServerCredentials:
        def fetch() -> grpc.ServerCertificateConfiguration | None:
            # Called by grpc at every new handshake: hand over a reloaded pair once.
            if self._grpc_fresh:
                self._grpc_fresh = False
                return self._grpc_config
            return None

        return grpc.dynamic_ssl_server_credentials(
            self._grpc_config,
            fetch,  # type: ignore[arg-type]  # grpc takes None (keep the pair); its stub says otherwise
            require_client_authentication=self.files.client_ca is not None,
        )

    def reload(self, force: bool = False) -> bool:
        """Load the files again if they changed (True when new certificates are in use). Unusable new
        files leave the old certificates in place, and say so."""
        stamp = self.files.stamp()
        if not force and stamp == self._stamp:
            return False
        try:
            cert, key, ca = self.files.read()
            config = self._grpc_certificates(cert, key, ca)
            context = self.http_context()
            context.load_cert_chain(self.files.cert, self.files.key)
            if self.files.client_ca is not None:
                context.load_verify_locations(cafile=str(self.files.client_ca))
        except (OSError, ssl.SSLError, ValueError) as exc:
            log.error("the TLS files changed but cannot be used (%s): the certificates in use stay", exc)
            return False
        self._grpc_config, self._grpc_fresh = config, True
        self._stamp = stamp
        log.info("TLS certificates reloaded")
        return True
