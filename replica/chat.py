"""Chat messages to prompt token ids, one way for every entry point (`LLM.chat`, gRPC `messages`,
`shunter generate --chat`): render the model's chat template to text, then tokenize it without
adding special tokens again (the template already holds them). Rendering to text sidesteps what
`apply_chat_template(tokenize=True)` returns, which differs between transformers versions."""
from __future__ import annotations

from typing import Mapping, Sequence

ROLES = ("system", "user", "assistant", "tool")


def chat_prompt_ids(tokenizer, messages: Sequence[Mapping[str, str]], field: str = "messages") -> list[int]:
    """Token ids of `messages` with the generation prompt appended; ValueError naming the field."""
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"{field}: this model has no chat template; send a prompt")
    if not messages:
        raise ValueError(f"{field}: must not be empty")
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or not {"role", "content"} <= m.keys():
            raise ValueError(f"{field}[{i}]: must have a role and a content")
        if m["role"] not in ROLES:
            raise ValueError(f"{field}[{i}].role: must be one of {', '.join(ROLES)}, got {m['role']!r}")
    text = tokenizer.apply_chat_template([dict(m) for m in messages], add_generation_prompt=True, tokenize=False)
    return list(tokenizer(text, add_special_tokens=False).input_ids)
