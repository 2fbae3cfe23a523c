"""The simulated cluster: routing, reports, migration and the rebalancer, as the router does them."""
from __future__ import annotations

import dataclasses

import pytest

from shunter.loadtest.sim.cluster import ClusterConfig, SimCluster
from shunter.loadtest.sim.costs import LinearCost
from shunter.loadtest.sim.experiments.common import eos_at_output_len
from shunter.loadtest.workloads import WorkloadRequest, shared_prefix, skewed_output
from shunter.replica.engine_config import EngineConfig
from shunter.router.core import MigrationSettings
from shunter.testing.fake_engine import reference_output
from tests.loadtest.test_sim_core import constant_cost, fake_tokens


def config(replicas: int = 2, **settings) -> ClusterConfig:
    engine = EngineConfig(model="sim", num_kv_blocks=128, max_num_seqs=8, max_num_batched_tokens=64, check_invariants=True)
    return ClusterConfig(replicas, engine, **settings)


def test_every_request_gets_its_tokens_and_the_summary_counts_them():
    workload = skewed_output(40, 20.0, seed=1, prompt=(8, 40), short_output=(2, 10), long_output=(20, 30))
    cluster = SimCluster(config(routing="least_load"), constant_cost())
    summary = cluster.run(workload)
    assert summary.num_finished == 40 and not cluster.live
    assert summary.output_tokens == sum(r.output_len for r in workload)
    for r in workload:
        record = cluster.records[r.request_id]
        assert record.num_tokens == r.output_len
        assert record.arrival <= record.first_token <= record.finish
    assert summary.ttft_p50 >= 0.01 - 1e-9  # at least one step of 10 ms
    assert {rec.replica_id for rec in cluster.records.values()} == {"r0", "r1"}


def test_a_cluster_is_freed_once_dropped_even_when_its_engines_are_the_processs_first(monkeypatch):
    """The first engine of a serving process freezes the heap (`replica/gc_tuning.py`); in the
    simulator that kept the first 1,000-replica cluster alive for every run after it."""
    import gc
    import weakref

    from shunter.replica import gc_tuning

    monkeypatch.setattr(gc_tuning, "_tuned", False)  # as in a fresh process
    frozen = gc.get_freeze_count()
    try:
        cluster = SimCluster(config(routing="least_load"), constant_cost())
        cluster.run(skewed_output(8, 20.0, seed=1, prompt=(8, 40), short_output=(2, 10), long_output=(20, 30)))
        alive = weakref.ref(cluster)
        assert gc.get_freeze_count() == frozen
        del cluster
        gc.collect()
        assert alive() is None
    finally:
        if gc.get_freeze_count() != frozen:  # a regression froze this test's heap: let the session collect it
            gc.unfreeze()


def test_prefix_aware_sends_a_group_where_its_prefix_is_cached():
    """Two groups arriving one after another: after the first of each, the rest land on the replica
    holding the group's system prompt (the index learned it from cache events) and hit its cache."""
    workload = shared_prefix(24, 2.0, seed=2, num_groups=2, system_prompt_len=64, question_len=8, output_len=4)
    cluster = SimCluster(config(routing="prefix_aware"), constant_cost())
    summary = cluster.run(workload)
    homes = {}
    for r in workload[4:]:
        homes.setdefault(r.prefix_id, set()).add(cluster.records[r.request_id].replica_id)
    assert all(len(h) == 1 for h in homes.values())
    assert summary.prefix_hit_rate > 0.6
    assert cluster.index.holders  # learned from the engines' cache events


def test_stop_and_copy_moves_the_kv_and_the_stream_waits_only_for_the_transfer():
    req = WorkloadRequest("m", 0.0, prompt_len=40, output_len=30, seed=3)
    stop_and_copy = MigrationSettings("stop-and-copy")
    cluster = SimCluster(config(link_bytes_per_s=1e18, link_latency_s=0.5, migration=stop_and_copy), constant_cost(),
                         token_fn=fake_tokens)
    cluster.loop.at(0.1, lambda: cluster.migrate("m", "r1" if cluster.live["m"].replica_id == "r0" else "r0"))
    summary = cluster.run([req])
    record = cluster.records["m"]
    assert record.num_migrations == 1 and summary.migrations == 1 and record.num_tokens == 30
    assert cluster.counters["migrated_recomputed"] == 0 and summary.recomputed_tokens == 0  # the KV came along
    # The source's last token, the 0.5 s transfer, then one 10 ms step on the target: one gap of 0.51 s.
    assert 0.509 < cluster.tbt.quantile(1.0) < 0.515
    assert cluster.tbt.fraction_above(0.02) == pytest.approx(1 / 29)
    assert all(not r.engine.has_unfinished_requests() for r in cluster.replicas.values())


