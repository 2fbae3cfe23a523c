"""Errors every layer shares; the gRPC frontend maps them to status codes."""


class ShunterError(Exception):
    """Base class."""


class Overloaded(ShunterError):
    """The queue is full: the caller should retry later (gRPC RESOURCE_EXHAUSTED)."""


class ReplicaUnavailable(ShunterError):
    """No healthy replica can take the request (gRPC UNAVAILABLE)."""


class RequestNotFound(ShunterError, LookupError):
    """No live or journaled request has this id (gRPC NOT_FOUND)."""


class Superseded(ShunterError):
    """The stream was taken over: its client resumed it on another stream (gRPC ABORTED)."""
