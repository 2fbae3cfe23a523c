"""`shunter status` says the unit of every number (issue 11: blocks of how many tokens? what is load?)."""
from __future__ import annotations

from shunter.proto import generation_pb2 as pb
from shunter.router.grpc.status_cli import format_table


def status() -> pb.ClusterStatusResponse:
    replica = pb.ReplicaStatus(replica_id="replica-0", node="vm", healthy=True, num_running=2, kv_blocks_total=1551,
                               kv_blocks_in_use=12, kv_blocks_cached=3, prefix_hit_rate=0.25, load_blocks=40)
    counters = pb.RouterCounters(routed=7, rejected=18, in_flight=2)
    return pb.ClusterStatusResponse(replicas=[replica], counters=counters, routing="prefix_aware", model="m")


def test_the_table_names_its_units_and_what_rejected_counts():
    text = format_table(status())
    lines = text.splitlines()
    assert lines[0].split("  ")[0] == "replica" and "load (blocks)" in lines[0]
    assert lines[1].split() == ["replica-0", "vm", "yes", "2", "0", "0", "1551", "12", "3", "25%", "-", "40", "0/0",
                                "-", "-", "-", "-"]
    assert "rejected 18 (invalid, over --max-in-flight, draining, or no healthy replica)" in text
    assert "KV-cache blocks of 16 tokens" in text and "load: blocks in use" in text


def test_the_cpu_tier_shows_its_copies_and_hits():
    s = status()
    s.replicas[0].kv_cpu_blocks_total, s.replicas[0].kv_cpu_blocks_cached = 800, 120
    s.replicas[0].prefix_hit_rate_cpu = 0.1
    assert "120/800 10%" in format_table(s) and "cpu tier: CPU blocks holding a prefix copy" in format_table(s)


def test_a_large_cache_replica_and_the_threshold_show():
    response = status()
    response.replicas[0].large_cache = True
    response.size_threshold_blocks = 32
    text = format_table(response)
    assert text.splitlines()[1].split()[-4] == "large" and "size threshold 32 blocks" in text


def test_a_prefill_replica_the_threshold_and_the_hand_offs_show():
    response = status()
    response.replicas[0].prefill_only = True
    response.prefill_threshold_tokens, response.counters.handed_off = 1024, 9
    text = format_table(response)
    assert text.splitlines()[1].split()[-4] == "prefill" and "prefill threshold 1024 tokens" in text
    assert "handed off 9" in text and "prefill = takes long prompts' prefills" in text


def test_the_speculative_acceptance_rate_shows():
    response = status()
    response.replicas[0].spec_acceptance_rate = 0.625
    assert format_table(response).splitlines()[1].split()[-2] == "62%"


def test_the_metrics_pages_show_where_they_listen():
    response = status()
    response.replicas[0].metrics_port = 9101
    response.metrics_port = 9100
    text = format_table(response)
    assert text.splitlines()[1].split()[-1] == "9101" and "metrics port 9100" in text



def test_migrations_moving_now_show_per_replica_and_in_the_counters():
    response = status()
    response.replicas[0].migrating_out, response.replicas[0].migrating_in = 2, 1
    response.counters.migrated, response.counters.migrating = 5, 3
    response.counters.migrations_aborted, response.counters.migrations_refused = 1, 4
    text = format_table(response)
    assert text.splitlines()[1].split()[-5] == "2/1" and "moving out/in" in text.splitlines()[0]
    assert "migrated 5 (moving now 3, aborted 1, refused 4)" in text


def test_the_step_time_staircase_shows_its_tile_and_span():
    response = status()
    response.replicas[0].step_tile_boundaries.extend([64, 128, 256, 384, 512])
    text = format_table(response)
    assert text.splitlines()[1].split()[-4:-2] == ["128", "(64..512)"] and "step tiles" in text.splitlines()[0]
    assert "step tiles: the tile of the step-time staircase" in text
