"""Where `shunter serve` puts its replicas in a Ray cluster: one placement-group bundle per replica
(its CPUs and GPUs), spread across nodes by default.

`--placement spread` (Ray's SPREAD: different nodes where it can, else together), `strict-spread`
(STRICT_SPREAD: every replica on its own node, or no start) or `pack` (PACK: as few nodes as
possible). Before the group is created, the cluster's nodes are checked against what the
replicas ask for (`check_fits`, on each node's total resources), so a request the cluster can
never meet (no GPU anywhere, more GPUs per replica than any node has, fewer nodes than replicas
for strict-spread) is one start-up error naming what is missing, not a serve waiting forever on
a pending placement group. `--wait-for-resources S` keeps checking for S seconds (nodes still
joining: an autoscaler, `ray up`, KubeRay), and the group itself gets the same time (at least
`MIN_READY_S`) to be placed, e.g. while other work holds the resources.
"""
from __future__ import annotations

import math
import time
from typing import Any

STRATEGIES = {"spread": "SPREAD", "strict-spread": "STRICT_SPREAD", "pack": "PACK"}
DEFAULT = "spread"
GROUP_NAME = "shunter-replicas"  # when the replicas are detached (shared state): found and removed by name
MIN_READY_S = 60.0
POLL_S = 2.0


class PlacementError(Exception):
    """The replicas cannot be placed: one line saying what is missing."""


def bundle(cpus: float, gpus: float) -> dict[str, float]:
    return {"CPU": cpus, **({"GPU": gpus} if gpus > 0 else {})}


def _fits(node: dict[str, float], need: dict[str, float]) -> int:
    """How many bundles `need` fit in `node`'s resources."""
    return min(math.floor(node.get(k, 0.0) / v + 1e-9) for k, v in need.items())


def _amount(x: float) -> str:
    return f"{x:g}"


def check_fits(nodes: dict[str, dict[str, float]], replicas: int, cpus: float, gpus: float, placement: str) -> None:
    """PlacementError if `replicas` bundles of `cpus`/`gpus` can never be placed with `placement` on
    `nodes` (node -> its total resources, alive nodes only)."""
    need = bundle(cpus, gpus)
    if not nodes:
        raise PlacementError("the Ray cluster has no live node")
    if gpus > 0:
        most = max(n.get("GPU", 0.0) for n in nodes.values())
        if most == 0:
            raise PlacementError(f"--num-gpus-per-replica {_amount(gpus)}: no node of the Ray cluster has a GPU "
                                 f"({len(nodes)} node{'s' if len(nodes) != 1 else ''}, none with resource 'GPU')")
        if most < gpus:
            raise PlacementError(f"--num-gpus-per-replica {_amount(gpus)}: the most GPUs on one node is "
                                 f"{_amount(most)}; a replica runs on one node")
    most_cpus = max(n.get("CPU", 0.0) for n in nodes.values())
    if most_cpus < cpus:
        raise PlacementError(f"--num-cpus-per-replica {_amount(cpus)}: the most CPUs on one node is "
                             f"{_amount(most_cpus)}")
    counts = {node: _fits(res, need) for node, res in nodes.items()}
    what = " + ".join(f"{_amount(v)} {k}" for k, v in need.items())
    if placement == "strict-spread":
        usable = sum(1 for c in counts.values() if c > 0)
        if usable < replicas:
            raise PlacementError(f"--placement strict-spread: {replicas} replicas need {replicas} nodes with "
                                 f"{what} each; the Ray cluster has {usable} such node{'s' if usable != 1 else ''} "
                                 f"(of {len(nodes)})")
        return
    room = sum(counts.values())
    if room < replicas:
        raise PlacementError(f"--replicas {replicas}: the Ray cluster's nodes hold {room} replica"
                             f"{'s' if room != 1 else ''} of {what} each, in all")


def live_nodes() -> dict[str, dict[str, float]]:
    """Ray node id -> total resources, for the nodes alive now."""
    import ray

    return {n["NodeID"]: dict(n.get("Resources", {})) for n in ray.nodes() if n.get("Alive")}


def wait_until_fits(replicas: int, cpus: float, gpus: float, placement: str, wait_s: float,
                    nodes=live_nodes, say=print) -> None:
    """`check_fits` on the live nodes, again every POLL_S for up to `wait_s` (nodes joining)."""
    deadline = time.monotonic() + wait_s
    said = False
    while True:
        try:
            check_fits(nodes(), replicas, cpus, gpus, placement)
            return
        except PlacementError as e:
            if time.monotonic() + POLL_S > deadline:
                if wait_s > 0:
                    raise PlacementError(f"{e} (after waiting {wait_s:g} s, --wait-for-resources)") from None
                raise
            if not said:
                say(f"shunter: waiting up to {wait_s:g} s for nodes: {e}", flush=True)
                said = True
            time.sleep(POLL_S)


def create(replicas: int, cpus: float, gpus: float, placement: str, wait_s: float = 0.0,
           detached: bool = False, namespace: str | None = None) -> Any:
    """Check the cluster, then create the placement group and wait until it is placed; a
    PlacementError (and no group left behind) when it is not placed in time."""
    from ray.util.placement_group import get_placement_group, placement_group, remove_placement_group

    wait_until_fits(replicas, cpus, gpus, placement, wait_s)
    if detached:  # a group left by a serve that died before registering its replicas
        try:
            remove_placement_group(get_placement_group(GROUP_NAME))
        except ValueError:
            pass
    group = placement_group([bundle(cpus, gpus) for _ in range(replicas)], strategy=STRATEGIES[placement],
                            name=GROUP_NAME if detached else "", lifetime="detached" if detached else None)
    ready_s = max(MIN_READY_S, wait_s)
    if not group.wait(timeout_seconds=ready_s):
        remove_placement_group(group)
        raise PlacementError(f"--placement {placement}: {replicas} bundles of "
                             f"{' + '.join(f'{_amount(v)} {k}' for k, v in bundle(cpus, gpus).items())} not placed "
                             f"within {ready_s:g} s: the resources exist but are taken (`ray status` shows the "
                             "demand); free them or raise --wait-for-resources")
    return group


def remove_named() -> None:
    """Remove the detached group of shared-state replicas, if there is one."""
    from ray.util.placement_group import get_placement_group, remove_placement_group

    try:
        remove_placement_group(get_placement_group(GROUP_NAME))
    except ValueError:
        pass


def node_label() -> str:
    """This process's node as a user can match it to a machine: the node's IP as Ray knows it
    (`ray list nodes`, `ray status`), and the start of its Ray node id (several nodes may share
    one machine, as with deploy/local-cluster.sh)."""
    import ray

    node_id = ray.get_runtime_context().get_node_id()
    ip = next((n["NodeManagerAddress"] for n in ray.nodes() if n["NodeID"] == node_id), None)
    return f"{ip or ray.util.get_node_ip_address()} ({node_id[:8]})"
