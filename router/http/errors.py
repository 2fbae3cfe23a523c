"""Every failure of the HTTP gateway as OpenAI's error shape, with the status the official client expects.

400 names the field (`param`, and the message starts with it, as the gRPC API's do), 401 a missing
or wrong key, 404 an unknown model or path, 413 a body over the limit, 429 the router's
`max_in_flight` (with Retry-After, which the official client honours), 503 a draining server or
no healthy replica. The openai client picks its exception class from the status alone.
"""
from __future__ import annotations

import re
from typing import Any

from pydantic import ValidationError

from shunter.errors import Overloaded, ReplicaUnavailable
from shunter.router.http.protocol import ErrorDetail, ErrorResponse

FIELD = re.compile(r"^([A-Za-z_][\w.\[\]]*):")  # "max_tokens: ..." / "messages[1].role: ..."


class ApiError(Exception):
    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> bytes:
        detail = ErrorDetail(message=self.message, type=self.type, param=self.param, code=self.code)
        return ErrorResponse(error=detail).model_dump_json().encode()


def invalid(message: str) -> ApiError:
    """A 400 whose `param` is the field the message starts with."""
    match = FIELD.match(message)
    return ApiError(400, message, param=match.group(1) if match else None)


def from_exception(e: Exception) -> ApiError:
    """The router's and the request checks' errors; anything else is the caller's to log as a 500."""
    if isinstance(e, ApiError):
        return e
    if isinstance(e, Overloaded):
        return ApiError(429, str(e), "rate_limit_error", code="server_overloaded", headers={"retry-after": "1"})
    if isinstance(e, ReplicaUnavailable):
        return ApiError(503, str(e), "service_unavailable_error")
    if isinstance(e, ValueError):
        return invalid(str(e))
    return ApiError(500, "internal error; the server logged it", "internal_error")


def from_validation(e: ValidationError) -> ApiError:
    """Pydantic's first error, named as the OpenAI field path (`messages[1].role`)."""
    errors = e.errors(include_url=False)
    first = errors[0]
    if first["type"] == "json_invalid":
        return ApiError(400, f"body: not valid JSON ({first['msg'].removeprefix('Invalid JSON: ')})", param="body")
    if first["type"] == "model_type" and not first["loc"]:
        return ApiError(400, "body: must be a JSON object", param="body")
    path = field_path(first["loc"])
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return ApiError(400, f"{path}: {_reason(first)}{more}", param=path)


def field_path(loc: tuple[Any, ...]) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "body"


def _reason(error: dict[str, Any]) -> str:
    if error["type"] == "extra_forbidden":
        return "not a field this server takes (OpenAI's supported fields, and priority, slo, top_k, ignore_eos, return_token_ids)"
    if error["type"] == "missing":
        return "required"
    msg = error["msg"].removeprefix("Value error, ")
    msg = msg[:1].lower() + msg[1:]
    if error["type"] == "value_error":
        return msg
    shown = repr(error.get("input"))
    return f"{msg}, got {shown if len(shown) <= 40 else shown[:37] + '...'}"
