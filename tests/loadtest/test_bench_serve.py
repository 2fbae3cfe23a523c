"""The load client (`shunter bench serve`) against the fake model behind a real gRPC server on loopback."""
from __future__ import annotations

import asyncio
import json

import pytest

from shunter import cli
from shunter.loadtest import bench_serve
from shunter.loadtest import workloads as wl
from shunter.loadtest.load_backend import GrpcBackend, HttpBackend, loopback_target
from shunter.loadtest.load_driver import LoadDriver
from shunter.loadtest.load_metrics import RequestRecord, summarize
from shunter.router.core import LocalReplicaClient
from shunter.router.core import RouterConfig
from shunter.testing.background import BackgroundServer
from shunter.testing.fake_engine import FakeEngine, reference_output

STEP_S = 0.002


def start(step_s: float = STEP_S, http: bool = False, **config) -> BackgroundServer:
    clients = [LocalReplicaClient(f"r{i}", lambda: FakeEngine(step_time=step_s)) for i in range(2)]
    return BackgroundServer(clients, RouterConfig(poll_wait_s=0.05, rebalance=False, **config), http=http)


@pytest.fixture(scope="module")
def server():
    s = start(http=True)
    yield s
    s.close()


def bench(server: BackgroundServer, tmp_path, *args: str) -> dict:
    """`shunter bench serve` against the server's gRPC port (a later `--target` wins)."""
    out = tmp_path / "serve.json"
    assert bench_serve.main(["--target", f"127.0.0.1:{server.port}", "--out", str(out), *args]) == 0
    return json.loads(out.read_text())


class Recording:
    """A backend around another that keeps what was sent and received, and the most streams open at once."""

    def __init__(self, inner) -> None:
        self.inner, self.open, self.most = inner, 0, 0
        self.sent: dict[str, list[int]] = {}
        self.received: dict[str, list[int]] = {}

    async def stream(self, request):
        self.open += 1
        self.most = max(self.most, self.open)
        self.sent[request.request_id] = request.prompt_token_ids
        try:
            async for chunk in self.inner.stream(request):
                self.received.setdefault(request.request_id, []).extend(chunk.token_ids)
                yield chunk
        finally:
            self.open -= 1

    async def close(self) -> None:
        await self.inner.close()


def drive(server: BackgroundServer, requests, duration_s: float = 30.0, http: bool = False, **kw):
    """One run through a recording gRPC (or HTTP) backend: (RunResult, the backend)."""
    async def go():
        inner = HttpBackend(f"127.0.0.1:{server.gateway.port}") if http else GrpcBackend(f"127.0.0.1:{server.port}")
        backend = Recording(inner)
        try:
            result = await LoadDriver(backend, requests, 1000, **kw).run(duration_s)
        finally:
            await backend.close()
        return result, backend

    return asyncio.run(go())


