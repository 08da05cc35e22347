"""Exploration on a GPU, to choose defaults: top-k paths x radix widths, and the autotuned sparse MLA per shape.

    python3 bench/kernels_probe.py

Every variant is checked (top-k against torch.topk's values, sparse MLA against its twin), then timed as a CUDA
graph replay (kernel time without Python launch cost). docs/kernels.md records what it showed.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.kernels import capture_graph
from sparsegate.kernels.dsa import naive as twin
from sparsegate.kernels.dsa import topk as topk_module
from sparsegate.kernels.dsa._layout import MLA_ROW_BYTES
from tests.kernels.dsa_inputs import mla_cache, mla_queries

mla = importlib.import_module("sparsegate.kernels.dsa.sparse_mla")
SM_SCALE = 256**-0.5


def graph_ms(fn: Callable[[], object]) -> float:
    graph = capture_graph(fn)
    return float(triton.testing.do_bench(graph.replay, warmup=10, rep=50, return_mode="median"))


def probe_sparse_mla() -> None:
    gen = torch.Generator(device="cuda").manual_seed(7)
    num_slots = 1 << 20
    kv = mla_cache(num_slots, "cuda", gen)
    for tokens, heads in ((32, 64), (32, 8), (32, 16), (1, 64), (128, 8), (4096, 64), (4096, 16)):
        q = mla_queries(tokens, heads, "cuda", gen)
        idx = torch.randint(0, num_slots, (tokens, 2048), generator=gen, device="cuda", dtype=torch.int32)
        out, _ = mla.sparse_mla(q, kv, idx, SM_SCALE)
        ref, _ = twin.naive_sparse_mla(q[:4], kv, idx[:4], SM_SCALE)
        err = float((out[:4].float() - ref.float()).norm() / ref.float().norm())
        ms = graph_ms(partial(mla.sparse_mla, q, kv, idx, SM_SCALE))
        floor = max(tokens * 2048 * MLA_ROW_BYTES / 2.998e9, 2.0 * tokens * heads * 2048 * 1088 / 778e12 * 1e3)
        best = mla._sparse_mla_kernel.best_config
        shown = f"{ms * 1000:.1f} us, {100 * floor / ms:.0f}% of floor, err {err:.1e}"
        print(f"  sparse_mla T={tokens} H={heads}: {shown}, {best}", flush=True)


def probe_topk() -> None:
    gen = torch.Generator(device="cuda").manual_seed(8)
    for rows, width in ((32, 131072), (8192, 8192), (128, 65536)):
        logits = torch.randn(rows, width, generator=gen, device="cuda")
        lens = torch.full((rows,), width, dtype=torch.int32, device="cuda")
        want = torch.topk(logits, 2048, dim=1).values.sort(dim=1).values
        for bits in (5, 8):
            topk_module.RADIX_BITS = bits
            for path, sms in (("row", 1), ("split", 1 << 20)):
                topk_module.sm_count = lambda _t, sms=sms: sms  # force the path
                got = topk_module.topk_indices(logits, lens, 2048)
                ok = torch.equal(logits.gather(1, got.long()).sort(dim=1).values, want)
                ms = graph_ms(partial(topk_module.topk_indices, logits, lens, 2048))
                print(f"  topk R={rows} N={width} radix{bits} {path}: {ms * 1000:.1f} us {'ok' if ok else 'WRONG'}")
        ms = graph_ms(partial(torch.topk, logits, 2048, dim=1, sorted=False))
        print(f"  topk R={rows} N={width} torch.topk: {ms * 1000:.1f} us", flush=True)


def main() -> int:
    probe_topk()
    probe_sparse_mla()
    return 0


if __name__ == "__main__":
    sys.exit(main())
