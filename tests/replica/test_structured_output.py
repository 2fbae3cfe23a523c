"""Structured output: a spec that does not compile is refused naming its field; the sampler picks
only what the mask allows and reports log-probabilities of the raw distribution; on the real
model every constrained output parses and validates (hypothesis-generated, bounded schemas), and
greedy constrained tokens are the same with async scheduling, synchronously under preemption,
after a migration mid-output, and a request aborted while its grammar compiles leaves nothing."""
from __future__ import annotations

import json
import re

import jsonschema
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from shunter import LLM, SamplingParams
from shunter.replica.engine import Engine
from shunter.replica.engine_config import EngineConfig
from shunter.replica.sampler import mask_bias, sample
from shunter.replica.step_inputs import SamplingInputs
from shunter.structured_output import StructuredOutput

PERSON = {"type": "object", "additionalProperties": False, "required": ["name", "age"],
          "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer", "minimum": 0,
                                                                             "maximum": 120}}}


@pytest.mark.parametrize("fields, message", [
    ({"json": {"type": "nope"}}, "structured_output.json: does not compile"),
    ({"json": "{not json"}, "structured_output.json:"),
    ({"json": [1, 2]}, "structured_output.json: must be a JSON schema object"),
    ({"regex": "[a-"}, "structured_output.regex: does not compile"),
    ({"choice": []}, "structured_output.choice: must be a non-empty list"),
    ({"grammar": "start: undefined_rule"}, "structured_output.grammar: does not compile"),
    ({}, "structured_output: exactly one of"),
    ({"regex": "a+", "choice": ["b"]}, "structured_output: exactly one of"),
])
def test_a_spec_that_does_not_compile_is_refused_naming_its_field(fields, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        StructuredOutput(**fields)


def test_sampling_params_take_a_dict_and_name_an_unknown_field():
    assert SamplingParams(structured_output={"regex": "a+"}).structured_output.kind == "regex"
    with pytest.raises(ValueError, match="structured_output: unknown field 'schema'"):
        SamplingParams(structured_output={"schema": {}})


def _bitmask(allowed: list[list[int]], vocab: int) -> torch.Tensor:
    words = np.zeros((len(allowed), (vocab + 31) // 32), dtype=np.uint32)
    for row, tokens in enumerate(allowed):
        for t in tokens:
            words[row, t // 32] |= np.uint32(1 << (t % 32))
    return torch.from_numpy(words.view(np.int32))


def test_the_sampler_picks_only_allowed_tokens_and_reports_the_raw_log_probabilities():
    vocab = 70
    allowed = [[3, 40, 69], [0], list(range(vocab))]
    torch.manual_seed(0)
    logits = torch.randn(3, vocab)
    mask = _bitmask(allowed, vocab)
    bias = mask_bias(mask, vocab, torch.device("cpu"))
    assert [bias[i].isfinite().nonzero().flatten().tolist() for i in range(3)] == allowed
    greedy = SamplingInputs.of([SamplingParams(temperature=0, logprobs=2)] * 3, [0] * 3, [0] * 3, vocab, "cpu")
    out = sample(logits, greedy, mask)
    assert out.tokens.tolist() == [max(a, key=lambda t: logits[i, t].item()) for i, a in enumerate(allowed)]
    raw = logits.log_softmax(-1)
    assert torch.allclose(out.logprobs.logprobs, raw.gather(1, out.tokens[:, None]).squeeze(1), atol=1e-6)
    drawn = SamplingInputs.of([SamplingParams(temperature=1.5, top_k=50, seed=s) for s in range(3)],
                              [11, 22, 33], [0] * 3, vocab, "cpu")
    for draw in range(20):
        drawn.draws.fill_(draw)
        tokens = sample(logits, drawn, mask).tokens.tolist()
        assert all(t in a for t, a in zip(tokens, allowed))


# ---- the real model ---------------------------------------------------------------------------
PROMPT = "Reply with a JSON object describing a train: "


@pytest.fixture(scope="module")
def llm(smollm2_folder) -> LLM:
    return LLM(model="smollm2-135m-instruct", device="cpu", check_invariants=True)


def _field() -> st.SearchStrategy[dict]:
    return st.one_of(
        st.just({"type": "boolean"}),
        st.tuples(st.integers(-50, 50), st.integers(0, 99)).map(
            lambda t: {"type": "integer", "minimum": t[0], "maximum": t[0] + t[1]}),
        st.integers(1, 10).map(lambda n: {"type": "string", "maxLength": n}),
        st.lists(st.sampled_from(["red", "green", "blue", "steam", "diesel"]), min_size=1, max_size=3, unique=True)
        .map(lambda e: {"enum": e}),
        st.integers(1, 3).map(lambda n: {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9},
                                         "maxItems": n}),
    )


def _schema(depth: int = 1) -> st.SearchStrategy[dict]:
    value = _field() if depth == 0 else st.one_of(_field(), _schema(depth - 1))
    return st.dictionaries(st.from_regex(r"[a-z]{1,6}", fullmatch=True), value, min_size=1, max_size=3).map(
        lambda props: {"type": "object", "properties": props, "required": sorted(props),
                       "additionalProperties": False})


@pytest.mark.slow
@settings(max_examples=1, deadline=None, derandomize=True, phases=[Phase.explicit, Phase.generate],
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(schemas=st.lists(_schema(), min_size=6, max_size=6))
def test_every_constrained_output_parses_and_validates(llm, schemas):
    params = [SamplingParams(max_tokens=120, temperature=t, seed=i, structured_output={"json": schema})
              for i, (schema, t) in enumerate(zip(schemas, [0.0, 0.0, 0.0, 0.8, 1.2, 1.2]))]
    outs = llm.generate([PROMPT] * len(schemas), params, use_tqdm=False)
    for schema, out in zip(schemas, outs):
        completion = out.outputs[0]
        assert completion.finish_reason == "stop", (schema, completion.text)
        jsonschema.validate(json.loads(completion.text), schema)


@pytest.mark.slow
def test_json_object_regex_and_choice(llm):
    outs = llm.generate(["Tell me about trains.", "My phone number is", "Is a train faster than a horse? Answer:"], [
        SamplingParams(max_tokens=80, temperature=0, structured_output={"json_object": True}),
        SamplingParams(max_tokens=20, temperature=0.7, seed=3, structured_output={"regex": r"\d{3}-\d{4}"}),
        SamplingParams(max_tokens=20, temperature=0, structured_output={"choice": ["yes", "no", "it depends"]}),
    ], use_tqdm=False)
    obj, phone, answer = (o.outputs[0] for o in outs)
    assert obj.finish_reason == "stop" and isinstance(json.loads(obj.text), dict)
    assert re.fullmatch(r"\d{3}-\d{4}", phone.text), phone.text
    assert answer.text in ("yes", "no", "it depends")


PEOPLE = ["Describe Alice, 30, as JSON.", "Bob is 41 years old. JSON please:", "A person record for Carol:",
          "Give the name and age of a famous engineer in JSON."]


@pytest.mark.slow
def test_greedy_constrained_tokens_are_the_same_synchronously_under_preemption(llm):
    params = SamplingParams(max_tokens=40, temperature=0, structured_output={"json": PERSON})
    want = [o.outputs[0].token_ids for o in llm.generate(PEOPLE, params, use_tqdm=False)]
    tight = LLM(model="smollm2-135m-instruct", device="cpu", check_invariants=True, async_scheduling=False,
                num_kv_blocks=6, max_num_batched_tokens=32, preemption_mode="recompute")
    got = [o.outputs[0].token_ids for o in tight.generate(PEOPLE, params, use_tqdm=False)]
    assert tight.engine.scheduler.stats.num_preemptions > 0
    assert got == want


def _run(engine: Engine, until_tokens: int | None = None) -> dict[str, list[int]]:
    tokens: dict[str, list[int]] = {}
    while engine.has_unfinished_requests():
        for o in engine.step():
            tokens.setdefault(o.request_id, []).extend(o.new_token_ids)
        if until_tokens is not None and any(len(t) >= until_tokens for t in tokens.values()):
            break
    return tokens


@pytest.mark.slow
def test_a_migrated_constrained_request_continues_its_grammar(llm):
    engine = llm.engine
    prompt = llm.encode(PEOPLE[0])
    params = SamplingParams(max_tokens=40, temperature=0, structured_output={"json": PERSON})
    engine.add_request("whole", prompt, params)
    want = _run(engine)["whole"]
    engine.add_request("moved", prompt, params)
    before = _run(engine, until_tokens=4)["moved"]
    state = engine.export_request("moved")
    assert state is not None and 4 <= len(state.output_token_ids) < len(want)
    engine.import_request(state)  # a replica that has not seen the grammar compiles it and replays the output
    after = _run(engine).get("moved", [])
    assert state.output_token_ids + after == want and before == state.output_token_ids[:len(before)]
    assert engine.kv.num_blocks_in_use() == 0


@pytest.mark.slow
def test_an_abort_while_the_grammar_compiles_leaves_nothing(llm):
    engine = llm.engine
    engine.add_request("early", llm.encode(PROMPT), SamplingParams(structured_output={"json": {"type": "object"}}))
    assert engine.stats().num_waiting == 1
    out = engine.abort_request("early")
    assert out is not None and out.finish_reason == "abort"
    assert not engine.has_unfinished_requests() and engine.abort_request("early") is None


def test_a_model_without_a_tokenizer_refuses_structured_output():
    engine = Engine(EngineConfig(model="random:tiny", device="cpu", num_kv_blocks=16))
    with pytest.raises(ValueError, match="structured_output: this model has no tokenizer"):
        engine.add_request("r", [1, 2, 3], SamplingParams(structured_output={"regex": "a"}))
    assert not engine.has_unfinished_requests()


def test_params_with_a_spec_survive_the_journals_json():
    params = SamplingParams(max_tokens=5, structured_output={"choice": ["a", "b"]})
    again = SamplingParams(**json.loads(json.dumps(params.as_dict())))
    assert again == params and again.structured_output.compiled == params.structured_output.compiled


@pytest.mark.slow
def test_a_grammar_no_output_satisfies_is_refused_and_the_engine_keeps_serving(llm):
    unsatisfiable = SamplingParams(max_tokens=5, structured_output={"regex": r"[^\x00-\U0010FFFF]"})
    with pytest.raises(ValueError, match=r"structured_output.regex: no token can start an output it accepts"):
        llm.generate(["hi", "there"], [unsatisfiable, SamplingParams(max_tokens=5)], use_tqdm=False)
    assert not llm.engine.has_unfinished_requests() and llm.engine.kv.num_blocks_in_use() == 0
    out = llm.generate(["hi"], SamplingParams(max_tokens=3, structured_output={"choice": ["ok"]}), use_tqdm=False)
    assert out[0].outputs[0].text == "ok"
