"""The router's `rejected` counter counts every request refused without generating (issue 11: it
stayed 0 after 18 refused requests, because it counted only max_in_flight overloads), and
`rejected_by` says why (the metrics' `reason` label)."""
from __future__ import annotations

import grpc
import pytest

from shunter.proto import generation_pb2 as pb
from shunter.router.core import LocalReplicaClient
from shunter.router.core import RouterConfig
from tests.fakes import FakeEngine


def refused(server, request: pb.GenerateRequest) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        list(server.stub.Generate(request, timeout=30))
    return err.value.code()


def rejected(server) -> int:
    return server.stub.ClusterStatus(pb.ClusterStatusRequest()).counters.rejected


def test_invalid_overloaded_and_draining_requests_are_all_counted(serve):
    server = serve([LocalReplicaClient("r0", lambda: FakeEngine(step_time=0.02))],
                   RouterConfig(poll_wait_s=0.05, rebalance=False, max_in_flight=1))
    sampling = pb.SamplingOptions(max_tokens=2)
    assert refused(server, pb.GenerateRequest(prompt="", sampling=sampling)) == grpc.StatusCode.INVALID_ARGUMENT
    assert rejected(server) == 1  # refused by the frontend's checks
    assert server.router.counters.rejected_by == {"invalid": 1}
    out_of_vocab = pb.GenerateRequest(prompt_token_ids=pb.TokenIds(ids=[10**6]), sampling=sampling)
    assert refused(server, out_of_vocab) == grpc.StatusCode.INVALID_ARGUMENT
    assert rejected(server) == 2  # refused by the replica
    assert server.router.counters.rejected_by == {"invalid": 2}
    long = server.stub.Generate(pb.GenerateRequest(prompt_token_ids=pb.TokenIds(ids=[5]),
                                                   sampling=pb.SamplingOptions(max_tokens=500, ignore_eos=True)))
    next(long)
    ok = pb.GenerateRequest(prompt_token_ids=pb.TokenIds(ids=[5]), sampling=sampling)
    assert refused(server, ok) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert rejected(server) == 3  # over max_in_flight
    long.cancel()
    server.router.draining = True
    assert refused(server, ok) == grpc.StatusCode.UNAVAILABLE
    assert rejected(server) == 4  # while draining
    assert server.router.counters.rejected_by == {"invalid": 2, "max_in_flight": 1, "draining": 1}


def test_a_request_id_already_in_flight_is_counted_as_invalid(serve):
    server = serve([LocalReplicaClient("r0", lambda: FakeEngine(step_time=0.02))],
                   RouterConfig(poll_wait_s=0.05, rebalance=False))
    long = server.stub.Generate(pb.GenerateRequest(request_id="dup", prompt_token_ids=pb.TokenIds(ids=[5]),
                                                   sampling=pb.SamplingOptions(max_tokens=500, ignore_eos=True)))
    next(long)
    again = pb.GenerateRequest(request_id="dup", prompt_token_ids=pb.TokenIds(ids=[5]),
                               sampling=pb.SamplingOptions(max_tokens=2))
    assert refused(server, again) == grpc.StatusCode.INVALID_ARGUMENT
    long.cancel()
    assert rejected(server) == 1 and server.router.counters.rejected_by == {"invalid": 1}


def test_a_request_with_no_healthy_replica_to_go_to_is_counted_as_no_replica(serve):
    server = serve([LocalReplicaClient("r0", lambda: FakeEngine(step_time=0.02))],
                   RouterConfig(poll_wait_s=0.05, rebalance=False))
    slot = server.router.slots["r0"]
    slot.healthy = slot.report.healthy = False
    server.router.loads.update(slot.report)
    ok = pb.GenerateRequest(prompt_token_ids=pb.TokenIds(ids=[5]), sampling=pb.SamplingOptions(max_tokens=2))
    assert refused(server, ok) == grpc.StatusCode.UNAVAILABLE
    assert rejected(server) == 1 and server.router.counters.rejected_by == {"no_replica": 1}
