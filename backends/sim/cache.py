"""A bounded prefix cache: which prompt prefixes a worker still holds, so repeated prefixes skip prefill.

SGLang's radix cache keeps the KV of prompts it has seen and evicts least recently used entries; a new
prompt's matched prefix is reported as `cached_tokens` and is not computed again. This keeps the part that
shows outside the worker: prompts are cut into fixed blocks of tokens, each block named by a hash chained
over every block before it (so a block only matches behind the same prefix), and whole blocks are kept in
LRU order up to a token budget. As in SGLang, the last prompt token is always computed, so at most
`prompt_tokens - 1` tokens count as cached.

A prompt's "tokens" here are 4-byte slices of its canonical text, the same unit `model.text_tokens` counts.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

BYTES_PER_TOKEN = 4


class PrefixCache:
    """LRU of prefix blocks of `block_tokens` tokens, holding at most `capacity_tokens` tokens."""

    def __init__(self, capacity_tokens: int, block_tokens: int = 16) -> None:
        if block_tokens < 1:
            raise ValueError(f"block_tokens must be at least 1, got {block_tokens}")
        self.block_tokens = block_tokens
        self.capacity_blocks = max(0, capacity_tokens // block_tokens)
        self._blocks: OrderedDict[bytes, None] = OrderedDict()
        self.hit_tokens = 0
        self.lookup_tokens = 0

    def _chain(self, prompt_key: str) -> list[bytes]:
        data = prompt_key.encode("utf-8")
        size = self.block_tokens * BYTES_PER_TOKEN
        chain: list[bytes] = []
        digest = b""
        for start in range(0, len(data) - size + 1, size):
            digest = hashlib.blake2b(digest + data[start : start + size], digest_size=16).digest()
            chain.append(digest)
        return chain

    def match(self, prompt_key: str, prompt_tokens: int) -> int:
        """Cached tokens of this prompt now (and mark its matched blocks as recently used)."""
        matched = 0
        for block in self._chain(prompt_key):
            if block not in self._blocks:
                break
            self._blocks.move_to_end(block)
            matched += 1
        cached = max(0, min(matched * self.block_tokens, prompt_tokens - 1))
        self.hit_tokens += cached
        self.lookup_tokens += prompt_tokens
        return cached

    def insert(self, prompt_key: str) -> None:
        """Keep this prompt's blocks (after its prefill), evicting the least recently used beyond capacity."""
        if self.capacity_blocks == 0:
            return
        for block in self._chain(prompt_key):
            self._blocks[block] = None
            self._blocks.move_to_end(block)
        while len(self._blocks) > self.capacity_blocks:
            self._blocks.popitem(last=False)

    def hit_rate(self) -> float:
        """Share of looked-up prompt tokens that were cached, since start."""
        return self.hit_tokens / self.lookup_tokens if self.lookup_tokens else 0.0

    def __len__(self) -> int:
        return len(self._blocks)
