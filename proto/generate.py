"""Regenerate the committed Python stubs: `python -m proto.generate [OUT_DIR]` (default: the repository root).

protoc runs from the repository root with `-I .`, so generated imports read
`from proto.inference import ...` and the stubs work as the package `proto`.
tests/unit/test_proto_stubs.py runs the same generation into a temporary directory and fails
on any difference from the committed files.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# (proto file, has services: also generate *_pb2_grpc.py)
PROTOS: tuple[tuple[str, bool], ...] = (
    ("proto/electra/v1/electra.proto", True),
    ("proto/inference/model_config.proto", False),
    ("proto/inference/grpc_service.proto", True),
)


def generated_files() -> list[str]:
    """Paths, relative to the root, of every generated file."""
    files = []
    for proto, has_services in PROTOS:
        stem = proto.removesuffix(".proto")
        files.append(f"{stem}_pb2.py")
        if has_services:
            files.append(f"{stem}_pb2_grpc.py")
    return files


def generate(out_dir: Path) -> None:
    from grpc_tools import protoc  # build-time only: the server never imports grpc_tools

    out_dir.mkdir(parents=True, exist_ok=True)
    include = str(Path(protoc.__file__).parent / "_proto")  # the well-known types
    for proto, has_services in PROTOS:
        args = ["grpc_tools.protoc", "-I", str(ROOT), "-I", include, f"--python_out={out_dir}"]
        if has_services:
            args.append(f"--grpc_python_out={out_dir}")
        # protoc resolves the file against -I ROOT, so its name (and imports) stay root-relative.
        code = protoc.main([*args, str(ROOT / proto)])
        if code != 0:
            raise RuntimeError(f"protoc failed on {proto} (exit {code})")


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT)
