"""Structured output through both front doors, on one in-process SmolLM2 replica: gRPC's
`sampling.structured_output` and the OpenAI gateway's `response_format` / `structured_outputs`,
the latter read by the official `openai` client (its `parse` helper included). Every output
parses and validates; a spec that does not compile is INVALID_ARGUMENT / 400 naming the field,
and the server keeps serving."""
from __future__ import annotations

import json
import re

import grpc
import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from shunter.proto import generation_pb2 as pb
from shunter.router.core import LocalReplicaClient
from shunter.testing.background import BackgroundServer

pytestmark = pytest.mark.slow

MODEL = "smollm2-135m-instruct"
TRAIN = {"type": "object", "additionalProperties": False, "required": ["name", "cars", "electric"],
         "properties": {"name": {"type": "string", "maxLength": 16}, "cars": {"type": "integer", "minimum": 1,
                                                                            "maximum": 40},
                        "electric": {"type": "boolean"}}}
ASK = [{"role": "user", "content": "Describe a freight train as JSON."}]


class Train(BaseModel):
    name: str = Field(max_length=16)
    cars: int = Field(ge=1, le=40)
    electric: bool


@pytest.fixture(scope="module")
def server(smollm2_folder):
    from shunter.replica.engine import Engine
    from shunter.replica.engine_config import EngineConfig

    s = BackgroundServer([LocalReplicaClient("r0", lambda: Engine(EngineConfig(model=MODEL, device="cpu")))],
                         model=MODEL, http=True)
    yield s
    s.close()


@pytest.fixture
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.http_url, api_key="unused", max_retries=0, timeout=60)


def generate(server, **structured) -> str:
    request = pb.GenerateRequest(prompt="A freight train, as JSON:", sampling=pb.SamplingOptions(
        max_tokens=60, temperature=0, structured_output=pb.StructuredOutput(**structured)))
    return "".join(c.text for c in server.stub.Generate(request, timeout=60))


def test_grpc_json_schema_and_choice(server):
    jsonschema.validate(json.loads(generate(server, json=json.dumps(TRAIN))), TRAIN)
    assert generate(server, choice=pb.Choices(choices=["steam", "diesel", "electric"])) in ("steam", "diesel",
                                                                                             "electric")


@pytest.mark.parametrize("structured, field", [
    ({"json": '{"type": "wagon"}'}, "sampling.structured_output.json: does not compile"),
    ({"regex": "(unclosed"}, "sampling.structured_output.regex: does not compile"),
    ({"json": "{not json"}, "sampling.structured_output.json:"),
    ({}, "sampling.structured_output: set one of"),
    ({"regex": r"[^\x00-\U0010FFFF]"}, "structured_output.regex: no token can start an output it accepts"),
])
def test_grpc_a_spec_that_does_not_compile_is_invalid_argument_and_the_server_keeps_serving(server, structured,
                                                                                              field):
    with pytest.raises(grpc.RpcError) as err:
        generate(server, **structured)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(field), err.value.details()
    assert re.fullmatch(r"\d{2}", generate(server, regex=r"\d{2}"))


def test_openai_chat_response_format_json_schema_and_json_object(client):
    out = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=60, temperature=0, response_format={
        "type": "json_schema", "json_schema": {"name": "train", "schema": TRAIN, "strict": True}})
    jsonschema.validate(json.loads(out.choices[0].message.content), TRAIN)
    # Any object: nothing bounds its keys, so the prompt is one this model answers briefly (greedy).
    alice = [{"role": "user", "content": 'Give a JSON object with keys "name" and "age" for Alice, 30.'}]
    out = client.chat.completions.create(model=MODEL, messages=alice, max_tokens=80, temperature=0,
                                         response_format={"type": "json_object"})
    assert json.loads(out.choices[0].message.content) == {"name": "Alice", "age": 30}


def test_openai_parse_helper_gets_its_pydantic_model(client):
    out = client.chat.completions.parse(model=MODEL, messages=ASK, max_tokens=60, temperature=0,
                                        response_format=Train)
    assert isinstance(out.choices[0].message.parsed, Train)


def test_openai_completions_stream_with_vllms_structured_outputs(client):
    chunks = client.completions.create(model=MODEL, prompt="Call me at", max_tokens=20, temperature=0.7, seed=5,
                                       stream=True, extra_body={"structured_outputs": {"regex": r"\d{3}-\d{4}"}})
    assert re.fullmatch(r"\d{3}-\d{4}", "".join(c.choices[0].text for c in chunks))


def test_openai_a_schema_that_does_not_compile_is_a_400_naming_the_field(client):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=8, response_format={
            "type": "json_schema", "json_schema": {"name": "bad", "schema": {"type": "wagon"}}})
    assert "response_format.json_schema.schema: does not compile" in str(err.value)
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model=MODEL, prompt="x", max_tokens=8,
                                  extra_body={"structured_outputs": {"regex": "(", "choice": ["a"]}})
    assert "structured_outputs: exactly one of" in str(err.value)
    out = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=4, temperature=0)
    assert out.choices[0].finish_reason == "length"
