"""The OpenAI HTTP API on loopback, through the official `openai` client, beside gRPC on the same router:
the same greedy text as gRPC, streaming and not, completions and chat, errors in OpenAI's shape,
disconnects that free their blocks, API keys on both front doors."""
from __future__ import annotations

import http.client
import json
import socket
import time
from typing import Callable

import openai
import pytest

from shunter.proto import generation_pb2 as pb
from shunter.router.http.gateway import MAX_BODY_BYTES
from shunter.router.core import LocalReplicaClient
from shunter.router.core import RouterConfig
from shunter.router.security import Security
from shunter.router.security.tls import TlsFiles, server_credentials
from shunter.testing.background import BackgroundServer
from tests.fakes import EOS, FakeEngine
from tests.router.certs import make_pki

MODEL = "fake"
TEXT = "héllo, 世界! ça va? 🚂 done"
SCRIPT = [b + 3 for b in TEXT.encode("utf-8")]


def fake_clients(n: int = 2, **engine) -> list[LocalReplicaClient]:
    engine.setdefault("with_tokenizer", True)
    return [LocalReplicaClient(f"r{i}", lambda: FakeEngine(**engine)) for i in range(n)]


@pytest.fixture
def serve_http() -> Callable[..., BackgroundServer]:
    servers: list[BackgroundServer] = []

    def start(clients: list, config: RouterConfig | None = None, security: Security | None = None) -> BackgroundServer:
        servers.append(BackgroundServer(clients, config, model=MODEL, http=True, security=security))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def client(server: BackgroundServer, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=server.http_url, api_key=key, max_retries=0, timeout=20)


def grpc_text(server: BackgroundServer, **request) -> tuple[str, str]:
    sampling = request.pop("sampling")
    chunks = list(server.stub.Generate(pb.GenerateRequest(sampling=pb.SamplingOptions(**sampling), **request)))
    return "".join(c.text for c in chunks), chunks[-1].finish_reason


def raw(server: BackgroundServer, method: str, path: str, body: bytes | str | None = None,
        headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.gateway.port, timeout=20)
    conn.request(method, path, body, {"content-type": "application/json", **(headers or {})})
    response = conn.getresponse()
    out = response.status, response.read()
    conn.close()
    return out


def test_greedy_text_equals_the_grpc_path_streaming_and_not(serve_http):
    server = serve_http(fake_clients())
    oai = client(server)
    prompt = "The capital of France is"
    expected, reason = grpc_text(server, prompt=prompt, sampling={"max_tokens": 24, "temperature": 0})
    whole = oai.completions.create(model=MODEL, prompt=prompt, max_tokens=24, temperature=0)
    assert (whole.choices[0].text, whole.choices[0].finish_reason) == (expected, reason)
    assert whole.object == "text_completion" and whole.id.startswith("cmpl-")
    assert (whole.usage.prompt_tokens, whole.usage.completion_tokens, whole.usage.total_tokens) == (
        len(prompt) + 1, 24, len(prompt) + 25)  # a byte a token, plus the BOS the tokenizer adds
    chunks = list(oai.completions.create(model=MODEL, prompt=prompt, max_tokens=24, temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == expected
    assert chunks[-1].choices[0].finish_reason == reason
    assert all(c.choices[0].finish_reason is None and c.usage is None for c in chunks[:-1])


def test_chat_uses_the_chat_template_as_grpc_does(serve_http):
    server = serve_http(fake_clients())
    oai = client(server)
    messages = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "What is a shunting yard?"}]
    expected, reason = grpc_text(server, messages=pb.Messages(messages=[pb.ChatMessage(**m) for m in messages]),
                                 sampling={"max_tokens": 16, "temperature": 0})
    whole = oai.chat.completions.create(model=MODEL, messages=messages, max_completion_tokens=16, temperature=0)
    assert whole.choices[0].message.content == expected and whole.choices[0].message.role == "assistant"
    assert whole.choices[0].finish_reason == reason and whole.object == "chat.completion"
    rendered = "<system>Be terse.\n<user>What is a shunting yard?\n<assistant>"
    assert whole.usage.prompt_tokens == len(rendered)
    chunks = list(oai.chat.completions.create(model=MODEL, messages=messages, max_tokens=16, temperature=0, stream=True,
                                              stream_options={"include_usage": True}))
    usage, chunks = chunks[-1], chunks[:-1]
    assert usage.choices == [] and usage.usage.completion_tokens == 16 and usage.usage.prompt_tokens == len(rendered)
    assert chunks[0].choices[0].delta.role == "assistant" and all(c.choices[0].delta.role is None for c in chunks[1:])
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected
    assert chunks[-1].choices[0].finish_reason == reason and all(c.usage is None for c in chunks)
    parts = [{"type": "text", "text": "What is"}, {"type": "text", "text": "a shunting yard?"}]
    as_parts = oai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": parts}], max_tokens=4)
    assert as_parts.usage.prompt_tokens == len("<user>What is\na shunting yard?\n<assistant>")


