"""The Prometheus pages: a live server scraped over HTTP and parsed with prometheus_client's own
parser, against what the client saw; the collectors' mapping of router and engine state."""
from __future__ import annotations

import dataclasses

import types

import grpc
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from shunter.proto import generation_pb2 as pb
from shunter.router.core import ENGINE_COUNTS
from shunter.router.metrics.collectors import COUNTERS, ReplicaCollector, RouterCollector
from shunter.router.core import LocalReplicaClient
from shunter.router.core import Router, RouterConfig
from shunter.sampling_params import SamplingParams
from shunter.testing.background import BackgroundServer
from tests.fakes import FakeEngine, reference_output
from tests.router.prometheus_page import Page, until


def request(prompt: list[int], max_tokens: int, **sampling) -> pb.GenerateRequest:
    return pb.GenerateRequest(prompt_token_ids=pb.TokenIds(ids=prompt),
                              sampling=pb.SamplingOptions(max_tokens=max_tokens, ignore_eos=True, **sampling))


@pytest.fixture
def server():
    clients = [LocalReplicaClient(f"r{i}", lambda: FakeEngine(step_time=0.002)) for i in range(2)]
    s = BackgroundServer(clients, RouterConfig(routing="round_robin", poll_wait_s=0.05, rebalance=False), metrics=True)
    yield s
    s.close()


def test_a_scraped_page_counts_what_the_clients_saw(server):
    prompts = [[3 + i] * (20 + 10 * i) for i in range(5)]
    stop_at = reference_output(prompts[4], 3, ignore_eos=True)[-1]  # the last request stops at its 3rd token
    requests = [request(p, 6 + i) for i, p in enumerate(prompts[:4])] + [request(prompts[4], 8, stop_token_ids=[stop_at])]
    chunks_with_tokens, tokens = [], 0
    for r in requests:
        chunks = list(server.stub.Generate(r, timeout=30))
        chunks_with_tokens.append(sum(1 for c in chunks if c.token_ids))
        tokens += sum(len(c.token_ids) for c in chunks)
    with pytest.raises(grpc.RpcError):
        list(server.stub.Generate(request([], 4), timeout=30))  # invalid: refused before any token

    page = Page.scrape(server.metrics_url)
    model = {"model_name": "fake"}
    for name in ("time_to_first_token_seconds", "e2e_request_latency_seconds", "request_prompt_tokens"):
        assert page.get(f"shunter:{name}_count", **model) == len(requests)
    assert page.get("shunter:inter_token_latency_seconds_count", **model) == sum(n - 1 for n in chunks_with_tokens)
    assert page.get("shunter:time_to_first_token_seconds_bucket", le="+Inf") == len(requests)
    assert page.get("shunter:request_generation_tokens_sum") == page.get("shunter:generation_tokens_total") == tokens
    assert page.get("shunter:request_prompt_tokens_sum") == page.get("shunter:prompt_tokens_total") == \
        sum(map(len, prompts))
    assert page.get("shunter:request_success_total", finished_reason="length") == 4
    assert page.get("shunter:request_success_total", finished_reason="stop") == 1
    assert page.get("shunter:request_success_total", finished_reason="abort") == 0
    assert page.get("shunter:requests_rejected_total", reason="invalid") == 1
    assert page.get("shunter:routing_decisions_total", policy="round_robin") == len(requests)
    assert page.per_replica("shunter:routing_decisions_total") == {"r0": 3, "r1": 2}
    assert page.get("shunter:prefix_cache_queries_total") == sum(map(len, prompts))  # every prompt looked up
    assert page.per_replica("shunter:replica_healthy") == {"r0": 1, "r1": 1}

    # While a stream runs, its replica counts it running and holds KV blocks; once it is gone, 0 again.
    long = server.stub.Generate(request([9] * 40, 2000))
    next(long)
    page = Page.scrape(server.metrics_url)
    assert page.get("shunter:num_requests_running") == 1 and page.get("shunter:requests_in_flight") == 1
    assert 0 < max(page.per_replica("shunter:kv_cache_usage_perc").values()) <= 1
    long.cancel()  # the client leaves: the request finishes as abort, and is timed to its end
    until(lambda: Page.scrape(server.metrics_url).get("shunter:request_success_total", finished_reason="abort") == 1)
    until(lambda: Page.scrape(server.metrics_url).get("shunter:num_requests_running") == 0)
    page = Page.scrape(server.metrics_url)
    assert page.get("shunter:e2e_request_latency_seconds_count") == len(requests) + 1
    assert page.get("shunter:num_requests_waiting") == 0 and page.get("shunter:requests_in_flight") == 0
    assert all(v == 0 for v in page.per_replica("shunter:kv_cache_usage_perc").values())


