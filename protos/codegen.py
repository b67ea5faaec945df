"""Regenerate the Python modules for protos/chord/v1/*.proto; `--check` fails on any drift."""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "protos" / "chord" / "v1"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def _generate(out_dir: Path) -> list[Path]:
    """Run protoc for every .proto under PROTO_DIR into out_dir; return the generated files."""
    protos = sorted(PROTO_DIR.glob("*.proto"))
    if not protos:
        raise FileNotFoundError(f"no .proto files under {PROTO_DIR}")
    include = Path(protoc.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{ROOT}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *[str(p.relative_to(ROOT)) for p in protos],
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(args)}")
    gen_dir = out_dir / "protos" / "chord" / "v1"
    return sorted(p for p in gen_dir.iterdir() if p.name.endswith(GENERATED_SUFFIXES))


def main(argv: list[str] | None = None) -> int:
    """Regenerate in place, or with --check report files that differ from a fresh generation."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if committed code is stale")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        fresh = _generate(Path(tmp))
        stale = []
        for path in fresh:
            target = PROTO_DIR / path.name
            if args.check:
                if not target.exists() or target.read_bytes() != path.read_bytes():
                    stale.append(target.relative_to(ROOT))
            else:
                shutil.copyfile(path, target)
    if stale:
        print("generated protobuf code is stale; run `python -m protos.codegen`:", file=sys.stderr)
        for path in stale:
            print(f"  {path}", file=sys.stderr)
        return 1
    print("protobuf code is up to date" if args.check else f"generated {len(fresh)} files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
