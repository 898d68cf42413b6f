"""The committed gRPC stubs are exactly what grpcio-tools generates from proto/, they import as the
package `proto`, and the KServe v2 protos are wire-compatible with Triton's (tritonclient's copy).

Our `inference` messages and tritonclient's share full names, so both cannot live in one
process's default descriptor pool: imports of our stubs run in a subprocess, and the
wire-compatibility check compares descriptors produced by protoc, not imported modules.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

from proto.generate import GRPC_TOOLS_VERSION, PROTOS, ROOT, generated_files


@pytest.fixture(scope="module")
def protoc_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An interpreter with exactly the grpcio-tools that generated the stubs, in an environment of its
    own: its protobuf need not be one the server's environment accepts (tritonclient's is < 7)."""
    venv = tmp_path_factory.mktemp("protoc-venv")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", f"grpcio-tools=={GRPC_TOOLS_VERSION}"],
        check=True, timeout=600, capture_output=True,
    )  # fmt: skip
    return python


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory: pytest.TempPathFactory, protoc_python: Path) -> Path:
    out = tmp_path_factory.mktemp("stubs")
    subprocess.run([str(protoc_python), "-m", "proto.generate", str(out)], cwd=ROOT, check=True, timeout=120)
    return out


def test_committed_stubs_match_a_fresh_generation(regenerated: Path) -> None:
    fresh = sorted(str(p.relative_to(regenerated)) for p in regenerated.rglob("*.py*"))
    assert fresh == sorted(generated_files())
    stale = [name for name in fresh if (ROOT / name).read_bytes() != (regenerated / name).read_bytes()]
    assert not stale, f"stale generated stubs (run `python -m proto.generate`): {stale}"


@pytest.mark.parametrize("runtime", ["protobuf>=6.33.5,<7", "protobuf>=7,<8"])
def test_the_stubs_load_on_both_protobuf_majors_the_server_allows(
    runtime: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """6 is what the current tritonclient forces, 7 what pip takes for the server alone."""
    venv = tmp_path_factory.mktemp("runtime")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    install = [python, "-m", "pip", "install", "-q", runtime, "grpcio>=1.81.1"]
    subprocess.run(install, check=True, timeout=600, capture_output=True)
    code = (
        "import google.protobuf as p; from proto.electra.v1 import electra_pb2, electra_pb2_grpc; "
        "from proto.inference import grpc_service_pb2, grpc_service_pb2_grpc, model_config_pb2; "
        "print(p.__version__)"
    )
    done = subprocess.run([python, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().startswith(runtime[len("protobuf>=")])


def test_stubs_import_as_package_proto() -> None:
    code = (
        "from proto.electra.v1 import electra_pb2, electra_pb2_grpc\n"
        "from proto.inference import grpc_service_pb2, grpc_service_pb2_grpc, model_config_pb2\n"
        "print(electra_pb2.DESCRIPTOR.services_by_name['ElectraService'].full_name)\n"
        "print(grpc_service_pb2.DESCRIPTOR.services_by_name['GRPCInferenceService'].full_name)\n"
        "print(model_config_pb2.ModelConfig.DESCRIPTOR.full_name)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [
        "electra.v1.ElectraService",
        "inference.GRPCInferenceService",
        "inference.ModelConfig",
    ]


def _descriptor_set(protoc_python: Path, tmp_path: Path) -> dict[str, descriptor_pb2.FileDescriptorProto]:
    out = tmp_path / "set.pb"
    files = [str(ROOT / proto) for proto, _ in PROTOS]
    code = (
        "import sys, pathlib; from grpc_tools import protoc; "
        "include = str(pathlib.Path(protoc.__file__).parent / '_proto'); "
        "sys.exit(protoc.main(['protoc', '-I', sys.argv[1], '-I', include, *sys.argv[2:]]))"
    )
    command = [str(protoc_python), "-c", code, str(ROOT), f"--descriptor_set_out={out}", *files]
    subprocess.run(command, check=True, timeout=120)
    parsed = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    return {f.name: f for f in parsed.file}


def _messages(file: descriptor_pb2.FileDescriptorProto) -> dict[str, descriptor_pb2.DescriptorProto]:
    found: dict[str, descriptor_pb2.DescriptorProto] = {}

    def walk(prefix: str, message: descriptor_pb2.DescriptorProto) -> None:
        name = f"{prefix}.{message.name}"
        found[name] = message
        for nested in message.nested_type:
            walk(name, nested)

    for message in file.message_type:
        walk(f".{file.package}", message)
    return found


def _wire(field: descriptor_pb2.FieldDescriptorProto) -> tuple[object, ...]:
    # What decides the bytes on the wire (and JSON names): number, type, label, referenced type.
    return field.name, field.number, field.type, field.label, field.type_name


def test_kserve_protos_are_wire_compatible_with_triton(protoc_python: Path, tmp_path: Path) -> None:
    from tritonclient.grpc import model_config_pb2, service_pb2

    ours = _descriptor_set(protoc_python, tmp_path)
    theirs: dict[str, descriptor_pb2.DescriptorProto] = {}
    for module in (service_pb2, model_config_pb2):
        proto = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(proto)
        theirs |= _messages(proto)
        if proto.service:
            (triton_service,) = proto.service

    mine: dict[str, descriptor_pb2.DescriptorProto] = {}
    for name in ("proto/inference/grpc_service.proto", "proto/inference/model_config.proto"):
        mine |= _messages(ours[name])
    checked = 0
    for full_name, message in mine.items():
        assert full_name in theirs, f"{full_name} is not a Triton message"
        triton_fields = {f.number: _wire(f) for f in theirs[full_name].field}
        for field in message.field:
            assert triton_fields.get(field.number) == _wire(field), f"{full_name}.{field.name} differs from Triton"
            checked += 1
    assert checked > 100

    (service,) = ours["proto/inference/grpc_service.proto"].service
    assert service.name == triton_service.name == "GRPCInferenceService"
    triton_methods = {m.name: m for m in triton_service.method}
    for method in service.method:
        other = triton_methods[method.name]
        assert (method.input_type, method.output_type, method.client_streaming, method.server_streaming) == (
            other.input_type,
            other.output_type,
            other.client_streaming,
            other.server_streaming,
        )
    assert {m.name for m in service.method} >= {
        "ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata",
        "ModelInfer", "ModelStreamInfer", "ModelConfig", "ModelStatistics",
    }  # fmt: skip


def test_typed_api_is_documented_and_versioned(protoc_python: Path, tmp_path: Path) -> None:
    electra = _descriptor_set(protoc_python, tmp_path)["proto/electra/v1/electra.proto"]
    assert electra.package == "electra.v1"
    (service,) = electra.service
    methods = {m.name: m for m in service.method}
    assert set(methods) == {"Classify", "AnswerQuestion", "Tag", "Discriminate", "Rerank", "Stream"}
    assert methods["Stream"].client_streaming and methods["Stream"].server_streaming
    source = (ROOT / "proto/electra/v1/electra.proto").read_text()
    # Parameters are proto3 `optional` ("unset = the REST default").
    messages = _messages(electra)
    optional_only = ("Classify", "Qa", "Discriminate", "Rerank")
    for name in (f".electra.v1.{kind}Parameters" for kind in optional_only):
        assert all(f.proto3_optional for f in messages[name].field), name
    assert "reserved" in source  # the rule for removed fields is written down