def test_router_counters_map_to_their_metrics():
    router = Router([types.SimpleNamespace(replica_id=r) for r in ("a", "b")], RouterConfig(routing="least_load"))
    c = router.counters
    c.migrated, c.migrated_recomputed, c.failed_over, c.rejoined = 5, 2, 3, 1
    c.routed_to = {"a": 7}
    c.rejected_by = {"max_in_flight": 4}
    c.migrations_aborted_by, c.migrations_refused_by = {"target_died": 2}, {"block_size": 1}
    router.migrations_in_flight["x"] = ("a", "b")
    router.slots["b"].healthy = False
    router.slots["b"].report.num_running = 3  # stale: from before it went down
    router.slots["a"].totals.totals["num_preemptions"] = 6
    registry = CollectorRegistry()
    registry.register(RouterCollector(router, "m"))
    page = Page(generate_latest(registry).decode())
    assert page.get("shunter:migrations_total", model_name="m") == 5
    assert page.get("shunter:migrations_recomputed_total") == 2
    assert page.get("shunter:failovers_total") == 3 and page.get("shunter:replica_rejoins_total") == 1
    assert page.per_replica("shunter:routing_decisions_total") == {"a": 7, "b": 0}
    assert page.get("shunter:routing_decisions_total", policy="least_load") == 7
    assert page.get("shunter:requests_rejected_total", reason="max_in_flight") == 4
    assert page.get("shunter:requests_rejected_total", reason="draining") == 0  # every reason exists from the start
    assert page.per_replica("shunter:replica_healthy") == {"a": 1, "b": 0}
    assert page.per_replica("shunter:num_preemptions_total") == {"a": 6, "b": 0}
    assert page.get("shunter:migrations_aborted_total", reason="target_died") == 2
    assert page.get("shunter:migrations_aborted_total", reason="timeout") == 0  # every reason exists from the start
    assert page.get("shunter:migrations_refused_total", reason="block_size") == 1
    assert page.get("shunter:migrations_in_flight") == 1
    assert page.per_replica("shunter:num_requests_running") == {"a": 0}  # no gauges of a replica that is down


def test_a_replica_page_shows_its_engines_last_stats():
    engine = FakeEngine(step_time=0)
    engine.add_request("x", [5] * 40, SamplingParams(max_tokens=4))
    engine.step()
    stats = engine.stats()
    registry = CollectorRegistry()
    registry.register(ReplicaCollector("replica-3", "m", lambda: stats))
    page = Page(generate_latest(registry).decode())
    assert set(COUNTERS) == set(ENGINE_COUNTS)  # every engine count is shown
    assert page.per_replica("shunter:num_requests_running") == {"replica-3": 1}
    assert page.get("shunter:prefix_cache_queries_total", replica="replica-3", model_name="m") == 40
    assert page.get("shunter:kv_cache_usage_perc") == stats.kv_blocks_in_use / stats.kv_blocks_total > 0
    assert page.get("shunter:step_tile_tokens") == 0  # the fake engine times no staircase


def test_a_replica_page_shows_its_step_time_staircase():
    stats = dataclasses.replace(FakeEngine(step_time=0).stats(), step_tile_boundaries=(128, 256, 384))
    registry = CollectorRegistry()
    registry.register(ReplicaCollector("replica-0", "m", lambda: stats))
    page = Page(generate_latest(registry).decode())
    assert page.get("shunter:step_tile_tokens") == 128
    assert page.get("shunter:step_tile_boundaries_info", boundaries="128,256,384") == 1
