"""Deterministic log-probabilities for the tokens a simulated choice emits, in SGLang's two wire shapes.

Each emitted piece is one token. Its logprob and its top alternatives come from a hash of (the choice's
seed key, the position), so the same request always reports the same numbers on every worker. The chosen
token is always the most likely one (greedy), and the alternatives are distinct vocabulary words with
strictly lower logprobs.

- chat (`ChoiceLogprobs`): `{"content": [{"token", "bytes", "logprob", "top_logprobs": [{"token", "bytes",
  "logprob"}]}]}`, `top_logprobs` empty when the request asked for none;
- completions (`LogProbs`): `{"text_offset", "token_logprobs", "tokens", "top_logprobs"}`, where each
  `top_logprobs` entry is a `{token: logprob}` dict, or null when none were asked for.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .model import VOCAB


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """One token's logprob and its `top` alternatives (the token itself first)."""

    token: str
    logprob: float
    top: tuple[tuple[str, float], ...]


def token_logprobs(key: str, start: int, pieces: Sequence[str], top_n: int) -> list[TokenLogprob]:
    """Logprobs of `pieces`, the tokens at positions `start`, `start + 1`, ... of the choice keyed `key`."""
    result: list[TokenLogprob] = []
    for offset, piece in enumerate(pieces):
        digest = hashlib.sha256(f"{key}\x00{start + offset}".encode()).digest()
        # Greedy pick: a probability in (0.35, 0.99), so logprob in (-1.05, -0.01).
        chosen = math.log(0.35 + 0.64 * digest[0] / 255)
        alternatives: list[tuple[str, float]] = [(piece, round(chosen, 6))]
        used = {piece.strip()}
        step = 0
        while len(alternatives) < top_n:
            word = VOCAB[(digest[1 + step % 30] + step * 7) % len(VOCAB)]
            step += 1
            if word in used:
                continue
            used.add(word)
            previous = alternatives[-1][1]
            alternatives.append((" " + word if piece.startswith(" ") else word, round(previous - 0.5 - step / 8, 6)))
        result.append(TokenLogprob(piece, alternatives[0][1], tuple(alternatives[:top_n])))
    return result


def _bytes(token: str) -> list[int]:
    return list(token.encode("utf-8"))


def chat_logprobs(items: Sequence[TokenLogprob], top_n: int) -> dict[str, Any]:
    """SGLang's `ChoiceLogprobs` for these tokens."""
    return {
        "content": [
            {
                "token": item.token,
                "bytes": _bytes(item.token),
                "logprob": item.logprob,
                "top_logprobs": [
                    {"token": token, "bytes": _bytes(token), "logprob": logprob} for token, logprob in item.top[:top_n]
                ],
            }
            for item in items
        ]
    }


def completion_logprobs(items: Sequence[TokenLogprob], top_n: int, text_offset: int) -> dict[str, Any]:
    """SGLang's `LogProbs` for these tokens; `text_offset` is where the first one starts in the text."""
    offsets: list[int] = []
    position = text_offset
    for item in items:
        offsets.append(position)
        position += len(item.token)
    return {
        "text_offset": offsets,
        "token_logprobs": [item.logprob for item in items],
        "tokens": [item.token for item in items],
        "top_logprobs": [dict(item.top[:top_n]) if top_n else None for item in items],
    }
