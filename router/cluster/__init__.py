"""Replicas as Ray actors: the actor and its client, placement groups across nodes, the order of outbox drains."""
from shunter.surface import surface

__all__, __getattr__ = surface(__name__, {
    "replica_actor": ["RayReplicaClient", "actor_name", "spawn"],
    "replica_placement": ["replica_placement"],
})
