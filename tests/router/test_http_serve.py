"""`shunter serve --http-port`: its options are checked before anything starts, and in a running server
the HTTP API shares the router with gRPC, drains with it on SIGTERM, and leaves the signals to serve."""
from __future__ import annotations

import asyncio
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import grpc
import openai
import pytest

from shunter import cli
from shunter.proto import generation_pb2 as pb
from shunter.proto import generation_pb2_grpc as pb_grpc
from shunter.router.serve import cli as serve_cli
from shunter.router.http import HttpGateway
from shunter.router.core import Router
from tests.conftest import REPO

# `shunter serve` as run() starts it, with in-process replicas instead of Ray actors (no Ray here).
SERVE = """
import asyncio, sys
from shunter import cli
from shunter.router.serve import cli as serve_cli
from shunter.router.core.replica_client import LocalReplicaClient
from shunter.testing.fake_engine import FakeEngine
args = cli.build_parser().parse_args(["serve", "--model", "fake:bytes", "--port", "0", "--http-port", "0"])
serve_cli.check(args)
engine = lambda: FakeEngine(with_tokenizer=True, step_time=0.005)  # noqa: E731
clients = [LocalReplicaClient(f"replica-{i}", engine) for i in range(2)]
sys.exit(asyncio.run(serve_cli.serve(args, clients)))
"""


@pytest.fixture
def no_ray(monkeypatch):
    def started(*args, **kwargs):
        raise AssertionError("Ray (or the model) was started before the options were checked")

    monkeypatch.setattr(serve_cli, "_start_ray", started)
    monkeypatch.setattr(serve_cli, "_prepare_model", started)


def run_serve(capsys, *argv: str) -> tuple[int, str]:
    try:
        code = cli.main(["serve", *argv])
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


def test_bad_http_options_are_one_line_before_ray(no_ray, capsys, tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, err = run_serve(capsys, "--port", "0", "--http-port", str(port))
    assert code == 2 and err.startswith(f"error: --http-port: cannot listen on 127.0.0.1:{port}")
    cases = [(["--http-port", "70000"], "error: --http-port: must be an integer in 0..65535"),
             (["--port", "50123", "--http-port", "50123"], "error: --http-port: 50123 is the gRPC --port too"),
             (["--port", "0", "--api-key-file", str(tmp_path / "none")], "error: --api-key-file: cannot read")]
    for argv, says in cases:
        code, err = run_serve(capsys, *argv)
        assert code == 2 and err.startswith(says) and err.count("\n") == 1, err


def test_serve_with_http_shares_the_router_and_drains_on_sigterm():
    proc = subprocess.Popen([sys.executable, "-c", SERVE], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        line = proc.stdout.readline()
        found = re.search(r"on 127\.0\.0\.1:(\d+) \(.*?\), OpenAI HTTP on (http://127\.0\.0\.1:(\d+)/v1)", line)
        if not found:  # the server runs on: stop it before reading what it said (a read would wait for its end)
            proc.kill()
            pytest.fail(line + proc.stderr.read())
        grpc_port, base_url, http_port = found.group(1), found.group(2), found.group(3)
        oai = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=30)
        stream = oai.completions.create(model="fake:bytes", prompt="hi", max_tokens=300, stream=True,
                                        stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
        chunks = iter(stream)
        next(chunks)
        rest = {}
        reader = threading.Thread(target=lambda: rest.setdefault("chunks", list(chunks)))
        reader.start()
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:  # one router: it counts both doors
            status = pb_grpc.GenerationStub(channel).ClusterStatus(pb.ClusterStatusRequest(), timeout=10)
        assert status.counters.in_flight == 1
        proc.send_signal(signal.SIGTERM)
        assert _health_goes_503(http_port), "health did not report the drain"
        with pytest.raises(openai.InternalServerError):  # a new request while draining: 503
            oai.completions.create(model="fake:bytes", prompt="late", max_tokens=2)
        reader.join(30)
        *_, last, usage = rest["chunks"]
        assert last.choices[0].finish_reason == "length" and usage.usage.completion_tokens == 300  # it finished
        assert proc.wait(30) == 0
        assert "shunter: stopped" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()
        proc.stderr.close()


def test_the_gateway_leaves_the_signal_handlers_to_serve():
    """uvicorn alone installs its own SIGINT/SIGTERM handlers (and puts the old ones back when it
    stops): embedded, it must do neither, or a Ctrl-C would stop HTTP without draining."""
    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, lambda: None)
        before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        gateway = HttpGateway(Router([]), "127.0.0.1", 0, model="m")
        await gateway.start()
        assert {s: signal.getsignal(s) for s in before} == before
        await gateway.stop()
        assert {s: signal.getsignal(s) for s in before} == before
        loop.remove_signal_handler(signal.SIGTERM)

    asyncio.run(main())


def _health_goes_503(port: str) -> bool:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5)
        except urllib.error.HTTPError as e:
            return e.code == 503
        time.sleep(0.01)
    return False
