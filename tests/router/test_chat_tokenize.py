"""A chat (`messages`) request with the default model's real tokenizer (the fakes' tokenizer is
simpler, so only a real one shows how transformers answers): the chat template's token ids."""
from __future__ import annotations

import pytest

from shunter.proto import generation_pb2 as pb
from shunter.replica.engine_protocol import ModelLimits
from shunter.replica.models.checkpoint import read_tokenizer
from shunter.replica.replica_core import ReplicaInfo
from shunter.router.grpc.request import tokenize

pytestmark = pytest.mark.slow


def test_messages_become_the_chat_templates_token_ids(smollm2_folder):
    tok = read_tokenizer(smollm2_folder)
    info = ReplicaInfo("r0", "node", 0, ModelLimits(len(tok), 8192, 16, 1024, (2,)), tok)
    chat = pb.Messages(messages=[pb.ChatMessage(role="user", content="What is a shunting yard?")])
    text = tok.apply_chat_template([{"role": "user", "content": "What is a shunting yard?"}], add_generation_prompt=True,
                                   tokenize=False)
    ids = tokenize(pb.GenerateRequest(messages=chat), info)
    assert ids == list(tok(text, add_special_tokens=False).input_ids)
    assert all(isinstance(t, int) for t in ids) and tok.decode(ids).startswith("<|im_start|>")
