"""electra-serve-probe: a health probe that asks the server the way it really serves.

    electra-serve-probe [PATH]          # default /health/ready; exit 0 on a 2xx answer, else 1

It reads the state file the server wrote (`--state-file`, `$ELECTRA_STATE_FILE`) for the address it
bound, TLS, mutual TLS and whether probes need an API key, so that flags given after an image's name
change nothing for the image's HEALTHCHECK. Under mutual TLS it presents `$ELECTRA_PROBE_CERT` /
`$ELECTRA_PROBE_KEY`, or else the server's own certificate (issued with the `client auth` usage, as
deploy/'s mtls component does). It checks that it reaches the server on loopback, not who the
server is: the certificate names the server's public names, not 127.0.0.1. Standard library only,
so that a probe every few seconds costs one short interpreter.
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

DEFAULT_STATE_FILE = "/tmp/electra-serve.json"  # the image sets this one


def _first_key(path: str) -> str | None:
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            return line.strip()
    return None


def _context(state: dict[str, Any]) -> ssl.SSLContext | None:
    if state.get("tls_cert") is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if state.get("tls_client_ca"):
        cert = os.environ.get("ELECTRA_PROBE_CERT") or state["tls_cert"]
        key = os.environ.get("ELECTRA_PROBE_KEY") or state["tls_key"]
        context.load_cert_chain(cert, key)
    return context


def probe(state_file: Path, path: str, timeout_s: float) -> str | None:
    """None when the server answered 2xx; otherwise why not, in one line."""
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return f"no state file at {state_file}: the server has not bound its ports yet (or runs without --state-file)"
    except (OSError, ValueError) as exc:
        return f"cannot read the state file {state_file}: {exc}"
    try:
        os.kill(int(state["pid"]), 0)
    except ProcessLookupError:
        return f"the server that wrote {state_file} (pid {state['pid']}) is not running"
    except PermissionError:
        pass  # alive, another user's
    url = state["http"] + path
    request = urllib.request.Request(url)
    try:
        if state.get("probe_api_keys_file"):
            key = _first_key(state["probe_api_keys_file"])
            if key is not None:
                request.add_header("Authorization", f"Bearer {key}")
        with urllib.request.urlopen(request, timeout=timeout_s, context=_context(state)) as response:
            return None if 200 <= response.status < 300 else f"{url}: HTTP {response.status}"
    except urllib.error.HTTPError as exc:
        return f"{url}: HTTP {exc.code} {exc.read(300).decode('utf-8', 'replace').strip()}"
    except (OSError, ssl.SSLError, ValueError) as exc:
        return f"{url}: {exc}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="electra-serve-probe", description=__doc__.split("\n\n")[0])
    parser.add_argument("path", nargs="?", default="/health/ready", help="default /health/ready (or /health/live)")
    parser.add_argument(
        "--state-file",
        type=Path,
        default=Path(os.environ.get("ELECTRA_STATE_FILE") or DEFAULT_STATE_FILE),
        help=f"the server's --state-file (default $ELECTRA_STATE_FILE, else {DEFAULT_STATE_FILE})",
    )
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds (default 2)")
    args = parser.parse_args(argv)
    problem = probe(args.state_file, args.path, args.timeout)
    if problem is not None:
        print(problem, file=sys.stderr)  # docker inspect / kubectl describe show it
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
