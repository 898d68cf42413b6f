"""electra-serve: serve a model repository over REST and gRPC (CONTRACT §1)."""

from __future__ import annotations

import asyncio
import sys

from pydantic import ValidationError


def main(argv: list[str] | None = None) -> int:
    from server.settings import load_settings

    try:
        settings = load_settings(argv)
    except ValidationError as exc:
        print(f"electra-serve: error: {exc}", file=sys.stderr)
        return 2
    from server.logs import configure

    configure(settings.log_level, settings.log_format)
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
    import ssl

    from server.runner import Security, serve

    try:
        security = Security.from_settings(settings)
    except (OSError, ValueError, ssl.SSLError) as exc:
        print(f"electra-serve: error: {exc}", file=sys.stderr)
        return 2
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:
        loop_factory = None
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(serve(settings, repository, security))


if __name__ == "__main__":
    sys.exit(main())
