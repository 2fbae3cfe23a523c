"""Errors every layer shares; the gRPC frontend maps them to status codes."""


class ShunterError(Exception):
    """Base class."""


class Overloaded(ShunterError):
    """The queue is full: the caller should retry later (gRPC RESOURCE_EXHAUSTED), after about
    `retry_after_ms` (sent to the client as trailing metadata)."""

    def __init__(self, message: str, retry_after_ms: int | None = None) -> None:
        super().__init__(message)
        self.retry_after_ms = retry_after_ms


class ReplicaUnavailable(ShunterError):
    """No healthy replica can take the request (gRPC UNAVAILABLE)."""


class RequestNotFound(ShunterError, LookupError):
    """No live or journaled request has this id (gRPC NOT_FOUND)."""


class Superseded(ShunterError):
    """The stream was taken over: its client resumed it on another stream (gRPC ABORTED)."""


class InvalidArgument(ShunterError, ValueError):
    """A client error (gRPC INVALID_ARGUMENT, HTTP 400); the message starts with the field's name."""
