"""How a live migration's KV goes from one replica to another: replica to replica, never through
a frontend, which only passes handles along.

Ray's object store carries it. The source actor puts a stage's blocks into the store from its
own process (`send`: the source owns the object and its node holds the bytes) and returns the
ref boxed in a list, so that Ray hands the router the ref, not the bytes (a bare ref in a return
value or an argument would be resolved, and small objects are inlined into the caller). The
router passes the box to the target, whose actor fetches the object itself (`receive`, on the
actor's thread, while its engine thread keeps stepping), pulling the bytes from the source's
node. A source that died, or an object that cannot be had in time, makes `receive` return None:
the stage fails and the migration aborts, the request still running where it was.

On a GPU the source gathers a stage's blocks on the device into a staging copy and copies that
into pinned host memory without blocking (`replica/kv_staging.py`): the engine thread goes back
to stepping, and the actor's thread waits for the copy as it puts the object, so the transfer
stays off the engine thread and off the frontend's event loop. We chose this over Ray's GPU
object transports (NCCL between actors, which skip the host copies): those need a communicator
per replica pair, set up and torn down as replicas come and go, and could not be exercised here
without GPUs, while the object store works across nodes as it is and is what CI runs.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import ray

log = logging.getLogger(__name__)
RECEIVE_TIMEOUT_S = 30.0


def send(kv: Any) -> list[ray.ObjectRef]:
    """Put KV into the object store from the source's process; the boxed ref the router passes on."""
    return [ray.put(kv)]


def receive(box: list[ray.ObjectRef], what: str, timeout_s: float = RECEIVE_TIMEOUT_S) -> Any | None:
    """Fetch KV on the target; None if it cannot be had (its source died, or it took too long)."""
    try:
        return ray.get(box[0], timeout=timeout_s)
    except Exception as e:  # lost with its owner, evicted, or too slow: the caller recomputes or aborts
        log.warning("KV of %s did not arrive (%s)", what, type(e).__name__)
        return None


@dataclass
class RayStage:
    """One stage as the router sees it over Ray: where it ends, and the boxed ref of its blocks."""

    request_id: str
    first_block: int
    num_blocks: int
    computed_blocks: int
    epoch: int
    block_size: int
    kv_box: list[ray.ObjectRef] | None

    @property
    def end_block(self) -> int:
        return self.first_block + self.num_blocks