def test_the_event_stream_is_sse_ending_with_done(serve_http):
    server = serve_http(fake_clients())
    body = json.dumps({"model": MODEL, "prompt": "hi", "max_tokens": 5, "stream": True,
                       "stream_options": {"include_usage": True}})
    status, data = raw(server, "POST", "/v1/completions", body)
    events = data.decode().split("\n\n")
    assert status == 200 and events[-1] == "" and events[-2] == "data: [DONE]"
    assert all(e.startswith("data: ") for e in events[:-1])
    last = json.loads(events[-3].removeprefix("data: "))
    assert last["choices"] == [] and last["usage"]["completion_tokens"] == 5


def test_continuous_usage_puts_the_usage_so_far_on_every_chunk(serve_http):
    """vLLM's `stream_options.continuous_usage_stats`, which load tools (guidellm) send."""
    server = serve_http(fake_clients(step_time=0.005))
    chunks = list(client(server).completions.create(
        model=MODEL, prompt="hi", max_tokens=12, stream=True, extra_body={"ignore_eos": True},
        stream_options={"include_usage": True, "continuous_usage_stats": True}))
    counts = [c.usage.completion_tokens for c in chunks[:-1]]
    assert len(counts) > 1 and counts == sorted(counts) and counts[-1] == 12
    assert all(c.usage.prompt_tokens == 3 for c in chunks) and chunks[-1].choices == []
    held = serve_http(fake_clients(step_time=0.005, script=SCRIPT))  # "é" takes two tokens: a step with no text
    chunks = list(client(held).completions.create(
        model=MODEL, prompt="hi", max_tokens=3, stream=True, stream_options={"continuous_usage_stats": True}))
    assert [(c.choices[0].text, c.usage.completion_tokens) for c in chunks] == [("h", 1), ("", 2), ("é", 3)]


def test_return_token_ids_gives_each_choice_and_chunk_the_grpc_tokens(serve_http):
    """vLLM's `return_token_ids`: the load client rebuilds multi-turn prompts from them."""
    server = serve_http(fake_clients(step_time=0.005, script=SCRIPT))  # "é" takes two tokens: a step with no text
    grpc = list(server.stub.Generate(pb.GenerateRequest(prompt_token_ids=pb.TokenIds(ids=[7, 8, 9]),
                                                        sampling=pb.SamplingOptions(max_tokens=3, temperature=0))))
    expected = [t for c in grpc for t in c.token_ids]
    request = {"model": MODEL, "prompt": [7, 8, 9], "max_tokens": 3, "temperature": 0, "return_token_ids": True}
    status, body = raw(server, "POST", "/v1/completions", json.dumps(request))
    assert status == 200 and json.loads(body)["choices"][0]["token_ids"] == expected
    status, body = raw(server, "POST", "/v1/completions", json.dumps({**request, "stream": True}))
    chunks = [json.loads(e.removeprefix("data: ")) for e in body.decode().split("\n\n")[:-2]]
    assert [(c["choices"][0]["text"], len(c["choices"][0]["token_ids"])) for c in chunks] == [("h", 1), ("", 1), ("é", 1)]
    assert [t for c in chunks for t in c["choices"][0]["token_ids"]] == expected
    status, body = raw(server, "POST", "/v1/completions", json.dumps({**request, "return_token_ids": False}))
    assert "token_ids" not in json.loads(body)["choices"][0]  # only when asked: OpenAI's shape otherwise