def test_open_loop_sends_each_request_at_its_arrival_with_sane_latency_and_writes_json_and_png(server, tmp_path):
    result = bench(server, tmp_path, "--rate", "40", "80", "--num-requests", "24", "--max-input-len", "48",
                   "--max-output-len", "6", "--seed", "3")
    assert result["command"].startswith("shunter bench serve --target")
    run, again = result["runs"]
    assert [r["prompt_len"] for r in again["requests"]] == [r["prompt_len"] for r in run["requests"]]
    assert all(r["cached_tokens"] == 0 for r in run["requests"] + again["requests"])  # each run's own prompts
    s = run["summary"]
    assert (s["requests"], s["sent"], s["finished"], s["errors"], run["cut"]) == (24, 24, 24, {}, "")
    planned = {r.request_id: r for r in wl.sharegpt(24, 40.0, seed=3)}
    for rec in run["requests"]:
        asked = min(planned[rec["request_id"]].output_len, 6)
        assert rec["num_tokens"] == rec["max_tokens"] == asked and len(rec["itl_s"]) == asked - 1
        assert rec["due_s"] == pytest.approx(planned[rec["request_id"]].arrival_s, abs=1e-6)
        assert 0 <= rec["sent_s"] - rec["due_s"] < 0.25  # sent on schedule (Poisson at 40/s), not all at once
        assert rec["replicas"][0] in ("r0", "r1") and rec["finish_reason"] == "length"
    assert 0 < s["ttft_ms"]["p50"] < 500 and s["ttft_ms"]["p99"] < 2000
    assert STEP_S * 1e3 / 2 < s["tbt_ms"]["mean"] < 200  # a token per engine step of 2 ms
    assert s["goodput"] == pytest.approx(24 / s["duration_s"]) and s["slo_attainment"] == 1.0
    assert (tmp_path / "serve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_closed_loop_never_exceeds_its_concurrency(server):
    requests = wl.sharegpt(12, float("inf"), seed=1)
    requests = [bench_serve.capped(r, 32, 8) for r in requests]
    result, backend = drive(server, requests, concurrency=3)
    assert backend.most == 3
    assert sum(r.finished for r in result.records) == 12


def _record(ttft_s=0.1, itl_s=(0.01, 0.02), finish="length", error="", sent=True) -> RequestRecord:
    return RequestRecord("r", "interactive", "", "", 0, 3, ttft_slo_ms=200.0, tbt_slo_ms=50.0,
                         sent_s=0.0 if sent else None, ttft_s=ttft_s, itl_s=list(itl_s), e2e_s=0.5,
                         num_tokens=len(itl_s) + 1, finish_reason=finish, error=error)


def test_goodput_counts_exactly_the_requests_meeting_both_slos():
    records = [
        _record(),  # good
        _record(ttft_s=0.2, itl_s=(0.05, 0.05)),  # good: targets are inclusive
        _record(ttft_s=0.3),  # TTFT missed
        _record(itl_s=(0.01, 0.06)),  # one gap missed
        _record(ttft_s=None, itl_s=(), finish="", error="RESOURCE_EXHAUSTED"),
        _record(finish="abort"),  # fast, but did not finish
        _record(sent=False),
    ]
    s = summarize(records, duration_s=2.0)
    assert (s.sent, s.finished, s.not_sent) == (6, 4, 1)
    assert s.errors == {"RESOURCE_EXHAUSTED": 1, "finish:abort": 1}
    assert s.goodput == 1.0 and s.request_throughput == 2.0
    assert s.slo_attainment == pytest.approx(2 / 6)
    assert (s.ttft_attainment, s.tbt_attainment) == (pytest.approx(3 / 6), pytest.approx(3 / 6))


def test_the_summary_compares_the_largest_gaps_of_moved_and_unmoved_requests():
    moved = [_record(itl_s=(0.01, g)) for g in (0.3, 0.5, 0.9)]
    for r in moved:
        r.replicas = ["r0", "r0", "r1"]
    stayed = [_record(itl_s=(0.01, g)) for g in (0.1, 0.2)]
    for r in stayed:
        r.replicas = ["r1", "r1"]
    s = summarize(moved + stayed + [_record(finish="abort")], duration_s=1.0)
    assert s.moved == 3 and s.worst_gap_moved_ms == pytest.approx(500)
    assert s.worst_gap_stayed_ms == pytest.approx(150)


def test_trace_replay_honours_its_arrival_times_and_targets(server, tmp_path):
    trace = tmp_path / "trace.jsonl"
    arrivals = [0.0, 0.3, 0.35, 0.8]
    trace.write_text("".join(
        json.dumps({"request_id": f"t{i}", "arrival_s": t, "prompt_token_ids": [11 + i] * 20, "output_len": 4,
                    "priority": "batch" if i % 2 else "interactive", "ttft_ms": 900 + i, "tbt_ms": 90}) + "\n"
        for i, t in enumerate(arrivals)))
    (run,) = bench(server, tmp_path, "--workload", "trace", "--trace", str(trace))["runs"]
    records = sorted(run["requests"], key=lambda r: r["request_id"])
    first = records[0]["sent_s"]
    for i, (rec, t) in enumerate(zip(records, arrivals)):
        assert rec["sent_s"] - first == pytest.approx(t, abs=0.1)
        assert (rec["prompt_len"], rec["num_tokens"], rec["ttft_slo_ms"], rec["tbt_slo_ms"]) == (20, 4, 900 + i, 90)
        assert rec["priority"] == ("batch" if i % 2 else "interactive")


@pytest.mark.parametrize("http", [False, True], ids=["grpc", "http"])
def test_multi_turn_prompts_grow_by_the_answer_received(server, http):
    requests = wl.shared_prefix(6, 50.0, seed=4, num_groups=150, system_prompt_len=32, question_len=8, output_len=5,
                                turns=3, think_s=0.05)
    result, backend = drive(server, requests, http=http)
    records = {r.request_id: r for r in result.records}
    for c in ("gsp-0", "gsp-1"):
        for k in (1, 2):
            prev, this = f"{c}-{k - 1}", f"{c}-{k}"
            answer = backend.received[prev]
            assert answer == reference_output(backend.sent[prev], 5, ignore_eos=True)
            assert backend.sent[this] == backend.sent[prev] + answer + backend.sent[this][-8:]
            assert records[this].sent_s >= records[prev].sent_s + records[prev].e2e_s + 0.05
            assert records[this].cached_tokens >= 32  # the server found the conversation so far cached
            assert records[this].prompt_len == len(backend.sent[this])
    assert all(r.finish_reason == "length" and r.ttft_s > 0 and len(r.itl_s) == 4 for r in result.records)


@pytest.mark.parametrize("target", ["10.1.2.3:50051", "example.com:50051", "0.0.0.0:50051"])
def test_non_loopback_targets_are_refused(target, capsys):
    with pytest.raises(SystemExit) as e:  # at parse time: nothing is sent anywhere
        cli.build_parser().parse_args(["bench", "serve", "--target", target, "--rate", "1"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --target:") and "not loopback" in err
    assert [loopback_target(t) for t in ("localhost:1", "[::1]:2", "127.0.0.1:50051")] == \
        ["localhost:1", "[::1]:2", "127.0.0.1:50051"]


@pytest.mark.parametrize("http", [False, True], ids=["grpc", "http"])
def test_server_errors_are_counted_per_code_not_fatal(tmp_path, http):
    busy = start(step_s=0.02, http=http, max_in_flight=2)
    target = ["--backend", "http", "--target", f"127.0.0.1:{busy.gateway.port}"] if http else []
    try:
        result = bench(busy, tmp_path, *target, "--rate", "inf", "--num-requests", "10", "--max-input-len", "16",
                       "--max-output-len", "4")
        s = result["runs"][0]["summary"]
        assert s["sent"] == 10 and s["errors"]["RESOURCE_EXHAUSTED"] >= 1
        assert s["finished"] + s["errors"]["RESOURCE_EXHAUSTED"] == 10 and s["finished"] >= 2
        invalid = bench(busy, tmp_path, *target, "--rate", "100", "--num-requests", "3", "--max-input-len", "16",
                        "--max-output-len", "2", "--vocab-size", "100000")  # ids past the fake's 1,000
        assert invalid["runs"][0]["summary"]["errors"] == {"INVALID_ARGUMENT": 3}
    finally:
        busy.close()


def test_a_run_stops_by_itself_at_its_duration_and_when_stopped(server):
    requests = [wl.WorkloadRequest(f"q{i}", 0.1 * i, 16, 4, seed=i) for i in range(40)]  # 4 s of arrivals
    result, _ = drive(server, requests, duration_s=0.6)
    assert result.cut == "duration" and 0.55 < result.duration_s < 1.5
    sent = [r for r in result.records if r.sent_s is not None]
    assert 0 < len(sent) < 40 and all(r.sent_s < 0.6 for r in sent)

    async def stopped():
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(0.4, stop.set)
        backend = GrpcBackend(f"127.0.0.1:{server.port}")
        try:
            return await LoadDriver(backend, requests, 1000).run(30.0, stop)
        finally:
            await backend.close()

    result = asyncio.run(stopped())
    assert result.cut == "stopped" and result.duration_s < 1.5
    assert 0 < sum(r.sent_s is not None for r in result.records) < 40
