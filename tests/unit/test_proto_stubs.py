import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STUBS = ROOT / "serving" / "_proto" / "cascade" / "v1"


def _generate_module():
    spec = importlib.util.spec_from_file_location("proto_generate", ROOT / "protos" / "generate.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _floor(requirements: list[str], name: str) -> str:
    (req,) = [r for r in requirements if re.match(rf"{re.escape(name)}\s*[=<>~]", r)]
    return re.search(r"(?:>=|==)\s*([\d.]+)", req).group(1)


def test_generated_stubs_are_fresh():
    r = subprocess.run(
        [sys.executable, str(ROOT / "protos" / "generate.py"), "--check"], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr


def test_a_changed_proto_without_regenerated_stubs_is_caught(tmp_path):
    gen = _generate_module()
    protos = tmp_path / "protos"
    shutil.copytree(ROOT / "protos", protos, ignore=shutil.ignore_patterns("*.py"))
    proto = protos / "cascade" / "v1" / "cascade.proto"
    assert gen.stale(protos) == []  # the copy as it is: fresh
    text = proto.read_text()
    changed = text.replace("message GenerateRequest {", "message GenerateRequest {\n  string added_field = 999;", 1)
    assert changed != text
    proto.write_text(changed)
    assert {f.name for f in gen.stale(protos)} == {"cascade_pb2.py", "cascade_pb2.pyi"}
    rpc = "service Cascade {\n  rpc Added(GenerateRequest) returns (GenerateResponse);"
    proto.write_text(text.replace("service Cascade {", rpc, 1))
    assert {f.name for f in gen.stale(protos)} == {"cascade_pb2.py", "cascade_pb2_grpc.py"}


def test_the_generator_pin_and_the_stubs_runtime_floors_agree():
    """The stubs carry the generator's version as the grpcio / protobuf they need at runtime: the pinned
    generator, the committed stubs and the package's declared floors must name the same versions."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    gen = _generate_module()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert _floor(project["optional-dependencies"]["dev"], "grpcio-tools") == gen.GENERATOR
    assert "==" in next(r for r in project["optional-dependencies"]["dev"] if r.startswith("grpcio-tools"))
    grpc_stamp = re.search(r"GRPC_GENERATED_VERSION = '([\d.]+)'", (STUBS / "cascade_pb2_grpc.py").read_text())
    assert grpc_stamp.group(1) == gen.GENERATOR == _floor(project["dependencies"], "grpcio")
    pb = (STUBS / "cascade_pb2.py").read_text()
    pb_stamp = re.search(r"Domain\.PUBLIC,\s*(\d+),\s*(\d+),\s*(\d+),", pb)
    assert ".".join(pb_stamp.groups()) == _floor(project["dependencies"], "protobuf")


def test_stubs_expose_the_contract():
    from serving._proto.cascade.v1 import cascade_pb2 as pb

    svc = pb.DESCRIPTOR.services_by_name["Cascade"]
    assert svc.full_name == "cascade.v1.Cascade"
    assert {m.name for m in svc.methods} == {"Generate", "GenerateStream"}
    req = pb.GenerateRequest.DESCRIPTOR.fields_by_name
    assert {"prompt", "max_new_tokens", "force_tier", "threshold", "messages"} <= set(req)
    resp = pb.GenerateResponse.DESCRIPTOR.fields_by_name
    assert {"text", "tier", "deferred", "score", "usage", "tiers"} <= set(resp)
