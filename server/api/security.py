"""API keys: `--api-keys-file` (one key a line; blank lines and `#` comments ignored), read again
when the file changes (a Kubernetes Secret update swaps a symlink: the resolved file is watched)
or on SIGHUP, so keys rotate without a restart.

A request presents its key as `Authorization: Bearer KEY` (REST) or `authorization: Bearer KEY`
metadata (gRPC). Keys are kept only as SHA-256 digests and a presented key is compared with every
one of them in constant time, so neither timing nor logs tell a guesser anything; a refusal is a
bare 401 / UNAUTHENTICATED. With `--auth-probes` off (the default) the probes stay open to the
kubelet and Prometheus: `/health/*`, `/v2/health/*`, `/metrics`, grpc.health.v1 and KServe's
ServerLive / ServerReady. Everything else, the repository's load and unload included, needs a key
once keys exist.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from pathlib import Path

log = logging.getLogger("electra.security")

OPEN_HTTP_PREFIXES = ("/health/", "/v2/health/")
OPEN_HTTP_PATHS = frozenset({"/metrics"})
OPEN_GRPC_METHODS = frozenset(
    {
        "/grpc.health.v1.Health/Check",
        "/grpc.health.v1.Health/Watch",
        "/inference.GRPCInferenceService/ServerLive",
        "/inference.GRPCInferenceService/ServerReady",
    }
)
UNAUTHORIZED = "unauthorized: send a valid API key as 'Authorization: Bearer <key>'"


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def file_stamp(path: Path) -> tuple[int, int, int] | None:
    """What changes when a file is replaced or rewritten (following symlinks, as a Secret mount needs)."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return (stat.st_ino, stat.st_mtime_ns, stat.st_size)


class ApiKeys:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._digests: tuple[bytes, ...] = ()
        self._stamp: tuple[int, int, int] | None = None
        self.reload(force=True)

    def reload(self, force: bool = False) -> bool:
        """Read the file again if it changed (True when the keys were replaced). A file that cannot be
        read keeps the keys in use (a half-written update must not open or close the server)."""
        stamp = file_stamp(self.path)
        if not force and stamp == self._stamp:
            return False
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            if force:
                raise ValueError(f"cannot read the API keys file {self.path}: {exc}") from exc
            log.error("cannot read the API keys file %s (%s): the keys in use stay", self.path, type(exc).__name__)
            return False
        keys = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        self._digests = tuple(_digest(key) for key in keys)
        self._stamp = stamp
        if not keys:
            log.warning("the API keys file %s holds no key: every authenticated request is refused", self.path)
        log.info("API keys loaded: %d", len(keys))
        return True

    def verify(self, presented: str | None) -> bool:
        if presented is None:
            return False
        digest = _digest(presented)
        matched = False
        for known in self._digests:  # every key, no early exit: the time does not depend on which matched
            matched |= hmac.compare_digest(digest, known)
        return matched


def bearer(value: str | bytes | None) -> str | None:
    """The key of an `Authorization: Bearer KEY` value."""
    if value is None:
        return None
    if isinstance(value, bytes):
        try:
            value = value.decode("latin-1")
        except UnicodeDecodeError:
            return None
    scheme, _, token = value.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None