def migrated_once(mode: str, prompt_len: int = 160) -> SimCluster:
    """One request moved at 0.1 s over a link where a block (16 tokens of 64 bytes) takes 10 ms."""
    req = WorkloadRequest("m", 0.0, prompt_len=prompt_len, output_len=60, seed=3)
    cluster = SimCluster(config(link_bytes_per_s=1024 / 0.01, link_latency_s=0.0, migration=MigrationSettings(mode)),
                         constant_cost(), token_fn=fake_tokens)
    cluster.loop.at(0.1, lambda: cluster.migrate("m", "r1" if cluster.live["m"].replica_id == "r0" else "r0"))
    cluster.run([req])
    assert cluster.records["m"].num_tokens == 60 and cluster.counters["migrated"] == 1
    assert not cluster.migrations.in_flight and all(not r.engine.kv.reservations for r in cluster.replicas.values())
    return cluster


def test_live_migration_stages_the_full_blocks_while_the_request_decodes_and_stops_only_for_the_rest():
    """At 0.1 s, 160 prompt tokens + 8 made: 10 full blocks. Stop-and-copy stops the request while
    all 11 cross (110 ms); live sends the 10 in a first stage (100 ms) while it keeps decoding, a
    second stage finds too few new full blocks to be worth it (at most `commit_blocks`), and the
    commit sends the last two (it filled one more block meanwhile)."""
    live, stop = migrated_once("live"), migrated_once("stop-and-copy")
    [record] = live.migrations.log
    assert (record.mode, record.stages, record.blocks_staged, record.blocks_at_commit) == ("live", 2, 10, 2)
    [whole] = stop.migrations.log
    assert (whole.stages, whole.blocks_staged, whole.blocks_at_commit) == (0, 0, 11)
    # The client's gap: the commit's transfer (10 ms a block), then the target's step (10 ms); the
    # stages cost it nothing.
    [live_gap], [stop_gap] = live.migrations.gaps, stop.migrations.gaps
    assert live_gap == pytest.approx(0.03) and stop_gap == pytest.approx(0.12)
    assert live.tbt.quantile(1.0) == pytest.approx(live_gap, rel=0.01)
    assert live.summary().extra["migration"]["committed"] == 1


def test_a_live_migration_of_a_request_that_ends_while_it_stages_aborts_and_frees_the_reservation():
    """A slow link (a block in 1 s): the request (60 tokens, 0.6 s) ends before its first stage lands."""
    req = WorkloadRequest("m", 0.0, prompt_len=160, output_len=60, seed=3)
    cluster = SimCluster(config(link_bytes_per_s=1024.0, link_latency_s=0.0), constant_cost(), token_fn=fake_tokens)
    cluster.loop.at(0.1, lambda: cluster.migrate("m", "r1" if cluster.live["m"].replica_id == "r0" else "r0"))
    cluster.run([req])
    assert cluster.counters["migrated"] == 0 and cluster.migrations.aborted_by == {"request_ended": 1}
    assert all(not r.engine.kv.reservations and r.engine.kv.num_blocks_in_use() == 0 for r in cluster.replicas.values())


def test_gathering_and_scattering_blocks_hold_the_replicas_for_the_cost_models_copy_time():
    cost = constant_cost()
    cost = dataclasses.replace(cost, step=LinearCost({"fixed": 0.01, "swap_tokens": 1e-4}))
    assert cost.kv_copy_seconds(16) == pytest.approx(16e-4) and cost.kv_copy_seconds(0) == 0.0
    req = WorkloadRequest("m", 0.0, prompt_len=160, output_len=60, seed=3)
    cluster = SimCluster(config(), cost, token_fn=fake_tokens)
    cluster.loop.at(0.1, lambda: cluster.migrate("m", "r1" if cluster.live["m"].replica_id == "r0" else "r0"))
    cluster.run([req])
    [record] = cluster.migrations.log
    moved = record.blocks_staged + record.blocks_at_commit
    assert sum(r.copy_s for r in cluster.replicas.values()) == pytest.approx(2 * moved * 16e-4)


def test_migrated_tokens_are_the_plain_runs():
    workload = [WorkloadRequest(f"q{i}", 0.0, prompt_len=20 + i, output_len=25, seed=i) for i in range(4)]
    cluster = SimCluster(config(routing="round_robin"), constant_cost(), token_fn=fake_tokens)
    outputs: dict[str, list[int]] = {}
    for replica in cluster.replicas.values():
        step = replica.on_step

        def record(rep, outs, step=step):
            for o in outs:
                outputs.setdefault(o.request_id, []).extend(o.new_token_ids)
            step(rep, outs)

        replica.on_step = record
    cluster.loop.at(0.05, cluster.migrate, "q0", "r1")
    cluster.loop.at(0.08, cluster.migrate, "q1", "r0")
    cluster.run(workload)
    assert cluster.counters["migrated"] == 2
    for r in workload:
        assert outputs[r.request_id] == reference_output(r.prompt_tokens(1000), 25, ignore_eos=True)


