"""Log-probabilities through the gRPC API over in-process fake replicas, whose log-probabilities
are a pure function of the context (`fake_logprobs`): the chunks carry one per token and the
prompt's in the first; a moved, failed-over or resumed stream keeps the same numbers; a count over 20
is INVALID_ARGUMENT naming its field, and the server keeps serving."""
from __future__ import annotations

import asyncio
import dataclasses
import time

import grpc
import pytest

from shunter.logprobs import TokenLogprobs
from shunter.proto import generation_pb2 as pb
from shunter.router.core import LocalReplicaClient, Router, RouterConfig
from shunter.sampling_params import SamplingParams
from shunter.testing.fake_engine import FakeEngine, fake_logprobs, fake_prompt_logprobs, reference_output
from tests.router.token_counts import tell_each_count

PROMPT = [5, 9, 2, 7, 7, 3]


def clients(n: int = 2, **engine) -> list[LocalReplicaClient]:
    return [LocalReplicaClient(f"r{i}", lambda: FakeEngine(**engine)) for i in range(n)]


def expected(prompt: list[int], out: list[int], k: int) -> list[TokenLogprobs]:
    return [fake_logprobs(prompt + out[:j], t, k) for j, t in enumerate(out)]


def as_tuple(p: pb.TokenLogprob) -> TokenLogprobs:
    return TokenLogprobs(p.token_id, p.logprob, p.rank, tuple(t.token_id for t in p.top),
                         tuple(t.logprob for t in p.top))


def close(got: list[TokenLogprobs], want: list[TokenLogprobs]) -> bool:
    """Equal, up to the float32 the wire carries."""
    return len(got) == len(want) and all(
        (g.token_id, g.rank, g.top_ids) == (w.token_id, w.rank, w.top_ids)
        and g.logprob == pytest.approx(w.logprob, rel=1e-6)
        and g.top_logprobs == pytest.approx(w.top_logprobs, rel=1e-6) for g, w in zip(got, want))


def test_every_token_carries_its_logprobs_and_the_first_chunk_the_prompts(serve):
    server = serve(clients(step_time=0.002))
    req = pb.GenerateRequest(prompt_token_ids=pb.TokenIds(ids=PROMPT), sampling=pb.SamplingOptions(
        max_tokens=9, ignore_eos=True, logprobs=3, prompt_logprobs=2))
    chunks = list(server.stub.Generate(req))
    out = [t for c in chunks for t in c.token_ids]
    assert out == reference_output(PROMPT, 9, ignore_eos=True)
    assert all(len(c.logprobs) == len(c.token_ids) for c in chunks)
    assert close([as_tuple(p) for c in chunks for p in c.logprobs], expected(PROMPT, out, 3))
    assert close([as_tuple(p) for p in chunks[0].prompt_logprobs], fake_prompt_logprobs(PROMPT, 2)[1:])
    assert all(not c.prompt_logprobs for c in chunks[1:])
    assert chunks[0].logprobs[0].rank == 1 and len(chunks[0].logprobs[0].top) == 3


def test_a_request_that_does_not_ask_gets_none(serve):
    server = serve(clients())
    chunks = list(server.stub.Generate(pb.GenerateRequest(prompt_token_ids=pb.TokenIds(ids=PROMPT),
                                                          sampling=pb.SamplingOptions(max_tokens=4))))
    assert all(not c.logprobs and not c.prompt_logprobs for c in chunks)


@pytest.mark.parametrize("field", ["logprobs", "prompt_logprobs"])
def test_more_than_20_is_invalid_argument_naming_the_field_and_the_server_keeps_serving(serve, field):
    server = serve(clients())
    with pytest.raises(grpc.RpcError) as err:
        list(server.stub.Generate(pb.GenerateRequest(prompt_token_ids=pb.TokenIds(ids=PROMPT),
                                                     sampling=pb.SamplingOptions(**{field: 21}))))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(f"sampling.{field}")
    chunks = list(server.stub.Generate(pb.GenerateRequest(prompt_token_ids=pb.TokenIds(ids=PROMPT),
                                                          sampling=pb.SamplingOptions(max_tokens=2, logprobs=20))))
    assert sum(len(c.logprobs) for c in chunks) == 2 and len(chunks[0].logprobs[0].top) == 20


async def collect(router: Router, rid: str, params: SamplingParams, on_token=None):
    tokens, logprobs, prompt = [], [], None
    async for delta in router.generate(rid, PROMPT, params):
        before = len(tokens)
        tokens += delta.token_ids
        logprobs += delta.logprobs or []
        prompt = prompt if delta.prompt_logprobs is None else delta.prompt_logprobs
        if on_token is not None:
            await tell_each_count(on_token, before, len(tokens))
    return tokens, logprobs, prompt


