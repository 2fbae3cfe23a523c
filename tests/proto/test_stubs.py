"""The committed stubs must be what the .proto generates today."""
from __future__ import annotations

from pathlib import Path

from shunter.proto import generate


def test_committed_stubs_match_the_proto(tmp_path: Path):
    fresh = generate.generate(tmp_path)
    for name, text in fresh.items():
        committed = (generate.PROTO_DIR / name).read_text()
        assert committed == text, f"proto/{name} is stale: run `python -m shunter.proto.generate`"


def test_stubs_import_inside_the_package():
    from shunter.proto import generation_pb2, generation_pb2_grpc

    assert generation_pb2.DESCRIPTOR.package == "shunter.v1"
    assert generation_pb2_grpc.GenerationStub is not None
    assert "Generation" in generation_pb2.DESCRIPTOR.services_by_name
