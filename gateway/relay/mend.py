"""Where SGLang 0.5.23's answer differs from OpenAI's, the relay mends it here, cheaply.

- **Ids with n > 1.** SGLang expands the rid into `rid_0 … rid_{n-1}` (`io_struct._normalize_rid`) and uses each as
  the id of its choice's chunks, and `rid_0` as the non-streamed body's id. OpenAI gives one id per answer, so
  `"id":"<rid>_<i>"` becomes `"id":"<rid>"`: one `bytes.find` per event, the id being the first key SGLang writes.
- **Nulls OpenAI's schema rejects.** Chunks that SGLang serializes through pydantic (tool-call deltas) carry
  `delta.role: null`, and its `UsageInfo` carries `prompt_tokens_details: null` / `completion_tokens_details: null`.
  The keys are removed by byte replacement: inside a JSON string every quote is escaped, so `"role":null` can only
  be a key and its value. (bench/relay_mend.py measures the cost per event.)
- **Worker error events.** `{"error": {"object": "error", "type": "SERVICE_UNAVAILABLE", "code": 503, ...}}`
  becomes the gateway's own error (errors.py), rendered in OpenAI's envelope with OpenAI's types.
- **Aborts.** n > 1 runs as n requests on the worker, and `/abort_request` with the base rid matches none of
  them (`TokenizerManager.abort_request` returns early), so every sample's rid is aborted.
"""

from __future__ import annotations

from typing import Any

from sparsegate.gateway.errors import UpstreamStreamError, client_message

_ROLE_NULL = b'"role":null'
_DETAILS_NULL = b'_tokens_details":null'
_DETAILS_KEYS = (b'"prompt_tokens_details":null', b'"completion_tokens_details":null')
_NULL_FIELDS = ("prompt_tokens_details", "completion_tokens_details")


def worker_choices(n: int, prompt: object = None) -> tuple[int, bool]:
    """How many choices SGLang runs for a request, and whether it expands the rid into one per choice.

    `GenerateReqInput` (io_struct) is a batch when the prompt is a list of prompts (even of one) or when n > 1;
    a batch's string rid becomes `rid_0 … rid_{batch × n - 1}` (`_normalize_rid`)."""
    if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int):
        return len(prompt) * n, True
    return n, n > 1


def sample_rids(rid: str, n: int, expanded: bool) -> list[str]:
    """The rids a worker runs for one request of `n` choices."""
    return [f"{rid}_{i}" for i in range(n)] if expanded else [rid]


class Mender:
    """Rewrites one answer's events, or its whole body, into OpenAI's shape without parsing JSON."""

    __slots__ = ("_id_prefix",)

    def __init__(self, rid: str, expanded: bool) -> None:
        # Unexpanded, the worker's id is the rid already.
        self._id_prefix = b'"id":"' + rid.encode() + b"_" if expanded else b""

    def event(self, data: bytes) -> bytes:
        prefix = self._id_prefix
        if prefix:
            start = data.find(prefix)
            if start >= 0:
                end = data.find(b'"', start + len(prefix))
                if end > 0:
                    data = data[: start + len(prefix) - 1] + data[end:]
        # Two searches on the common path: SGLang's text chunks carry neither (but do carry other nulls).
        if _ROLE_NULL in data:
            data = _drop(data, _ROLE_NULL)
        if _DETAILS_NULL in data:
            for key in _DETAILS_KEYS:
                if key in data:
                    data = _drop(data, key)
        return data


def _drop(data: bytes, member: bytes) -> bytes:
    """Remove an object member (`"key":null`) with the comma that joins it to its neighbour."""
    return data.replace(member + b",", b"").replace(b"," + member, b"").replace(member, b"")


def mend_usage(usage: dict[str, Any]) -> None:
    """Drop the `*_tokens_details: null` that OpenAI's schema rejects (a parsed usage object, in place)."""
    for name in _NULL_FIELDS:
        if name in usage and usage[name] is None:
            del usage[name]


def mend_body(obj: dict[str, Any], rid: str, expanded: bool) -> bool:
    """Mend a parsed non-streamed answer in place; True when it changed."""
    changed = False
    if expanded and isinstance(obj.get("id"), str) and obj["id"].startswith(rid + "_"):
        obj["id"] = rid
        changed = True
    usage = obj.get("usage")
    if isinstance(usage, dict) and any(name in usage and usage[name] is None for name in _NULL_FIELDS):
        mend_usage(usage)
        changed = True
    return changed


def worker_stream_error(payload: Any) -> UpstreamStreamError:
    """A worker's mid-stream error event (`{"error": ErrorResponse}`: integer `code`, SGLang's `type`) as ours."""
    message, status = "The worker failed while streaming.", 502
    if isinstance(payload, dict):
        if isinstance(payload.get("message"), str) and payload["message"]:
            message = client_message(payload["message"])
        code = payload.get("code")
        if isinstance(code, int) and not isinstance(code, bool) and 400 <= code < 600:
            status = code
        elif isinstance(code, str) and code.isdigit() and 400 <= int(code) < 600:
            status = int(code)
    return UpstreamStreamError(message, worker_status=status)


__all__ = ["Mender", "mend_body", "mend_usage", "sample_rids", "worker_choices", "worker_stream_error"]
