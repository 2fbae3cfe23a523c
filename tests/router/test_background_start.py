"""A BackgroundServer whose start fails frees its replicas: nothing else would (its caller never
gets an object to close), and a Ray actor left alive keeps its CPUs from every later placement."""
from __future__ import annotations

import pytest

from shunter.router.core import LocalReplicaClient
from shunter.testing.background import BackgroundServer
from shunter.testing.fake_engine import FakeEngine


class FailsAtStart(LocalReplicaClient):
    async def info(self):
        raise RuntimeError("the model did not load")


def test_a_start_that_fails_kills_every_replica_and_says_why():
    healthy, failing = LocalReplicaClient("r0", FakeEngine), FailsAtStart("r1", FakeEngine)
    with pytest.raises(RuntimeError, match="the model did not load"):
        BackgroundServer([healthy, failing])
    assert healthy.core is None and failing.core is None
