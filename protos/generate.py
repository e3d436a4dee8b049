"""Regenerate the Python stubs in serving/_proto from protos/ (needs grpcio-tools).

    python protos/generate.py           # write the stubs
    python protos/generate.py --check   # exit 1 if the committed stubs are stale

The proto is mapped to ``serving/_proto/...`` so the generated modules import each other as
``serving._proto.cascade.v1``; the proto package (what clients see) stays ``cascade.v1``.
"""

from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = sorted(p.relative_to(ROOT / "protos") for p in (ROOT / "protos").rglob("*.proto"))
OUT = ROOT / "serving" / "_proto"
GENERATED = [Path(s).with_suffix("") for s in map(str, PROTOS)]


def generate(out_root: Path) -> list[Path]:
    import grpc_tools

    include = str(Path(grpc_tools.__file__).parent / "_proto")
    args = [
        "protoc",
        f"-I{include}",
        f"-Iserving/_proto={ROOT / 'protos'}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
    ]
    args += [f"serving/_proto/{p}" for p in PROTOS]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    files = []
    for base in GENERATED:
        for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"):
            files.append(Path("serving/_proto") / base.parent / (base.name + suffix))
    for f in files:  # make every folder on the way a package
        for parent in list(f.parents)[:-2]:
            init = out_root / parent / "__init__.py"
            init.parent.mkdir(parents=True, exist_ok=True)
            init.touch()
    return files


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="compare with the committed stubs, write nothing")
    args = ap.parse_args()
    if not args.check:
        files = generate(ROOT)
        print("\n".join(map(str, files)))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        stale = [
            f
            for f in generate(Path(tmp))
            if not (ROOT / f).exists() or not filecmp.cmp(Path(tmp) / f, ROOT / f, shallow=False)
        ]
    for f in stale:
        print(f"stale: {f} (run: python protos/generate.py)", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
