import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generated_stubs_are_fresh():
    r = subprocess.run(
        [sys.executable, str(ROOT / "protos" / "generate.py"), "--check"], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr


def test_stubs_expose_the_contract():
    from serving._proto.cascade.v1 import cascade_pb2 as pb

    svc = pb.DESCRIPTOR.services_by_name["Cascade"]
    assert svc.full_name == "cascade.v1.Cascade"
    assert {m.name for m in svc.methods} == {"Generate", "GenerateStream"}
    req = pb.GenerateRequest.DESCRIPTOR.fields_by_name
    assert {"prompt", "max_new_tokens", "force_tier", "threshold", "messages"} <= set(req)
    resp = pb.GenerateResponse.DESCRIPTOR.fields_by_name
    assert {"text", "tier", "deferred", "score", "usage", "tiers"} <= set(resp)
