"""ASGI plumbing for the hot path: message types and header lists, without starlette's Request/Response objects."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def header_map(scope: Scope) -> dict[str, str]:
    """The request's headers as a dict with lowercase names (ASGI already lowercases them); the last one wins."""
    return {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}


def raw_headers(headers: dict[str, str], length: int | None = None) -> list[tuple[bytes, bytes]]:
    raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    if length is not None:
        raw.append((b"content-length", str(length).encode()))
    return raw
