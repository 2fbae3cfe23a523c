"""The committed stubs must be what the .proto generates today, and say what the server serves."""
from __future__ import annotations

from pathlib import Path

from shunter.proto import generate


def test_committed_stubs_match_the_proto(tmp_path: Path):
    fresh = generate.generate(tmp_path)
    assert set(fresh) == set(generate.STUBS)
    for name, text in fresh.items():
        committed = generate.without_generator_version((generate.PROTO_DIR / name).read_text())
        assert committed == generate.without_generator_version(text), \
            f"proto/{name} is stale: run `python -m shunter.proto.generate`"


def test_the_dependency_floors_admit_what_the_committed_stubs_ask_for():
    """The stubs refuse, at import, a grpcio older than the one that generated them and a
    protobuf of another major or older minor: pyproject.toml's ranges must say the same."""
    import re
    import tomllib

    deps = tomllib.loads((generate.PROTO_DIR.parent / "pyproject.toml").read_text())["project"]["dependencies"]
    grpc_stub = (generate.PROTO_DIR / "generation_pb2_grpc.py").read_text()
    stamped = re.search(r"^GRPC_GENERATED_VERSION = '([^']*)'$", grpc_stub, re.M).group(1)
    assert f"grpcio>={stamped}" in deps
    protobuf = re.search(r"# Protobuf Python Version: (\d+)\.(\d+)\.(\d+)", (generate.PROTO_DIR / "generation_pb2.py").read_text())
    major, minor, patch = protobuf.groups()
    assert f"protobuf>={major}.{minor}.{patch},<{int(major) + 1}" in deps


def test_stubs_describe_the_generation_service():
    from shunter.proto import generation_pb2

    assert generation_pb2.DESCRIPTOR.package == "shunter.v1"
    service = generation_pb2.DESCRIPTOR.services_by_name["Generation"]
    methods = {m.name: m for m in service.methods}
    assert set(methods) == {"Generate", "ClusterStatus"}
    generate_rpc = methods["Generate"]
    assert generate_rpc.input_type.name == "GenerateRequest" and generate_rpc.output_type.name == "GenerateResponse"
    assert generate_rpc.server_streaming and not generate_rpc.client_streaming
    assert not methods["ClusterStatus"].server_streaming


def test_the_grpc_stub_binds_each_rpc():
    from shunter.proto import generation_pb2_grpc

    class Channel:  # records what the stub asks of a channel
        def __init__(self):
            self.calls = {}

        def unary_stream(self, path, **kw):
            self.calls[path] = "unary_stream"

        def unary_unary(self, path, **kw):
            self.calls[path] = "unary_unary"

    channel = Channel()
    generation_pb2_grpc.GenerationStub(channel)
    assert channel.calls == {"/shunter.v1.Generation/Generate": "unary_stream",
                             "/shunter.v1.Generation/ClusterStatus": "unary_unary"}
