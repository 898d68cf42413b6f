"""The state file: where this server really listens and how to reach it, for `electra-serve-probe`.

A container's HEALTHCHECK runs beside the server and cannot know its flags: `--http-port 9000`
given after the image name, `--tls-cert`, mutual TLS or `--auth-probes` all change how a probe must
ask. The process that binds the ports writes them here once it listens (`--state-file`; the image
sets /tmp/electra-serve.json) and removes the file when it stops. Paths only, never a secret: the
probe reads the key and certificate files itself, as the same user.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from server.settings import Settings

log = logging.getLogger("electra_serve.state")


def loopback_for(host: str) -> str:
    """The address a probe in the same network namespace uses for a server bound to `host`."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host


def write_state(settings: Settings, http_port: int, grpc_port: int) -> None:
    path = settings.state_file
    if path is None:
        return
    scheme = "https" if settings.tls_cert is not None else "http"
    host = loopback_for(settings.host)
    state = {
        "pid": os.getpid(),
        "http": f"{scheme}://{f'[{host}]' if ':' in host else host}:{http_port}",
        "grpc_port": grpc_port,
        "tls_cert": str(settings.tls_cert) if settings.tls_cert else None,
        "tls_key": str(settings.tls_key) if settings.tls_key else None,
        "tls_client_ca": str(settings.tls_client_ca) if settings.tls_client_ca else None,
        "probe_api_keys_file": str(settings.api_keys_file) if settings.api_keys_file and settings.auth_probes else None,
    }
    staged = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        staged.write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
        os.replace(staged, path)  # a probe reads the old file or the new one, never half of one
    except OSError as exc:
        # A read-only root without a writable /tmp: serving matters more than the probe's file.
        log.warning("cannot write the state file %s (%s): electra-serve-probe will not find this server", path, exc)


def remove_state(settings: Settings) -> None:
    if settings.state_file is not None:
        with contextlib.suppress(OSError):
            if json.loads(settings.state_file.read_text(encoding="utf-8")).get("pid") == os.getpid():
                settings.state_file.unlink()
