"""electra-serve: serve a model repository over REST and gRPC (docs/REFERENCE.md §1.2)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

if TYPE_CHECKING:
    from server.settings import Settings


def main(argv: list[str] | None = None) -> int:
    from server.settings import load_settings

    try:
        settings = load_settings(argv)
    except ValidationError as exc:
        print(f"electra-serve: error: {exc}", file=sys.stderr)
        return 2
    from server.logs import configure

    configure(settings.log_level, settings.log_format)
    from server.ports import PortInUse, check_ports_free

    try:
        check_ports_free(settings.host, settings.http_port, settings.grpc_port)
    except PortInUse as exc:
        print(f"electra-serve: error: {exc}", file=sys.stderr)
        return 1
    repository = settings.model_repository
    if repository is None:
        from server.demo_repository import ensure_demo_repository

        try:
            repository = ensure_demo_repository()
        except RuntimeError as exc:
            print(f"electra-serve: error: {exc}", file=sys.stderr)
            return 2
    elif not repository.is_dir():
        print(f"electra-serve: error: model repository {repository} is not a directory", file=sys.stderr)
        return 2
    if settings.workers > 1:
        return _supervise(settings, repository, sys.argv[1:] if argv is None else argv)
    import ssl

    from server.runner import Security, serve

    try:
        security = Security.from_settings(settings)
    except (OSError, ValueError, ssl.SSLError) as exc:
        print(f"electra-serve: error: {exc}", file=sys.stderr)
        return 2
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(serve(settings, repository, security))


def _supervise(settings: Settings, repository: Path, argv: list[str]) -> int:
    """--workers N: one model owner (this process) and N API processes (server.workers)."""
    import os
    import shutil
    import tempfile

    # Before prometheus_client is first imported, here and (inherited) in every worker.
    metrics_dir = tempfile.mkdtemp(prefix="electra-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    from server.workers.supervisor import supervise

    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            return runner.run(supervise(settings, repository, argv))
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _loop_factory():
    try:
        import uvloop

        return uvloop.new_event_loop
    except ImportError:
        return None


if __name__ == "__main__":
    sys.exit(main())