def test_unknown_lengths_end_by_eos_and_the_router_sees_only_max_tokens():
    cost = constant_cost()
    workload = skewed_output(10, 50.0, seed=4, prompt=(8, 20), short_output=(3, 6), long_output=(30, 40))
    cluster = SimCluster(config(), cost, token_fn=eos_at_output_len(cost, workload), client_max_tokens=64)
    cluster.run(workload)
    for r in workload:
        assert cluster.records[r.request_id].num_tokens == r.output_len


def test_the_load_pairs_move_decoding_requests_off_the_busy_replica():
    """Every request is placed on r0; the rebalancer, every 0.2 s, moves decoding ones to r1."""
    workload = [WorkloadRequest(f"q{i}", 0.0, prompt_len=16, output_len=200, seed=i) for i in range(6)]
    cluster = SimCluster(config(rebalance=True, rebalancer_settings={"interval_s": 0.2, "measure": "expected"}),
                         constant_cost())
    cluster.policy.choose = lambda loads, request: "r0"
    summary = cluster.run(workload)
    assert 0 < summary.migrations <= 6
    assert summary.output_tokens == 6 * 200
    assert cluster.replicas["r1"].runner.busy_s > 0


@pytest.mark.parametrize("routing", ["random", "round_robin", "least_load", "power_of_two", "prefix_aware"])
def test_every_routing_policy_runs_in_the_cluster(routing):
    workload = shared_prefix(30, 30.0, seed=5, num_groups=3, system_prompt_len=32, question_len=8, output_len=6)
    summary = SimCluster(config(3, routing=routing), constant_cost()).run(workload)
    assert summary.num_finished == 30


def test_freeness_moves_requests_off_a_replica_about_to_run_out_before_its_scheduler_preempts():
    """Eight requests on r0 grow to 20 blocks each, 160 of its 128: alone it must preempt. With
    freeness every 50 ms, r1 takes requests from it while it still has blocks free."""
    workload = [WorkloadRequest(f"q{i}", 0.0, prompt_len=16, output_len=300, seed=i) for i in range(8)]

    def run(rebalance: bool) -> SimCluster:
        cluster = SimCluster(config(rebalance=rebalance, rebalancer_settings={"interval_s": 0.05}), constant_cost())
        cluster.policy.choose = lambda loads, request: "r0"
        summary = cluster.run(workload)
        assert summary.output_tokens == 8 * 300
        return cluster

    alone, helped = run(False), run(True)
    assert alone.summary().preemptions > 0
    assert helped.summary().preemptions == 0 and helped.counters["migrated"] >= 1


def test_disaggregated_long_prompts_prefill_apart_stream_their_kv_and_decode_elsewhere_token_for_token():
    """The last replica only prefills: each 300-token prompt (5 steps of 64 tokens there) streams
    its blocks to a decode replica while it prefills and moves after its first token; the short
    prompts never touch it; every request's tokens are the plain run's."""
    workload = [WorkloadRequest(f"long{i}", 0.05 * i, prompt_len=300, output_len=20, seed=i) for i in range(4)]
    workload += [WorkloadRequest(f"short{i}", 0.03 * i, prompt_len=30, output_len=20, seed=10 + i) for i in range(6)]
    cluster = SimCluster(config(3, routing="least_load", prefill_replicas=1, prefill_threshold_tokens=100),
                         constant_cost(), token_fn=fake_tokens)
    outputs: dict[str, list[tuple[str, list[int]]]] = {}
    for replica in cluster.replicas.values():
        step = replica.on_step

        def record(rep, outs, step=step):
            for o in outs:
                outputs.setdefault(o.request_id, []).append((rep.replica_id, list(o.new_token_ids)))
            step(rep, outs)

        replica.on_step = record
    summary = cluster.run(workload)
    assert summary.num_finished == 10 and summary.extra["handed_off"] == 4
    for r in workload:
        tokens = [t for _, new in outputs[r.request_id] for t in new]
        where = {rid for rid, new in outputs[r.request_id] if new}
        if r.request_id.startswith("short"):
            assert "r2" not in where
        else:
            assert cluster.records[r.request_id].num_migrations == 1 and where >= {"r2"} and len(where) == 2
        assert tokens == reference_output(r.prompt_tokens(1000), 20, ignore_eos=True)
    for move in cluster.migrations.log:
        assert move.source == "r2" and move.stages >= 2 and move.blocks_at_commit <= 5  # streamed, not copied at the end
    assert all(not r.engine.kv.reservations and r.engine.kv.num_blocks_in_use() == 0 for r in cluster.replicas.values())
