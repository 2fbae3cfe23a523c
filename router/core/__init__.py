"""The router itself: admission, placement, the journal, token streams, failover, migration, P/D hand-off and resume."""
from shunter.surface import surface

__all__, __getattr__ = surface(__name__, {
    "router": ["Router"],
    "config": ["DRAIN_FINISH", "RouterConfig"],
    "counters": ["REJECT_REASONS"],
    "migration": ["MIGRATION_ABORTS", "MIGRATION_MODES", "MIGRATION_REFUSALS", "STREAM_POLL_S", "MigrationRecord",
                  "MigrationSettings"],
    "handoff": ["NO_BLOCK", "PROBE_MAX_S", "RETRY_S"],
    "engine_totals": ["ENGINE_COUNTS"],
    "replica_client": ["ExportedRequest", "LocalReplicaClient", "ReplicaClient", "ReplicaDead", "StagedBlocks"],
    "resume": ["Stream", "release", "resume_stream", "stopped"],
    "state_store": ["ENDED", "FINISHED", "LIVE", "MAX_RETAINED", "RETAIN_S", "Delta", "JournalEntry", "JournalRecord",
                    "MemoryStateStore", "StateStore", "packed", "record_of"],
})