@pytest.mark.parametrize("how", ["migrate", "fail over"])
def test_a_moved_or_failed_over_stream_keeps_its_logprobs(how):
    params = SamplingParams(max_tokens=40, ignore_eos=True, logprobs=2, prompt_logprobs=1)

    async def main():
        made = clients(step_time=0.003)
        router = Router(made, RouterConfig(poll_wait_s=0.02, rebalance=False, routing="round_robin"))
        await router.start()
        moved, at = [], (8, 20) if how == "migrate" else (8,)

        async def on_token(n: int) -> None:
            if n in at:
                here = router.journal.get("m").replica_id
                if how == "migrate":
                    moved.append(await router.migrate("m", next(r for r in router.slots if r != here)))
                else:
                    next(c for c in made if c.replica_id == here).kill()
                    moved.append(True)

        tokens, logprobs, prompt = await collect(router, "m", params, on_token)
        await router.stop()
        for c in made:
            c.kill()
        return tokens, logprobs, prompt, moved

    tokens, logprobs, prompt, moved = asyncio.run(asyncio.wait_for(main(), 60))
    assert moved == ([True, True] if how == "migrate" else [True])
    assert tokens == reference_output(PROMPT, 40, ignore_eos=True)
    assert logprobs == expected(PROMPT, tokens, 2)
    assert prompt == fake_prompt_logprobs(PROMPT, 1)


def test_a_resumed_stream_sends_the_logprobs_of_the_tokens_past_resume_from(serve):
    server = serve(clients(step_time=0.005))
    req = pb.GenerateRequest(request_id="left", prompt_token_ids=pb.TokenIds(ids=PROMPT), sampling=pb.SamplingOptions(
        max_tokens=40, ignore_eos=True, logprobs=1, prompt_logprobs=1))
    call = server.stub.Generate(req)
    got: list[int] = []
    for chunk in call:
        got += chunk.token_ids
        if len(got) >= 10:
            break
    call.cancel()
    deadline = time.time() + 10
    while len(server.router.journal):  # the server saw it leave: aborted, journaled as ended
        assert time.time() < deadline
        time.sleep(0.01)
    chunks = list(server.stub.Generate(pb.GenerateRequest(request_id="left", resume_from=len(got))))
    out = got + [t for c in chunks for t in c.token_ids]
    assert out == reference_output(PROMPT, 40, ignore_eos=True)
    assert close([as_tuple(p) for c in chunks for p in c.logprobs], expected(PROMPT, out, 1)[len(got):])
    assert all(not c.prompt_logprobs for c in chunks)  # they went out with the first token


def leave_after(server, request: pb.GenerateRequest, n: int) -> list[int]:
    """Read a stream's first `n` tokens or more, leave, and wait until the server journaled its end."""
    call = server.stub.Generate(request)
    got: list[int] = []
    for chunk in call:
        got += chunk.token_ids
        if len(got) >= n:
            break
    call.cancel()
    deadline = time.time() + 10
    while len(server.router.journal):
        assert time.time() < deadline
        time.sleep(0.01)
    return got


def test_a_record_without_logprobs_resumes_with_them_for_the_new_tokens_only(serve):
    """Redis journals tokens, not their log-probabilities: a stream adopted from such a record
    sends none for the journaled tokens and the right ones for every token made after, however
    often it is resumed again."""
    server = serve(clients(step_time=0.005))
    want = reference_output(PROMPT, 60, ignore_eos=True)
    right = expected(PROMPT, want, 1)
    got = leave_after(server, pb.GenerateRequest(request_id="r", prompt_token_ids=pb.TokenIds(ids=PROMPT),
                                                 sampling=pb.SamplingOptions(max_tokens=60, ignore_eos=True,
                                                                             logprobs=1)), 10)
    journal = server.router.journal
    expires, record = journal._retired["r"]
    journal._retired["r"] = (expires, dataclasses.replace(record, logprobs=None))  # as Redis gives it back
    again = pb.GenerateRequest(request_id="r", resume_from=len(got))
    got += leave_after(server, again, 20)
    position = len(record.tokens) + 1  # inside what the second stream made
    chunks = list(server.stub.Generate(pb.GenerateRequest(request_id="r", resume_from=position)))
    start = position
    with_logprobs = 0
    for c in chunks:
        assert len(c.logprobs) in (0, len(c.token_ids))
        assert close([as_tuple(p) for p in c.logprobs], right[position: position + len(c.logprobs)])
        with_logprobs += len(c.logprobs)
        position += len(c.token_ids)
    assert got[:start] + [t for c in chunks for t in c.token_ids] == want and with_logprobs > 0