def test_multibyte_text_and_stop_strings_as_grpc(serve_http):
    server = serve_http(fake_clients(script=SCRIPT))
    oai = client(server)
    chunks = list(oai.completions.create(model=MODEL, prompt="hi", max_tokens=len(SCRIPT), stream=True))
    assert all("\ufffd" not in c.choices[0].text for c in chunks)
    assert "".join(c.choices[0].text for c in chunks) == TEXT
    stopped = oai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=64,
                                          stop="!")
    assert stopped.choices[0].message.content == "héllo, 世界" and stopped.choices[0].finish_reason == "stop"
    assert stopped.usage.completion_tokens == len("héllo, 世界!".encode())  # up to the token completing the stop


def test_extensions_reach_the_engine(serve_http):
    server = serve_http(fake_clients(script=SCRIPT[:3] + [EOS] + SCRIPT[3:]))
    oai = client(server)
    plain = oai.completions.create(model=MODEL, prompt="hi", max_tokens=8)
    assert plain.choices[0].finish_reason == "stop" and plain.usage.completion_tokens == 4
    extended = oai.completions.create(model=MODEL, prompt="hi", max_tokens=8, extra_body={
        "ignore_eos": True, "top_k": 5, "priority": "batch", "slo": {"ttft_ms": 500, "tbt_ms": 50}})
    assert extended.choices[0].finish_reason == "length" and extended.usage.completion_tokens == 8


def test_n_samples_and_prompt_lists_are_choices_by_index(serve_http):
    server = serve_http(fake_clients())
    oai = client(server)
    one = lambda p: oai.completions.create(model=MODEL, prompt=p, max_tokens=6, temperature=0).choices[0].text  # noqa: E731
    many = oai.completions.create(model=MODEL, prompt=["ab", "cd"], n=2, max_tokens=6, temperature=0)
    assert [c.index for c in many.choices] == [0, 1, 2, 3]
    assert [c.text for c in many.choices] == [one("ab"), one("ab"), one("cd"), one("cd")]
    assert many.usage.prompt_tokens == 6 and many.usage.completion_tokens == 24  # each prompt counted once
    chunks = list(oai.completions.create(model=MODEL, prompt=[[5, 6, 7], [8, 9]], n=2, max_tokens=6, stream=True,
                                         stream_options={"include_usage": True}))
    finished = sorted(c.choices[0].index for c in chunks if c.choices and c.choices[0].finish_reason)
    assert finished == [0, 1, 2, 3] and chunks[-1].usage.completion_tokens == 24


