"""The simulated model: how a prompt is counted, what text comes back, and how long it takes.

Token counting (cheap, deterministic, and an upper bound the gateway can rely on):

- a text counts ``ceil(utf8_bytes / 4)`` tokens;
- a chat prompt counts, per message, the text tokens of its ``content`` plus 4, and 3 more for the reply
  prime. Only ``content`` counts: a string, or the ``text`` of ``{"type": "text"}`` parts; roles, names,
  tool calls and images count nothing beyond the 4;
- a completions prompt counts its text tokens plus 1 (BOS); a list of token ids counts its length.

Hence a prompt never counts more than its UTF-8 bytes plus 8 per message (chat; at least one message is
required) or plus 8 (completions text), because ``ceil(b / 4) <= b`` for every ``b >= 0``. The gateway's
conservative estimate depends on this bound: keep it when changing the rule.

Generated text: one word is one token. The words come from a PRNG seeded with sha256 of the prompt key
and the choice index, so the same prompt gives the same text on every worker and every run, whatever
``--seed`` says (``--seed`` only drives the fault dice). Without ``max_tokens`` a choice has a natural
length of 8..64 tokens and ends with ``finish_reason="stop"``; a smaller ``max_tokens`` (or the room left
in the context) cuts it with ``"length"``. Stop strings truncate the text before the match, with
``"stop"``; the tokens that formed the match still count as generated, as in SGLang.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

FinishReason = Literal["stop", "length", "abort"]

# Short, plain words: any stop string a test picks from them is easy to reason about.
VOCAB: tuple[str, ...] = (
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel",
    "india", "juliet", "kilo", "lima", "mike", "november", "oscar", "papa",
    "quebec", "romeo", "sierra", "tango", "uniform", "victor", "whiskey", "xray",
    "yankee", "zulu", "amber", "basalt", "cobalt", "dune", "ember", "fjord",
    "garnet", "harbor", "iris", "jade", "kelp", "lagoon", "maple", "nectar",
    "opal", "pine", "quartz", "reef", "slate", "tundra", "umber", "vale",
    "willow", "yarrow", "zephyr", "acorn", "birch", "cedar", "dahlia", "elm",
    "fern", "grove", "heath", "ivy", "juniper", "knoll", "larch", "moss",
)  # fmt: skip

EOS_TOKEN_ID = 151329
"""GLM's `<|endoftext|>`: what a natural stop reports as `matched_stop`, as SGLang reports the matched token."""
NATURAL_MIN_TOKENS = 8
NATURAL_MAX_TOKENS = 64
CHAT_TOKENS_PER_MESSAGE = 4
CHAT_REPLY_PRIME_TOKENS = 3
COMPLETION_BOS_TOKENS = 1


def text_tokens(text: str) -> int:
    """Tokens of one text: ``ceil(utf8_bytes / 4)``."""
    return math.ceil(len(text.encode("utf-8")) / 4)


def chat_prompt_tokens(contents: Sequence[str]) -> int:
    """Tokens of a chat prompt whose messages carry these contents (see the module docstring)."""
    per_message = sum(text_tokens(content) + CHAT_TOKENS_PER_MESSAGE for content in contents)
    return per_message + CHAT_REPLY_PRIME_TOKENS


def completion_prompt_tokens(text: str) -> int:
    """Tokens of a completions prompt given as text."""
    return text_tokens(text) + COMPLETION_BOS_TOKENS


@dataclass(frozen=True, slots=True)
class ToolCallPlan:
    """The choice is a call of function `name`; its pieces are the arguments' JSON text."""

    id: str
    name: str


@dataclass(frozen=True, slots=True)
class ChoicePlan:
    """One choice's output, decided before any time passes: the text of each token, and how it ends.

    A piece can be empty: tokens that belong to a matched stop string are generated but not shown.
    """

    pieces: tuple[str, ...]
    finish_reason: FinishReason
    matched_stop: str | int | None = None
    """The stop string matched, or the end-of-turn token id of a natural stop (SGLang's FINISH_MATCHED_TOKEN)."""
    tool_call: ToolCallPlan | None = None
    seed_key: str = ""
    """What this choice's logprobs are derived from."""
    reasoning: int = 0
    """How many leading pieces are reasoning (with a reasoning parser): `reasoning_content`, not `content`."""

    @property
    def text(self) -> str:
        """The whole visible text."""
        return "".join(self.pieces)

    @property
    def tokens(self) -> int:
        """Completion tokens this choice generates when it runs to its end."""
        return len(self.pieces)


def choice_key(prompt_key: str, index: int, seed: int | None = None) -> str:
    """What seeds choice `index`'s output: the prompt, the index, and the request's `seed` when it gave one."""
    base = f"{index}\x00{prompt_key}"
    return base if seed is None else f"seed={seed}\x00{base}"


