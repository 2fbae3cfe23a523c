"""State several frontends share through Redis (`--state redis://…`): the store, its writer, keys and replica registry."""
from shunter.surface import surface

__all__, __getattr__ = surface(__name__, {
    "redis_store": ["RedisStateStore"],
    "redis_url": ["MEMORY", "RedisURL", "StateStoreError", "parse_state", "probe"],
    "replica_registry": ["replica_registry", "ReplicaEntry"],
})
