"""Log-probabilities through the OpenAI gateway, read by the official `openai` client, over fake
replicas whose log-probabilities are a function of the context (`fake_logprobs`): completions'
shape (with `echo`, the prompt's first) and chat's, streaming and not, the same numbers either way."""
from __future__ import annotations

import math

import openai
import pytest

from shunter.router.core import LocalReplicaClient
from shunter.testing.background import BackgroundServer
from shunter.testing.fake_engine import ByteTokenizer, FakeEngine, fake_logprobs

TEXT = "the cat sat on the mat"
SCRIPT = ByteTokenizer().encode(TEXT, add_special_tokens=False)
VOCAB = FakeEngine(with_tokenizer=True).limits.vocab_size


@pytest.fixture(scope="module")
def server():
    clients = [LocalReplicaClient(f"r{i}", lambda: FakeEngine(with_tokenizer=True, script=SCRIPT)) for i in range(2)]
    s = BackgroundServer(clients, None, model="fake", http=True)
    yield s
    s.close()


@pytest.fixture
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.http_url, api_key="unused", max_retries=0, timeout=20)


def token(t: int) -> str:
    return ByteTokenizer().decode([t])


def expected(context: list[int], out: list[int], k: int) -> list:
    return [fake_logprobs(context + out[:j], t, k, VOCAB) for j, t in enumerate(out)]


def test_completions_logprobs_with_echo_in_openais_shape_streaming_or_not(client):
    prompt_ids = ByteTokenizer().encode("hi")
    whole = client.completions.create(model="fake", prompt="hi", max_tokens=len(SCRIPT), logprobs=2, echo=True)
    choice = whole.choices[0]
    assert choice.text == "hi" + TEXT
    lp = choice.logprobs
    ids = prompt_ids + SCRIPT
    assert lp.tokens == [token(t) for t in ids] and "".join(lp.tokens) == choice.text
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None  # nothing predicts the first
    want = [None] + expected(prompt_ids[:1], ids[1:], 2)
    assert lp.token_logprobs[1:] == pytest.approx([p.logprob for p in want[1:]])
    assert lp.top_logprobs[1:] == [{token(t): pytest.approx(v) for t, v in p.top()} for p in want[1:]]
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(len(ids))]

    pieces = list(client.completions.create(model="fake", prompt="hi", max_tokens=len(SCRIPT), logprobs=2,
                                            echo=True, stream=True))
    assert "".join(c.choices[0].text for c in pieces) == choice.text
    joined = {f: [x for c in pieces if c.choices[0].logprobs for x in getattr(c.choices[0].logprobs, f)]
              for f in ("tokens", "token_logprobs", "text_offset")}
    assert joined == {"tokens": lp.tokens, "token_logprobs": lp.token_logprobs, "text_offset": lp.text_offset}


def test_completions_without_echo_give_the_generated_tokens_only_and_none_when_not_asked(client):
    prompt = [7, 70, 80]
    out = client.completions.create(model="fake", prompt=prompt, max_tokens=4, logprobs=0)
    lp = out.choices[0].logprobs
    assert lp.tokens == [token(t) for t in SCRIPT[:4]] and lp.top_logprobs == [{}] * 4
    assert lp.token_logprobs == pytest.approx([p.logprob for p in expected(prompt, SCRIPT[:4], 0)])
    assert client.completions.create(model="fake", prompt=prompt, max_tokens=4).choices[0].logprobs is None


@pytest.mark.parametrize("stream", [False, True])
def test_chat_logprobs_and_top_logprobs_in_openais_shape(client, stream):
    messages = [{"role": "user", "content": "hey"}]
    rendered = ByteTokenizer().apply_chat_template(messages, tokenize=False)
    prompt = ByteTokenizer().encode(rendered, add_special_tokens=False)  # as the gateway renders it
    asked = dict(model="fake", messages=messages, max_tokens=6, logprobs=True, top_logprobs=3)
    if stream:
        chunks = list(client.chat.completions.create(stream=True, **asked))
        content = [x for c in chunks for ch in c.choices if ch.logprobs for x in ch.logprobs.content]
    else:
        content = client.chat.completions.create(**asked).choices[0].logprobs.content
    want = expected(prompt, SCRIPT[:6], 3)
    assert [c.token for c in content] == [token(t) for t in SCRIPT[:6]]
    assert [c.bytes for c in content] == [list(token(t).encode()) for t in SCRIPT[:6]]
    assert [c.logprob for c in content] == pytest.approx([p.logprob for p in want])
    for c, p in zip(content, want):
        assert [(t.token, t.logprob) for t in c.top_logprobs] == [(token(i), pytest.approx(v)) for i, v in p.top()]
    assert math.isclose(math.exp(content[0].top_logprobs[0].logprob), 0.5, rel_tol=1e-6)
    plain = client.chat.completions.create(model="fake", messages=messages, max_tokens=2)
    assert plain.choices[0].logprobs is None
