"""Regenerate the Python stubs in serving/_proto from protos/ (needs grpcio-tools).

    python protos/generate.py           # write the stubs
    python protos/generate.py --check   # exit 1 if the committed stubs are stale

The proto is mapped to ``serving/_proto/...`` so the generated modules import each other as
``serving._proto.cascade.v1``; the proto package (what clients see) stays ``cascade.v1``.

The generator writes its own version into the stubs (``GRPC_GENERATED_VERSION`` and the protobuf
runtime check), and the stubs refuse to import under an older grpcio / protobuf. So the dev extra pins
grpcio-tools exactly (``GENERATOR`` below, kept equal by a test): the committed stubs are then
byte-for-byte what any fresh machine regenerates, and their runtime floors are the ones the package
declares.
"""

from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "serving" / "_proto"
GENERATOR = "1.85.1"  # grpcio-tools, pinned in pyproject's dev extra


def _protos(proto_root: Path) -> list[Path]:
    return sorted(p.relative_to(proto_root) for p in proto_root.rglob("*.proto"))


def generate(out_root: Path, proto_root: Path = ROOT / "protos") -> list[Path]:
    import grpc_tools

    include = str(Path(grpc_tools.__file__).parent / "_proto")
    protos = _protos(proto_root)
    args = [
        "protoc",
        f"-I{include}",
        f"-Iserving/_proto={proto_root}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
    ]
    args += [f"serving/_proto/{p}" for p in protos]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    files = []
    for base in (Path(s).with_suffix("") for s in map(str, protos)):
        for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"):
            files.append(Path("serving/_proto") / base.parent / (base.name + suffix))
    for f in files:  # make every folder on the way a package
        for parent in list(f.parents)[:-2]:
            init = out_root / parent / "__init__.py"
            init.parent.mkdir(parents=True, exist_ok=True)
            init.touch()
    return files


def stale(proto_root: Path = ROOT / "protos") -> list[Path]:
    """The committed stubs that differ from what the protos under ``proto_root`` generate."""
    with tempfile.TemporaryDirectory() as tmp:
        return [
            f
            for f in generate(Path(tmp), proto_root)
            if not (ROOT / f).exists() or not filecmp.cmp(Path(tmp) / f, ROOT / f, shallow=False)
        ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="compare with the committed stubs, write nothing")
    args = ap.parse_args()
    tools = version("grpcio-tools")
    if tools != GENERATOR:
        print(
            f"grpcio-tools {tools} installed; the stubs are generated with {GENERATOR} "
            f'(pip install "grpcio-tools=={GENERATOR}")',
            file=sys.stderr,
        )
        return 1
    if not args.check:
        print("\n".join(map(str, generate(ROOT))))
        return 0
    out = stale()
    for f in out:
        print(f"stale: {f} (run: python protos/generate.py)", file=sys.stderr)
    return 1 if out else 0


if __name__ == "__main__":
    sys.exit(main())
