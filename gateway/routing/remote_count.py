"""Exact prompt counts without a tokenizer file: ask a worker's `/v1/tokenize`, and remember the answers.

Without `tokenizer.json` the gateway counts one token per UTF-8 byte (`tokens.py`), about 4-5x the real count for
English. That is harmless while the estimate still fits the smallest pool, but past it a prompt is sent to a larger
pool than it needs, or refused. Every SGLang worker can tokenize with the model's own tokenizer, so when routing
depends on it the router asks one (`Router.count_for_plan`).

What is asked is the token count of each text the estimate would count (each message's content, names, tool-call
arguments, the tools' JSON, completions prompts), as one batched `{"prompt": [texts], "add_special_tokens": false}`.
The framing stays the estimate's (`ESTIMATE_PER_MESSAGE` per message and so on), which is more than any supported
chat template adds and also absorbs the token or so a text can differ by when encoded inside its template. So the
count stays a safe upper bound, just no longer a 4x one.

Counts are cached per (model, text hash) in a bounded LRU: a multi-turn chat resends its whole history every turn,
and only the new turn's texts reach the worker. Any failure (no healthy worker, timeout, an unexpected answer) gives
`None`, and the caller keeps the byte estimate; the count is advisory, so it never moves a worker's breaker.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import httpx

from .tokens import Messages, Prompt, TokenCounter, utf8_len

log = logging.getLogger(__name__)

# A tokenize call is a few milliseconds of work on the worker; this only bounds a hung one.
TOKENIZE_TIMEOUT_S = 5.0
CACHE_ENTRIES = 65_536


def text_prompts(prompt: Prompt) -> list[str]:
    """The texts of a completions prompt (none for token ids)."""
    if isinstance(prompt, str):
        return [prompt]
    return [p for p in prompt if isinstance(p, str)]


class _Recorder(TokenCounter):
    """The estimate, noting every text it counts."""

    def __init__(self) -> None:
        super().__init__(None)
        self.texts: list[str] = []

    def _count_texts(self, texts: Sequence[str]) -> int:
        self.texts.extend(texts)
        return sum(utf8_len(t) for t in texts)

    def _count_prompt(self, prompt: Prompt) -> int:
        self.texts.extend(text_prompts(prompt))
        return super()._count_prompt(prompt)


class _Lookup(TokenCounter):
    """The estimate's framing around counts already known for each text."""

    def __init__(self, counts: dict[str, int]) -> None:
        super().__init__(None)
        self._counts = counts

    def _count_texts(self, texts: Sequence[str]) -> int:
        return sum(self._counts[t] for t in texts)

    def _count_prompt(self, prompt: Prompt) -> int:
        texts = text_prompts(prompt)
        if not texts:
            return super()._count_prompt(prompt)  # token ids count exactly as they are
        return sum(self._counts[t] + 1 for t in texts)  # +1: the BOS a worker's tokenizer may add


class WorkerTokenCounter:
    """Counts through workers' `/v1/tokenize`, with a bounded per-text cache."""

    def __init__(self, http: httpx.AsyncClient, *, max_entries: int = CACHE_ENTRIES) -> None:
        self._http = http
        self._max = max_entries
        self._cache: OrderedDict[bytes, int] = OrderedDict()
        self.asked_texts = 0  # texts sent to a worker so far (tests read it to see the cache work)

    def __len__(self) -> int:
        return len(self._cache)

    @staticmethod
    def _key(model: str, text: str) -> bytes:
        return hashlib.blake2b(f"{model}\x00{text}".encode("utf-8", "surrogatepass"), digest_size=16).digest()

    async def count(
        self,
        workers: Sequence[str],
        model: str,
        *,
        messages: Messages | None = None,
        prompt: Prompt | None = None,
        tools: Any = None,
    ) -> int | None:
        """The prompt's count with worker-tokenized texts, or None when no worker answered."""
        recorder = _Recorder()
        recorder.count(messages=messages, prompt=prompt, tools=tools)
        counts: dict[str, int] = {}
        missing: list[str] = []
        for text in dict.fromkeys(recorder.texts):
            key = self._key(model, text)
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                counts[text] = cached
            elif text:
                missing.append(text)
            else:
                counts[text] = 0
        if missing:
            fetched = await self._ask(workers, model, missing)
            if fetched is None:
                return None
            for text, n in zip(missing, fetched, strict=True):
                counts[text] = n
                self._cache[self._key(model, text)] = n
            while len(self._cache) > self._max:
                self._cache.popitem(last=False)
        return _Lookup(counts).count(messages=messages, prompt=prompt, tools=tools)

    async def _ask(self, workers: Sequence[str], model: str, texts: list[str]) -> list[int] | None:
        body = {"model": model, "prompt": texts, "add_special_tokens": False}
        for worker in workers:
            try:
                async with asyncio.timeout(TOKENIZE_TIMEOUT_S):
                    response = await self._http.post(worker + "/v1/tokenize", json=body)
                answer = response.json() if response.status_code == 200 else None
            except (httpx.HTTPError, TimeoutError, ValueError) as exc:
                log.warning("tokenize on %s failed (%s); trying the next worker", worker, type(exc).__name__)
                continue
            count = answer.get("count") if isinstance(answer, dict) else None
            if isinstance(count, list) and len(count) == len(texts) and all(isinstance(n, int) for n in count):
                self.asked_texts += len(texts)
                return [int(n) for n in count]
            log.warning("tokenize on %s answered %s without a usable count", worker, response.status_code)
        return None
