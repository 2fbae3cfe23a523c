"""`--placement` and the start-up check of what the replicas ask of the Ray cluster
(`replica_placement.check_fits`): a request the cluster can never meet is one line naming what is
missing, not a placement group pending forever. Plain dicts stand for `ray.nodes()`; no Ray."""
from __future__ import annotations

import pytest

from shunter.router.cluster import replica_placement
from shunter.router.cluster.replica_placement import PlacementError, check_fits, wait_until_fits

CPU_ONLY = {"head": {"CPU": 8.0}}
TWO_GPU_NODES = {"head": {"CPU": 8.0}, "w1": {"CPU": 4.0, "GPU": 1.0}, "w2": {"CPU": 4.0, "GPU": 1.0}}


def error(*args) -> str:
    with pytest.raises(PlacementError) as e:
        check_fits(*args)
    return str(e.value)


def test_no_gpu_anywhere_names_the_gpu_option():
    assert error(CPU_ONLY, 2, 1.0, 1.0, "spread") == (
        "--num-gpus-per-replica 1: no node of the Ray cluster has a GPU (1 node, none with resource 'GPU')")


def test_more_gpus_per_replica_than_any_node_has():
    assert error(TWO_GPU_NODES, 1, 1.0, 2.0, "pack") == (
        "--num-gpus-per-replica 2: the most GPUs on one node is 1; a replica runs on one node")


def test_more_cpus_per_replica_than_any_node_has():
    assert "--num-cpus-per-replica 16: the most CPUs on one node is 8" in error(CPU_ONLY, 1, 16.0, 0.0, "spread")


def test_strict_spread_needs_a_node_per_replica():
    assert error(TWO_GPU_NODES, 3, 1.0, 1.0, "strict-spread") == (
        "--placement strict-spread: 3 replicas need 3 nodes with 1 CPU + 1 GPU each; the Ray cluster has 2 such "
        "nodes (of 3)")
    check_fits(TWO_GPU_NODES, 2, 1.0, 1.0, "strict-spread")
    # CPU replicas: the head counts too, but one node is one node however many CPUs it has
    check_fits(TWO_GPU_NODES, 3, 1.0, 0.0, "strict-spread")
    assert "need 4 nodes" in error(TWO_GPU_NODES, 4, 1.0, 0.0, "strict-spread")


def test_spread_and_pack_count_room_on_every_node():
    check_fits(TWO_GPU_NODES, 4, 1.0, 0.5, "spread")  # two halves of a GPU per node
    assert error(TWO_GPU_NODES, 5, 1.0, 0.5, "pack") == (
        "--replicas 5: the Ray cluster's nodes hold 4 replicas of 1 CPU + 0.5 GPU each, in all")
    check_fits(CPU_ONLY, 8, 1.0, 0.0, "pack")
    assert "hold 8 replicas" in error(CPU_ONLY, 9, 1.0, 0.0, "spread")


def test_no_live_node():
    assert error({}, 1, 1.0, 0.0, "spread") == "the Ray cluster has no live node"


def test_waits_for_nodes_to_join(monkeypatch):
    monkeypatch.setattr(replica_placement, "POLL_S", 0.01)
    seen = iter([CPU_ONLY, CPU_ONLY, TWO_GPU_NODES])
    said = []
    wait_until_fits(2, 1.0, 1.0, "strict-spread", 5.0, nodes=lambda: next(seen), say=lambda *a, **k: said.append(a))
    assert len(said) == 1 and "waiting up to 5 s for nodes: --num-gpus-per-replica 1: no node" in said[0][0]


def test_wait_gives_up_with_the_reason(monkeypatch):
    monkeypatch.setattr(replica_placement, "POLL_S", 0.01)
    with pytest.raises(PlacementError, match=r"no node of the Ray cluster has a GPU .* \(after waiting 0.05 s, "
                                             r"--wait-for-resources\)"):
        wait_until_fits(1, 1.0, 1.0, "spread", 0.05, nodes=lambda: CPU_ONLY, say=lambda *a, **k: None)


def test_serve_options_parse_with_the_alias():
    from shunter.cli_args import Parser
    from shunter.router.serve import cli as serve_cli

    parser = Parser(prog="shunter serve")
    serve_cli.add_arguments(parser)
    args = parser.parse_args(["--gpus-per-replica", "1", "--placement", "strict-spread"])
    assert args.num_gpus_per_replica == 1 and args.placement == "strict-spread" and args.wait_for_resources == 0
    assert parser.parse_args([]).placement == "spread"
    with pytest.raises(SystemExit):
        parser.parse_args(["--placement", "everywhere"])
