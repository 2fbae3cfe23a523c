"""The router itself: admission, placement, the journal, token streams, failover, migration and resume."""
from shunter.surface import surface

__all__, __getattr__ = surface(__name__, {
    "router": ["Router"],
    "config": ["DRAIN_FINISH", "RouterConfig"],
    "counters": ["REJECT_REASONS"],
    "migration": ["MIGRATION_ABORTS", "MIGRATION_MODES", "MIGRATION_REFUSALS", "MigrationRecord", "MigrationSettings"],
    "engine_totals": ["ENGINE_COUNTS"],
    "replica_client": ["ExportedRequest", "LocalReplicaClient", "ReplicaClient", "ReplicaDead", "StagedBlocks"],
    "resume": ["Stream", "release", "resume", "stopped"],
    "state_store": ["ENDED", "FINISHED", "LIVE", "MAX_RETAINED", "RETAIN_S", "Delta", "JournalEntry", "JournalRecord",
                    "MemoryStateStore", "StateStore", "packed", "record_of"],
})