BAD = [
    ("/v1/completions", b'{"model": "fake", "prompt": "hi"', "body"),
    ("/v1/completions", b"[1, 2]", "body"),
    ("/v1/completions", {"prompt": "hi", "max_tokens": "5"}, "max_tokens"),
    ("/v1/completions", {"prompt": "hi", "max_tokens": 0}, "max_tokens"),
    ("/v1/completions", {"prompt": "hi", "max_tokens": -3}, "max_tokens"),
    ("/v1/completions", {"prompt": "hi", "max_tokens": 10**30}, "max_tokens"),
    ("/v1/completions", {"prompt": "hi", "temperature": 2.5}, "temperature"),
    ("/v1/completions", {"prompt": "hi", "temperature": True}, "temperature"),
    ("/v1/completions", {"prompt": "hi", "top_p": 0}, "top_p"),
    ("/v1/completions", {"prompt": "hi", "seed": -1}, "seed"),
    ("/v1/completions", {"prompt": "hi", "seed": 2**64}, "seed"),
    ("/v1/completions", {"prompt": "hi", "n": 0}, "n"),
    ("/v1/completions", {"prompt": "hi", "n": 10**6}, "n"),
    ("/v1/completions", {"prompt": "hi", "stop": [""]}, "stop"),
    ("/v1/completions", {"prompt": "hi", "stop": ["x"] * 17}, "stop"),
    ("/v1/completions", {"prompt": "hi", "stream": "yes"}, "stream"),
    ("/v1/completions", {"prompt": "hi", "stream_options": {"include_usage": True}}, "stream_options"),
    ("/v1/completions", {"prompt": "hi", "stream": True, "stream_options": {"include_usage": True, "x": 1}},
     "stream_options.x"),
    ("/v1/completions", {"prompt": "hi", "logprobs": 21}, "logprobs"),
    ("/v1/completions", {"prompt": "hi", "logprobs": -1}, "logprobs"),
    ("/v1/completions", {"prompt": "hi", "echo": 1}, "echo"),
    ("/v1/completions", {"prompt": "hi", "frequency_penalty": 0.5}, "frequency_penalty"),
    ("/v1/completions", {"prompt": "hi", "priority": "urgent"}, "priority"),
    ("/v1/completions", {"prompt": "hi", "slo": {"ttft_ms": 0}}, "slo.ttft_ms"),
    ("/v1/completions", {"prompt": "hi", "slo": {"deadline": 5}}, "slo.deadline"),
    ("/v1/completions", {"prompt": "hi", "top_k": -2}, "top_k"),
    ("/v1/completions", {"prompt": "hi", "ignore_eos": "true"}, "ignore_eos"),
    ("/v1/completions", {"prompt": ""}, "prompt"),
    ("/v1/completions", {"prompt": 5}, "prompt"),
    ("/v1/completions", {"prompt": []}, "prompt"),
    ("/v1/completions", {"prompt": [1, 10**6]}, "prompt"),
    ("/v1/completions", {"prompt": ["a"] * 65}, "prompt"),
    ("/v1/completions", {"prompt": ["ok", ""]}, "prompt[1]"),
    ("/v1/completions", {}, "prompt"),
    ("/v1/completions", {"prompt": "hi", "max_tokens": 5000}, "max_tokens"),
    ("/v1/chat/completions", {"messages": []}, "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "robot", "content": "a"}]}, "messages[0].role"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "a", "name": "x"}]}, "messages[0].name"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
     "messages[0].content"),
    ("/v1/chat/completions", {"messages": [{"role": "user"}]}, "messages[0].content"),
    ("/v1/chat/completions", {"messages": "hi"}, "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "a"}], "logprobs": 1}, "logprobs"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "a"}], "top_logprobs": 2}, "top_logprobs"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "a"}], "logprobs": True,
                              "top_logprobs": 21}, "top_logprobs"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "a"}], "max_completion_tokens": 9000},
     "max_completion_tokens"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "a"}], "max_tokens": 3,
                              "max_completion_tokens": 4}, "max_completion_tokens"),
]


def test_every_bad_request_is_a_400_naming_the_field_and_the_server_keeps_serving(serve_http):
    server = serve_http(fake_clients())
    for path, body, field in BAD:
        data = body if isinstance(body, bytes) else json.dumps({"model": MODEL, **body})
        status, answer = raw(server, "POST", path, data)
        error = json.loads(answer)["error"]
        assert status == 400, (body, answer)
        assert error["param"] == field and error["message"].startswith(field + ":"), (body, error)
        assert error["type"] == "invalid_request_error"
    assert server.router.counters.rejected == len(BAD) and len(server.router.journal) == 0
    still = client(server).completions.create(model=MODEL, prompt="still here", max_tokens=2)
    assert still.usage.completion_tokens == 2


