"""Reading a request: the body under the size limit from ASGI `receive`, strict JSON, and the request models.

Nothing a client can send gets a 500: invalid UTF-8, lone surrogates, nesting deeper than orjson's limit and numbers
out of range all fail orjson's parse and become a 400 in OpenAI's envelope; wrong types (`"max_tokens": "16"`,
`"stream": "yes"`) fail the strict request models (protocol.py).
"""

from __future__ import annotations

import re
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError

from sparsegate.gateway.context import mint_id
from sparsegate.gateway.errors import InvalidRequest, RequestTooLarge
from sparsegate.gateway.wire import Receive

_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class ClientDisconnected(Exception):
    """The client left before its request body was read."""


def request_id_of(headers: dict[str, str]) -> str:
    """Accept the caller's `x-request-id` when it is safe to log and echo; otherwise mint one."""
    given = headers.get("x-request-id")
    if given and _SAFE_REQUEST_ID.match(given):
        return given
    return mint_id("req")


async def read_body(receive: Receive, headers: dict[str, str], limit: int) -> bytes:
    """The whole body, refused with 413 as soon as it is (declared or turns out) larger than `limit`."""
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestTooLarge(f"The request body is {int(declared)} bytes; the limit is {limit} bytes.")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise RequestTooLarge(f"The request body exceeds the limit of {limit} bytes.")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def parse_object(body: bytes) -> dict[str, Any]:
    if not body:
        raise InvalidRequest("The request body is empty; expected a JSON object.")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"We could not parse the JSON body of your request: {exc}.") from None
    if not isinstance(data, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    return data


M = TypeVar("M", bound=BaseModel)


def validate(model: type[M], data: dict[str, Any]) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = []
        param = None
        for err in exc.errors(include_url=False, include_input=False):
            loc = ".".join(str(p) for p in err.get("loc", ()))
            if param is None and err.get("loc"):
                param = str(err["loc"][0])
            problems.append(f"{loc or 'body'}: {err.get('msg')}")
        raise InvalidRequest("Invalid request: " + "; ".join(problems[:5]), param=param) from None
