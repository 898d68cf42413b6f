"""Whether the ports are free, asked before anything slow (the demo models, loading, warm-up).

Binding late meant a busy port showed up only after the models had loaded, as tracebacks. And the
API workers bind with SO_REUSEPORT, which would let a second server of the same user join the first
on its ports without a word and take half its traffic. A plain bind (SO_REUSEADDR only, so that a
restart's TIME_WAIT connections do not count) fails whenever anything listens there, whatever
options that listener set.
"""

from __future__ import annotations

import socket


class PortInUse(OSError):
    pass


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def check_port_free(host: str, port: int, what: str) -> None:
    with socket.socket(_family(host), socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise PortInUse(
                f"the {what} port {host}:{port} is in use ({exc.strerror}): stop what listens there "
                f"or choose another with --{what.lower()}-port"
            ) from exc


def check_ports_free(host: str, http_port: int, grpc_port: int) -> None:
    """Port 0 (any free port) is always free."""
    for what, port in (("HTTP", http_port), ("gRPC", grpc_port)):
        if port:
            check_port_free(host, port, what)


def free_port(host: str) -> int:
    with socket.socket(_family(host), socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