def test_the_official_client_raises_by_status(serve_http):
    server = serve_http(fake_clients())
    oai = client(server)
    with pytest.raises(openai.BadRequestError) as bad:
        oai.completions.create(model=MODEL, prompt="hi", max_tokens=0)
    assert bad.value.body["param"] == "max_tokens"
    with pytest.raises(openai.NotFoundError) as missing:
        oai.completions.create(model="gpt-4o", prompt="hi")
    assert missing.value.body["param"] == "model" and missing.value.body["code"] == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        oai.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "a"}])
    status, answer = raw(server, "GET", "/v1/nowhere")
    assert status == 404 and json.loads(answer)["error"]["type"] == "not_found_error"


def test_a_body_over_the_limit_is_413_and_the_server_keeps_serving(serve_http):
    server = serve_http(fake_clients())
    big = json.dumps({"model": MODEL, "prompt": "x" * MAX_BODY_BYTES})
    status, answer = raw(server, "POST", "/v1/completions", big)
    assert status == 413 and json.loads(answer)["error"]["param"] == "body"
    conn = http.client.HTTPConnection("127.0.0.1", server.gateway.port, timeout=20)  # chunked: no Content-Length
    conn.request("POST", "/v1/completions", iter([big[i:i + 65536].encode() for i in range(0, len(big), 65536)]),
                 {"content-type": "application/json"}, encode_chunked=True)
    response = conn.getresponse()
    assert response.status == 413 and json.loads(response.read())["error"]["param"] == "body"
    conn.close()
    assert client(server).completions.create(model=MODEL, prompt="ok", max_tokens=1).usage.completion_tokens == 1


def test_models_and_health(serve_http):
    server = serve_http(fake_clients())
    assert [m.id for m in client(server).models.list().data] == [MODEL]
    assert raw(server, "GET", "/health")[0] == 200
    server.router.draining = True
    status, answer = raw(server, "GET", "/health")
    assert status == 503 and json.loads(answer)["error"]["type"] == "service_unavailable_error"
    with pytest.raises(openai.InternalServerError) as draining:
        client(server).completions.create(model=MODEL, prompt="hi")
    assert draining.value.status_code == 503


def test_overload_is_429_with_retry_after(serve_http):
    server = serve_http(fake_clients(step_time=0.02), RouterConfig(poll_wait_s=0.05, rebalance=False, max_in_flight=1))
    oai = client(server)
    long = oai.completions.create(model=MODEL, prompt="hi", max_tokens=200, stream=True,
                                  extra_body={"ignore_eos": True})
    next(iter(long))
    with pytest.raises(openai.RateLimitError) as err:
        oai.completions.create(model=MODEL, prompt="hi", max_tokens=2)
    assert err.value.response.headers["retry-after"] == "1"
    with pytest.raises(openai.RateLimitError):  # n=2 needs two places: refused whole, nothing left running
        oai.completions.create(model=MODEL, prompt="hi", max_tokens=2, n=2)
    long.close()


