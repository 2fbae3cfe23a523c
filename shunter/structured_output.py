"""What shape a request's output must take: a JSON schema, any JSON object, a regex, one of a
few strings, or a Lark grammar. The replica turns it into a token mask (`replica/grammar.py`).

The spec is checked when it is built, against the grammar library (llguidance), so a schema
that does not compile is refused at the front door with the field's name, before it reaches a
replica. The check parses the grammar only; building its token-level matcher is the replica's
job, off its step thread.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

KINDS = ("json", "json_object", "regex", "choice", "grammar")
# JSON comes out in one layout, `{"a": 1, "b": [2, 3]}`: with free whitespace a model can pad
# forever between two tokens (a small one does, sampled), and no max_tokens is then enough.
JSON_LAYOUT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


@dataclass
class StructuredOutput:
    """Exactly one of the fields is set. `json` is a JSON schema (a dict or its text);
    `json_object=True` asks for any JSON object (OpenAI's `{"type": "json_object"}`); `choice`
    is a list of strings, one of which the output is; `grammar` is a Lark grammar (llguidance's
    dialect). Errors name the field as `structured_output.<kind>`."""

    json: dict[str, Any] | str | None = None
    json_object: bool = False
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    # The llguidance grammar the fields compile to; filled in by the check.
    compiled: str = field(default="", repr=False, compare=False)

    def __post_init__(self) -> None:
        given = [k for k in KINDS if getattr(self, k) not in (None, False)]
        if len(given) != 1:
            raise ValueError("structured_output: exactly one of json, json_object, regex, choice, grammar must be set, "
                             f"got {', '.join(given) or 'none'}")
        self.compiled = _compile(given[0], getattr(self, given[0]))

    @property
    def kind(self) -> str:
        return next(k for k in KINDS if getattr(self, k) not in (None, False))

    def fields(self) -> dict[str, Any]:
        """The one field set, as `SamplingParams(structured_output=...)` takes it (JSON-ready)."""
        return {self.kind: getattr(self, self.kind)}


def _compile(kind: str, value: Any) -> str:
    """The llguidance grammar text for one field; ValueError naming it when it is malformed."""
    from llguidance import LLMatcher

    name = f"structured_output.{kind}"
    try:
        if kind == "json":
            schema = json.loads(value) if isinstance(value, str) else value
            if not isinstance(schema, dict):
                raise ValueError(f"must be a JSON schema object, got {type(schema).__name__}")
            grammar = LLMatcher.grammar_from_json_schema(json.dumps(schema), overrides=JSON_LAYOUT)
        elif kind == "json_object":
            grammar = LLMatcher.grammar_from_json_schema('{"type": "object"}', overrides=JSON_LAYOUT)
        elif kind == "regex":
            if not isinstance(value, str):
                raise ValueError(f"must be a string, got {type(value).__name__}")
            grammar = LLMatcher.grammar_from_regex(value)
        elif kind == "choice":
            if not isinstance(value, list) or not value or not all(isinstance(c, str) and c for c in value):
                raise ValueError("must be a non-empty list of non-empty strings")
            grammar = LLMatcher.grammar_from_regex("|".join(f"({re.escape(c)})" for c in value))
        else:
            if not isinstance(value, str) or not value.strip():
                raise ValueError("must be a non-empty Lark grammar")
            grammar = LLMatcher.grammar_from_lark(value)
    except Exception as e:  # ours above, a JSON decode error, or the library's own parse error
        raise ValueError(f"{name}: {e}") from None
    error = LLMatcher.validate_grammar(grammar, None)
    if error:
        lines = error.strip().splitlines()  # the first says where; an "error:" line, if any, says what
        raise ValueError(f"{name}: does not compile: " + " ".join(
            [lines[0].rstrip(":")] + [l.strip() for l in lines[1:] if l.startswith("error:")]))
    return grammar
