"""Routing policies, rebalancer, migration, failover, state store and the gRPC frontend."""