def _idle(server: BackgroundServer, within_s: float) -> bool:
    """Nothing in the router's journal and no KV block held on any replica, within `within_s`."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        engines = [c.core.engine for c in server.clients]
        if not len(server.router.journal) and all(e.stats().kv_blocks_in_use == 0 and not e.requests for e in engines):
            return True
        time.sleep(0.01)
    return False


def test_a_client_that_disconnects_mid_stream_frees_its_blocks(serve_http):
    server = serve_http(fake_clients(step_time=0.01))
    oai = client(server)
    stream = oai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2000,
                                         stream=True, extra_body={"ignore_eos": True})
    chunks = iter(stream)
    next(chunks), next(chunks)
    assert any(c.core.engine.requests for c in server.clients)
    stream.close()  # 2000 tokens at 10 ms a step would take 20 s
    assert _idle(server, within_s=2.0)


def test_a_client_that_disconnects_before_a_whole_answer_frees_its_blocks(serve_http):
    server = serve_http(fake_clients(step_time=0.01))
    body = json.dumps({"model": MODEL, "prompt": "hi", "max_tokens": 2000, "ignore_eos": True}).encode()
    with socket.create_connection(("127.0.0.1", server.gateway.port)) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                     b"content-length: %d\r\n\r\n%s" % (len(body), body))
        deadline = time.monotonic() + 5
        while not any(c.core.engine.requests for c in server.clients) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert any(c.core.engine.requests for c in server.clients)
    assert _idle(server, within_s=2.0)


def test_api_keys_guard_the_http_api_and_leave_health_open(serve_http):
    server = serve_http(fake_clients(), security=Security(api_keys=(b"k-one", b"k-two")))
    with pytest.raises(openai.AuthenticationError) as err:
        client(server, "wrong").completions.create(model=MODEL, prompt="hi", max_tokens=2)
    assert err.value.body["code"] == "invalid_api_key"
    for headers in ({}, {"authorization": "k-one"}, {"authorization": "Basic k-one"}):  # the openai client needs a key
        status, answer = raw(server, "POST", "/v1/completions", json.dumps({"model": MODEL, "prompt": "hi"}), headers)
        assert status == 401 and json.loads(answer)["error"]["param"] == "authorization"
    with pytest.raises(openai.AuthenticationError):
        client(server, "wrong").models.list()
    allowed = client(server, "k-two").completions.create(model=MODEL, prompt="hi", max_tokens=2)
    assert allowed.usage.completion_tokens == 2
    assert raw(server, "GET", "/health")[0] == 200
    assert server.router.counters.routed == 1  # nothing refused reached a replica


def test_tls_files_serve_https_with_the_same_certificate_as_grpc(serve_http, tmp_path):
    """--tls-cert/--tls-key apply to the HTTP port too: HTTPS that the CA's certificate verifies,
    and no plaintext answer."""
    import ssl

    pki = make_pki(tmp_path)
    files = TlsFiles(pki.server_cert, pki.server_key)
    server = serve_http(fake_clients(), security=Security(server_credentials(files.cert, files.key), (), files))
    assert server.http_url.startswith("https://")
    body = json.dumps({"model": MODEL, "prompt": "hi", "max_tokens": 2})
    conn = http.client.HTTPSConnection("127.0.0.1", server.gateway.port, timeout=20,
                                       context=ssl.create_default_context(cafile=str(pki.ca)))
    conn.request("POST", "/v1/completions", body, {"content-type": "application/json"})
    response = conn.getresponse()
    assert response.status == 200 and json.loads(response.read())["usage"]["completion_tokens"] == 2
    conn.close()
    with pytest.raises((ConnectionError, http.client.HTTPException, OSError)):
        raw(server, "POST", "/v1/completions", body)  # plaintext on the TLS port


def test_http_streams_are_observed_and_get_metrics_serves_the_page(tmp_path):
    """With metrics on, GET /metrics on the API port is the frontend's page, and HTTP requests
    land in the same request histograms as gRPC ones."""
    from tests.router.prometheus_page import Page

    server = BackgroundServer(fake_clients(), model=MODEL, http=True, metrics=True)
    try:
        c = client(server)
        c.completions.create(model=MODEL, prompt="hi", max_tokens=3)
        list(c.completions.create(model=MODEL, prompt="hi", max_tokens=3, stream=True))
        grpc_text(server, prompt="hi", sampling={"max_tokens": 3})
        status, body = raw(server, "GET", "/metrics")
        assert status == 200
        page = Page(body.decode())
        assert page.get("shunter:time_to_first_token_seconds_count") == 3
        assert page.get("shunter:request_success_total", finished_reason="length") == 3
        assert page.get("shunter:generation_tokens_total") == 9
    finally:
        server.close()
