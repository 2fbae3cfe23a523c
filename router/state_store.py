"""The request journal: what each in-flight request is, where it runs and what it has streamed.

The journal is what makes migration and failover invisible to the client: a request can be
resubmitted anywhere as prompt + tokens already sent, and tokens that arrive twice (or from a
replica that no longer owns the request) are recognised by position and dropped. Held in this
process's memory.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from shunter.sampling_params import SamplingParams


@dataclass
class Delta:
    """What the router hands the frontend for one request: new tokens, maybe the end."""

    token_ids: list[int]
    finish_reason: str | None = None
    num_cached_tokens: int = 0
    replica_id: str = ""


@dataclass
class JournalEntry:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams  # as submitted by the client
    replica_id: str | None = None  # current owner; None while in transit
    offset: int = 0  # tokens streamed before the current owner got it (its output index 0 = sent[offset])
    sent: list[int] = field(default_factory=list)
    num_cached_tokens: int = 0
    epoch: int = 0  # bumped at every (re)assignment, so a stale failure cannot fail over twice
    migrating: bool = False
    finished: bool = False
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)


class MemoryStateStore:
    def __init__(self) -> None:
        self.entries: dict[str, JournalEntry] = {}

    def add(self, entry: JournalEntry) -> None:
        if entry.request_id in self.entries:
            raise ValueError(f"request_id {entry.request_id!r} is already in flight")
        self.entries[entry.request_id] = entry

    def get(self, request_id: str) -> JournalEntry | None:
        return self.entries.get(request_id)

    def remove(self, request_id: str) -> None:
        self.entries.pop(request_id, None)

    def owned_by(self, replica_id: str) -> list[JournalEntry]:
        return [e for e in self.entries.values() if e.replica_id == replica_id and not e.finished]

    def __len__(self) -> int:
        return len(self.entries)
