"""Server-Sent Events as the relay needs them: split a byte stream into events, and read only what it must.

The relay forwards events untouched. It parses an event's JSON only when the event carries something the gateway
has to act on (a usage block, a finish reason, an error), found first by a cheap byte search.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from sparsegate.gateway.record import cached_tokens_of

DONE_EVENT = b"data: [DONE]\n\n"
_USAGE_NULL = re.compile(rb'"usage"\s*:\s*null')
_CONTENT = re.compile(rb'"(?:content|text|reasoning_content)"\s*:\s*"(?!")|"tool_calls"\s*:\s*\[')


class EventSplitter:
    """Incremental SSE framing: feed raw bytes, get back complete events (without the blank-line terminator)."""

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        if b"\r" in chunk or self._buf.endswith(b"\r"):
            self._buf = (self._buf + chunk).replace(b"\r\n", b"\n")
        else:
            self._buf += chunk
        if b"\n\n" not in self._buf:
            return []
        *events, self._buf = self._buf.split(b"\n\n")
        return [e for e in events if e.strip()]

    def rest(self) -> bytes:
        """What is left unterminated when the stream ends (a truncated event)."""
        return self._buf.strip()


def event_data(event: bytes) -> bytes | None:
    """The joined `data:` payload of an event, or None for comment-only or field-only events."""
    if event.startswith(b"data: ") and b"\n" not in event:
        return event[6:]  # what SGLang sends: one `data: ` line per event
    lines = [line for line in event.split(b"\n") if line.startswith(b"data:")]
    if not lines:
        return None
    return b"\n".join(line[5:].removeprefix(b" ") for line in lines)


@dataclass
class StreamTally:
    """What a stream said about itself, learned as events pass.

    A worker's error event or a choice it ended with `finish_reason: "abort"` fails the stream: that event and
    everything after it is held back (the relay ends the stream with an error event of its own), while the usage
    the worker still reports is kept for settling.
    """

    wants_usage: bool
    usage: dict[str, int] | None = None
    finish_reasons: dict[int, str] = field(default_factory=dict)
    content_events: int = 0
    done: bool = False
    upstream_error: dict[str, Any] | None = None
    aborted: bool = False
    response_id: str | None = None

    @property
    def failed(self) -> bool:
        return self.upstream_error is not None or self.aborted

    def take(self, data: bytes) -> bytes | None:
        """Account for one event's data; return what to send on (possibly rewritten), or None to drop it."""
        if data == b"[DONE]":
            self.done = True
            return None
        failed = self.failed
        if self.response_id is None:
            self.response_id = _peek_id(data)
        if _plain_chunk(data):
            # The common case (SGLang's compact JSON, one choice still going, no usage): a few byte searches.
            if failed:
                return None
            if _has_content(data):
                self.content_events += 1
            return data
        if not failed and _CONTENT.search(data):
            self.content_events += 1
        needs_parse = (b'"usage"' in data and not _USAGE_NULL.search(data)) or b'"finish_reason":"' in data.replace(
            b'"finish_reason": "', b'"finish_reason":"'
        )
        if b'"error"' in data and b'"choices"' not in data:
            needs_parse = True
        if not needs_parse:
            return None if failed else data
        try:
            obj = json.loads(data)
        except ValueError:
            return None if failed else data
        if not isinstance(obj, dict):
            return None if failed else data
        if "error" in obj and "choices" not in obj:
            if not failed:
                self.upstream_error = obj["error"] if isinstance(obj["error"], dict) else {"message": str(obj["error"])}
            return None
        for choice in obj.get("choices") or []:
            if isinstance(choice, dict) and choice.get("finish_reason"):
                reason = str(choice["finish_reason"])
                self.finish_reasons[int(choice.get("index", 0))] = reason
                if reason == "abort":
                    self.aborted = True
        usage = obj.get("usage")
        if isinstance(usage, dict):
            self.usage = {k: int(v) for k, v in usage.items() if isinstance(v, int)}
            if cached := cached_tokens_of(usage):  # nested in prompt_tokens_details, so kept by name
                self.usage["cached_tokens"] = cached
        if self.failed:
            return None
        if isinstance(usage, dict) and not self.wants_usage:
            if not obj.get("choices"):
                return None  # the usage-only chunk the client did not ask for
            obj["usage"] = None
            return json.dumps(obj, separators=(",", ":")).encode()
        return data


_CONTENT_KEYS = (b'"content":"', b'"reasoning_content":"', b'"text":"')


def _plain_chunk(data: bytes) -> bool:
    """A compact chunk with one still-running choice and no usage or error: nothing to parse or rewrite."""
    return (
        b'"usage":null' in data
        and data.count(b'"finish_reason":') == 1
        and b'"finish_reason":null' in data
        and b'": ' not in data
        and b'"error"' not in data
    )


def _has_content(data: bytes) -> bool:
    for key in _CONTENT_KEYS:
        at = data.find(key)
        if at >= 0 and data[at + len(key) : at + len(key) + 1] != b'"':
            return True
    return b'"tool_calls":[' in data


_ID = re.compile(rb'"id"\s*:\s*"([^"]{1,200})"')


def _peek_id(data: bytes) -> str | None:
    match = _ID.search(data)
    return match.group(1).decode(errors="replace") if match else None


def frame(data: bytes) -> bytes:
    return b"data: " + data + b"\n\n"
