"""Regenerate the Python stubs from `shunter/v1/generation.proto`.

The stubs live as plain modules in this package (`shunter.proto.generation_pb2`), so no extra
package needs declaring; the one import line grpcio-tools writes (`from shunter.v1 import ...`)
is rewritten to point here. Run `python -m shunter.proto.generate` after editing the .proto;
`tests/proto/test_stubs.py` fails while the committed stubs are stale.
"""
from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent
PROTO_FILE = "shunter/v1/generation.proto"
STUBS = ("generation_pb2.py", "generation_pb2.pyi", "generation_pb2_grpc.py")


def generate(out_dir: Path) -> dict[str, str]:
    """Run protoc into `out_dir`; returns {stub file name: text} with the import fixed."""
    from grpc_tools import protoc

    out_dir.mkdir(parents=True, exist_ok=True)
    args = ["protoc", f"-I{PROTO_DIR}", f"--python_out={out_dir}", f"--pyi_out={out_dir}",
            f"--grpc_python_out={out_dir}", str(PROTO_DIR / PROTO_FILE)]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {PROTO_FILE}")
    texts = {}
    for name in STUBS:
        text = (out_dir / "shunter" / "v1" / name).read_text()
        texts[name] = text.replace("from shunter.v1 import generation_pb2", "from shunter.proto import generation_pb2")
    return texts


def without_generator_version(text: str) -> str:
    """The stub with grpcio-tools' own version blanked: it stamps itself into the gRPC stub as the
    oldest grpcio the stub accepts, which says nothing about whether the stub matches the .proto
    (a newer grpcio-tools writes the same stub with a newer stamp)."""
    return re.sub(r"^GRPC_GENERATED_VERSION = '[^']*'$", "GRPC_GENERATED_VERSION = ...", text, flags=re.M)


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        for name, text in generate(Path(tmp)).items():
            (PROTO_DIR / name).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