def choice_rng(key: str) -> random.Random:
    """A PRNG seeded by a choice key."""
    return random.Random(int.from_bytes(hashlib.sha256(key.encode()).digest()[:16], "big"))


def _words(prompt_key: str, index: int, seed: int | None = None) -> tuple[int, Iterable[str]]:
    digest = hashlib.sha256(choice_key(prompt_key, index, seed).encode()).digest()
    rng = random.Random(int.from_bytes(digest[:16], "big"))
    natural = rng.randint(NATURAL_MIN_TOKENS, NATURAL_MAX_TOKENS)

    def stream() -> Iterable[str]:
        while True:
            yield rng.choice(VOCAB)

    return natural, stream()


def plan_choice(
    prompt_key: str,
    index: int,
    *,
    max_tokens: int | None,
    room: int,
    stop: Sequence[str] = (),
    ignore_eos: bool = False,
    seed: int | None = None,
) -> ChoicePlan:
    """Decide the output of choice `index` for a prompt.

    `room` is what the context has left after the prompt; `ignore_eos` (an SGLang extension) makes the
    choice run to `max_tokens` instead of its natural length, as load benchmarks want. A `seed` picks
    other words, repeatably.
    """
    key = choice_key(prompt_key, index, seed)
    natural, words = _words(prompt_key, index, seed)
    limit = natural
    finish: FinishReason = "stop"
    if max_tokens is not None and (ignore_eos or max_tokens < natural):
        limit, finish = max_tokens, "length"
    if room < limit:
        limit, finish = max(room, 0), "length"

    stops = [s for s in stop if s]
    longest_stop = max((len(s) for s in stops), default=0)
    pieces: list[str] = []
    text = ""
    for position, word in zip(range(limit), words, strict=False):
        piece = word if position == 0 else " " + word
        scan_from = max(0, len(text) - longest_stop + 1)
        pieces.append(piece)
        text += piece
        match = _earliest_stop(text, stops, scan_from)
        if match is not None:
            cut, matched = match
            return ChoicePlan(_truncate(pieces, cut), "stop", matched, seed_key=key)
    return ChoicePlan(tuple(pieces), finish, EOS_TOKEN_ID if finish == "stop" else None, seed_key=key)


def plan_text(
    text: str,
    *,
    max_tokens: int | None,
    room: int,
    seed_key: str,
    tool_call: ToolCallPlan | None = None,
) -> ChoicePlan:
    """A choice that emits fixed `text` (JSON of a schema, a tool call's arguments), about 4 bytes a token.

    Cut with `"length"` when `max_tokens` or the context runs out first, as a constrained decoder would be.
    """
    pieces = _split_tokens(text)
    limit = len(pieces) if max_tokens is None else min(len(pieces), max_tokens)
    limit = min(limit, max(room, 0))
    finish: FinishReason = "stop" if limit == len(pieces) else "length"
    matched = EOS_TOKEN_ID if finish == "stop" else None
    return ChoicePlan(tuple(pieces[:limit]), finish, matched, tool_call=tool_call, seed_key=seed_key)


def _split_tokens(text: str) -> list[str]:
    pieces: list[str] = []
    current = ""
    for char in text:
        current += char
        if len(current.encode("utf-8")) >= 4:
            pieces.append(current)
            current = ""
    if current or not pieces:
        pieces.append(current)
    return pieces


def _earliest_stop(text: str, stops: Sequence[str], scan_from: int) -> tuple[int, str] | None:
    best: tuple[int, str] | None = None
    for candidate in stops:
        at = text.find(candidate, scan_from)
        if at >= 0 and (best is None or at < best[0]):
            best = (at, candidate)
    return best


def _truncate(pieces: Sequence[str], cut: int) -> tuple[str, ...]:
    # Keep every token (they were generated) but hide text from the stop string on.
    kept: list[str] = []
    offset = 0
    for piece in pieces:
        visible = max(0, min(len(piece), cut - offset))
        kept.append(piece[:visible])
        offset += len(piece)
    return tuple(kept)


@dataclass(frozen=True, slots=True)
class TimingModel:
    """How long things take: prefill grows with the prompt, decode slows with the batch."""

    ttft_base_ms: float
    ttft_per_1k_prompt_tokens_ms: float
    itl_ms: float
    itl_per_running_ms: float

    def ttft_s(self, prompt_tokens: int) -> float:
        """Seconds from admission to the first token."""
        return (self.ttft_base_ms + self.ttft_per_1k_prompt_tokens_ms * prompt_tokens / 1000) / 1000

    def itl_s(self, running: int) -> float:
        """Seconds between two tokens while `running` requests decode together."""
        return (self.itl_ms + self.itl_per_running_ms * running) / 1000
