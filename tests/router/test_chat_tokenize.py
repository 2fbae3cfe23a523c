"""A chat (`messages`) request with the default model's real tokenizer (the fakes' tokenizer returns
a plain list, so only a real one shows how transformers answers)."""
from __future__ import annotations

import pytest

from shunter.proto import generation_pb2 as pb
from shunter.replica.models.checkpoint import read_tokenizer
from shunter.router.convert import tokenize
from shunter.router.replica_core import ReplicaInfo

pytestmark = pytest.mark.slow


@pytest.mark.xfail(strict=True, reason="transformers 5 returns a BatchEncoding (not a dict) from apply_chat_template; "
                                       "router/convert.tokenize then lists its keys. Left to the request-validator "
                                       "rework of convert.py (issue 11 report); remove this mark with the fix.")
def test_messages_become_the_chat_templates_token_ids(smollm2_folder):
    tok = read_tokenizer(smollm2_folder)
    info = ReplicaInfo("r0", "node", 0, 16, len(tok), 8192, [2], tok)
    chat = pb.Messages(messages=[pb.ChatMessage(role="user", content="What is a shunting yard?")])
    text = tok.apply_chat_template([{"role": "user", "content": "What is a shunting yard?"}], add_generation_prompt=True,
                                   tokenize=False)
    assert tokenize(pb.GenerateRequest(messages=chat), info) == list(tok(text, add_special_tokens=False).input_ids)
