"""DSA kernel benchmark at GLM-5 shapes: each op beside its naive twin and the public Triton fallbacks.

    python3 bench/kernels.py [--quick] [--out DIR]

Needs a CUDA GPU. Prints one table per op, then the whole decode step (indexer -> top-k -> slots -> sparse MLA,
replayed as a CUDA graph) at contexts 8K..128K against dense MLA over the whole context: measured with our kernel
over every slot, and its read-bound floor. Every "% floor" is floor time / measured time, the floor being the larger
of (fewest bytes / measured copy bandwidth) and (FLOPs / measured matmul peak, fp8 or bf16 as the op's dots are).
Times are medians of `triton.testing.do_bench` (which flushes L2 before each run) over replays of a CUDA graph
holding one call, so they are kernel time as the serving engine's decode graphs see it; the naive twins, which sync
to the host, are timed eagerly. With --out, writes the tables
(kernels_bench.md), the raw rows (kernels_bench.json) and the plot (kernels_decode_step.png) there.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib
import json
import os
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
import triton

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.kernels.dsa_inputs, bench.kernels_baselines

from bench.kernels_baselines import load_sglang, load_vllm_paged_logits, load_vllm_ragged_torch
from sparsegate.kernels.dsa import indexer as indexer_module
from sparsegate.kernels.dsa import naive as twin
from sparsegate.kernels.dsa import (
    paged_mqa_logits,
    quantize_fp8_blocks,
    ragged_mqa_logits,
    slots_from_positions,
    sparse_mla,
    topk_indices,
    write_index_k,
    write_mla_kv,
)
from sparsegate.kernels.dsa import topk as topk_module
from sparsegate.kernels.dsa._configs import allowed_configs, assume_capability
from sparsegate.kernels.dsa._layout import MLA_ROW_BYTES, PAGE_SIZE
from tests.kernels.dsa_inputs import (
    block_table,
    head_weights,
    index_pages,
    index_queries,
    mla_cache,
    mla_queries,
)

SM_SCALE = 256**-0.5
TOPK = 2048
INDEX_HEADS = 32
ADA = (8, 9)
mla_module = importlib.import_module("sparsegate.kernels.dsa.sparse_mla")  # the package re-exports the function
two_pass = importlib.import_module("sparsegate.kernels.dsa.sparse_mla_two_pass")


def describe(config: triton.Config | None) -> str:
    """A config as `BLOCK_H=64 BLOCK_N=16 DEQUANT=True num_splits=4 w8 s3`."""
    if config is None:
        return "-"
    knobs = " ".join(f"{k}={v}" for k, v in config.kwargs.items())
    return f"{knobs} w{config.num_warps} s{config.num_stages}"


def ada_selects(config: triton.Config | None, candidates: list, estimate: object, hopper_only: list) -> str:
    """yes / no: whether the sm_89 filter keeps a config with this tile (the split count is free on both)."""
    if config is None:
        return "-"
    tile = {k: v for k, v in config.kwargs.items() if k != "num_splits"}
    for c in allowed_configs(candidates, ADA, estimate, hopper_only):  # type: ignore[arg-type]
        if c.kwargs == tile and (c.num_warps, c.num_stages) == (config.num_warps, config.num_stages):
            return "yes"
    return "no"


def mla_ran() -> tuple[str, str]:
    """The sparse-MLA config(s) of the latest call, with ptxas's registers and spills, and whether Ada selects it."""
    if mla_module.last_path() == "two-pass":
        (scores_cfg, scores_k), (values_cfg, values_k) = two_pass.last_launch()
        ada = all(
            ada_selects(cfg, cands, est, hopper) == "yes"
            for cfg, cands, est, hopper in (
                (scores_cfg, two_pass.SCORES_CANDIDATES, two_pass.scores_shared_memory, two_pass.SCORES_HOPPER_ONLY),
                (values_cfg, two_pass.VALUES_CANDIDATES, two_pass.values_shared_memory, two_pass.VALUES_HOPPER_ONLY),
            )
        )
        return (
            f"two-pass: scores {describe(scores_cfg)}, {_regs(scores_k)}; values {describe(values_cfg)},"
            f" {_regs(values_k)}",
            "yes" if ada else "no",
        )
    config, compiled = mla_module.last_launch()
    ada_sel = ada_selects(
        config,
        mla_module.SPARSE_MLA_CANDIDATES,
        mla_module.sparse_mla_shared_memory,
        mla_module.SPARSE_MLA_HOPPER_ONLY,
    )
    return f"split-K: {describe(config)}, {_regs(compiled)}", ada_sel


def _regs(compiled: object) -> str:
    return f"{getattr(compiled, 'n_regs', '?')} regs, {getattr(compiled, 'n_spills', '?')} B spilled"


@dataclass
class Ceilings:
    copy_gbs: float
    bf16_tflops: float
    fp8_tflops: float


@dataclass
class Row:
    op: str
    shape: str
    impl: str
    ms: float
    rate: str
    floor_ms: float
    note: str = ""
    config: str = "-"  # the config or tile that ran (autotuner's choice), with registers and spills where known
    ada: str = "-"  # whether Ada (sm_89, <= 99 KiB shared memory, no spills) can select that config

    def __post_init__(self) -> None:  # progress as it comes, so a run cut short still shows what it measured
        print(
            f"  {self.op} | {self.shape} | {self.impl} | {self.ms:.4f} ms | {self.pct_floor:.0f}% of floor"
            f" | {self.config} | Ada: {self.ada}",
            flush=True,
        )

    @property
    def pct_floor(self) -> float:
        return 100.0 * self.floor_ms / self.ms if self.ms > 0 else 0.0


def median_ms(fn: Callable[[], object], slow: bool = False) -> float:
    if slow:  # naive twins with Python loops: a few timed runs are plenty
        fn()
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(2):
            fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 2
    return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))


def capture_graph(fn: Callable[[], object]) -> torch.cuda.CUDAGraph:
    """A CUDA graph of one call of `fn`, after one eager call so compilation and autotuning stay outside it."""
    fn()
    torch.cuda.synchronize()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(stream):
        fn()
        with torch.cuda.graph(graph, stream=stream):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    return graph


def op_ms(fn: Callable[[], object]) -> float:
    """Kernel time: replay of a CUDA graph of one call, as the serving engine runs decode (no Python launch cost).
    Falls back to eager timing for a callable that cannot be captured."""
    try:
        graph = capture_graph(fn)
    except RuntimeError as exc:
        print(f"  (not capturable, timed eagerly: {str(exc)[:80]})", flush=True)
        torch.cuda.synchronize()
        return median_ms(fn)
    return median_ms(graph.replay)


def measure_ceilings() -> Ceilings:
    n = 1 << 28  # 1 GiB of float32
    src = torch.randn(n, device="cuda")
    dst = torch.empty_like(src)
    copy_ms = median_ms(partial(dst.copy_, src))
    a = torch.randn(8192, 8192, device="cuda").to(torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda").to(torch.bfloat16)
    mm_ms = median_ms(partial(torch.matmul, a, b))
    a8, b8 = a.to(torch.float8_e4m3fn), b.to(torch.float8_e4m3fn)
    one = torch.ones((), device="cuda")
    fp8_ms = median_ms(partial(torch._scaled_mm, a8, b8.t(), scale_a=one, scale_b=one, out_dtype=torch.bfloat16))
    flops = 2 * 8192**3
    return Ceilings(2 * 4 * n / copy_ms / 1e6, flops / mm_ms / 1e9, flops / fp8_ms / 1e9)


def floor_ms(ceil: Ceilings, nbytes: float, flops: float = 0.0, fp8: bool = False) -> float:
    peak = ceil.fp8_tflops if fp8 else ceil.bf16_tflops
    return max(nbytes / ceil.copy_gbs / 1e6, flops / peak / 1e9 if flops else 0.0)


def rate(nbytes: float, flops: float, ms: float) -> str:
    if flops:
        return f"{flops / ms / 1e9:.0f} TFLOP/s"
    return f"{nbytes / ms / 1e6:.0f} GB/s"


def bench_writers(ceil: Ceilings, quick: bool) -> list[Row]:
    gen = torch.Generator(device="cuda").manual_seed(0)
    rows: list[Row] = []
    for tokens in (32, 16384):
        latent = torch.randn(tokens, 512, generator=gen, device="cuda").to(torch.bfloat16)
        rope = torch.randn(tokens, 64, generator=gen, device="cuda").to(torch.bfloat16)
        k = torch.randn(tokens, 128, generator=gen, device="cuda").to(torch.bfloat16)
        cache = torch.zeros(tokens * 2, MLA_ROW_BYTES, dtype=torch.uint8, device="cuda")
        pages = torch.zeros(tokens * 2 // PAGE_SIZE + 1, 8448, dtype=torch.uint8, device="cuda")
        slots = torch.randperm(tokens * 2, generator=gen, device="cuda")[:tokens]
        mla_bytes = tokens * (1024 + 128 + 8 + MLA_ROW_BYTES)
        idx_bytes = tokens * (256 + 8 + 132)
        q_bytes = tokens * (1024 + 512 + 16)
        cases = [
            ("write_mla_kv", mla_bytes, write_mla_kv, twin.naive_write_mla_kv, (cache, latent, rope, slots)),
            ("write_index_k", idx_bytes, write_index_k, twin.naive_write_index_k, (pages, k, slots)),
            ("quantize_fp8_blocks", q_bytes, quantize_fp8_blocks, twin.naive_quantize_fp8_blocks, (latent,)),
        ]
        for op, nbytes, ours, naive, op_args in cases:
            ms = op_ms(partial(ours, *op_args))
            fl = floor_ms(ceil, nbytes)
            rows.append(Row(op, f"T={tokens}", "ours", ms, rate(nbytes, 0, ms), fl))
            if tokens <= 32:  # the twins write token by token from Python: minutes at prefill sizes
                naive_ms = median_ms(partial(naive, *op_args), slow=op != "quantize_fp8_blocks")
                rows.append(Row(op, f"T={tokens}", "naive twin", naive_ms, rate(nbytes, 0, naive_ms), fl))
    return rows


def bench_indexer(ceil: Ceilings, quick: bool) -> tuple[list[Row], dict[str, torch.Tensor]]:
    gen = torch.Generator(device="cuda").manual_seed(1)
    rows: list[Row] = []
    batch, context = 32, 131072
    pages_per_request = context // PAGE_SIZE
    pages = index_pages(batch * pages_per_request, "cuda", gen)
    table = block_table(batch, pages_per_request, pages.shape[0], "cuda", gen)
    vllm = load_vllm_paged_logits()
    keep: dict[str, torch.Tensor] = {}
    for next_n in (1, 2):
        q = index_queries((batch, next_n, INDEX_HEADS), "cuda", gen)
        weights = head_weights(batch * next_n, INDEX_HEADS, "cuda", gen)
        lens = torch.full((batch,), context, dtype=torch.int32, device="cuda")
        shape = f"B={batch} next_n={next_n} H={INDEX_HEADS} ctx=128K"
        nbytes = batch * context * 132 + batch * next_n * context * 4
        flops = 2 * batch * next_n * INDEX_HEADS * context * 128
        fl = floor_ms(ceil, nbytes, flops, fp8=True)
        ms = op_ms(partial(paged_mqa_logits, q, pages, weights, lens, table, context))
        config = indexer_module._paged_mqa_logits_kernel.best_config
        ada = ada_selects(config, indexer_module.PAGED_CANDIDATES, indexer_module.paged_shared_memory, [])
        rows.append(Row("paged_mqa_logits", shape, "ours", ms, rate(nbytes, 0, ms), fl, "", describe(config), ada))
        if vllm is not None:
            out = torch.empty(batch * next_n, context, device="cuda")
            vllm_ms = op_ms(partial(vllm, q, pages, weights, lens, table, context, out))
            rows.append(Row("paged_mqa_logits", shape, "vLLM 0.33 Triton", vllm_ms, rate(nbytes, 0, vllm_ms), fl))
        if next_n == 1:
            keep["logits"] = paged_mqa_logits(q, pages, weights, lens, table, context)
            keep["lens"] = lens
            if not quick:
                naive = partial(twin.naive_paged_mqa_logits, q, pages, weights, lens, table, context)
                naive_ms = median_ms(naive, slow=True)
                rows.append(Row("paged_mqa_logits", shape, "naive twin", naive_ms, rate(nbytes, 0, naive_ms), fl))

    m = n = 4096 if quick else 8192
    q = index_queries((m, INDEX_HEADS), "cuda", gen)
    k = index_queries((n,), "cuda", gen)
    k_scale = torch.rand(n, generator=gen, device="cuda") + 0.5
    weights = head_weights(m, INDEX_HEADS, "cuda", gen)
    ks = torch.zeros(m, dtype=torch.int32, device="cuda")
    ke = torch.arange(1, m + 1, dtype=torch.int32, device="cuda")
    shape = f"M=N={m} causal H={INDEX_HEADS}"
    flops = 2 * INDEX_HEADS * 128 * m * (m + 1) / 2
    nbytes = m * n * 4 + m * INDEX_HEADS * 128 + n * 132
    fl = floor_ms(ceil, nbytes, flops, fp8=True)
    ms = op_ms(partial(ragged_mqa_logits, q, k, k_scale, weights, ks, ke))
    config = indexer_module._ragged_mqa_logits_kernel.best_config
    ada = ada_selects(
        config, indexer_module.RAGGED_CANDIDATES, indexer_module.ragged_shared_memory, indexer_module.RAGGED_HOPPER_ONLY
    )
    rows.append(Row("ragged_mqa_logits", shape, "ours", ms, rate(nbytes, flops, ms), fl, "", describe(config), ada))
    vllm_torch = load_vllm_ragged_torch()
    if vllm_torch is not None:
        torch_ms = median_ms(partial(vllm_torch, q, (k, k_scale), weights, ks, ke), slow=True)
        rows.append(
            Row(
                "ragged_mqa_logits",
                shape,
                "vLLM 0.33 torch fallback",
                torch_ms,
                rate(nbytes, flops, torch_ms),
                fl,
                "no Triton kernel in the release",
            )
        )
    naive_ms = median_ms(partial(twin.naive_ragged_mqa_logits, q, k, k_scale, weights, ks, ke), slow=True)
    rows.append(Row("ragged_mqa_logits", shape, "naive twin", naive_ms, rate(nbytes, flops, naive_ms), fl))
    keep["prefill_logits"] = ragged_mqa_logits(q, k, k_scale, weights, ks, ke)
    keep["prefill_lens"] = ke
    return rows, keep


def bench_topk(ceil: Ceilings, keep: dict[str, torch.Tensor], quick: bool) -> list[Row]:
    rows: list[Row] = []
    for name, logits, lens in (
        ("decode", keep["logits"], keep["lens"]),
        ("prefill", keep["prefill_logits"], keep["prefill_lens"]),
    ):
        r, n = logits.shape
        shape = f"{name} R={r} N={n} k={TOPK}"
        nbytes = r * n * 4 + r * TOPK * 4
        fl = floor_ms(ceil, nbytes)
        ms = op_ms(partial(topk_indices, logits, lens, TOPK))
        cap = torch.cuda.get_device_capability()
        if r >= torch.cuda.get_device_properties(0).multi_processor_count:
            path = f"row kernel: a program a row, ROW_BLOCK={topk_module.ROW_BLOCK} in registers"
            path += f", w{topk_module.row_warps(cap)}"
        else:
            path = f"split: compact CHUNK={topk_module.CHUNK} + select CANDIDATES={topk_module.CANDIDATES}"
            path += f", w{topk_module.topk_warps(cap)}"
        rows.append(Row("topk_indices", shape, "ours", ms, rate(nbytes, 0, ms), fl, "", path, "yes (same kernels)"))
        torch_ms = op_ms(partial(torch.topk, logits, TOPK, dim=1, sorted=False))
        rows.append(
            Row("topk_indices", shape, "torch.topk", torch_ms, rate(nbytes, 0, torch_ms), fl, "not length-aware")
        )
        if name == "decode":  # the prefill twin loops over 8192 rows in Python: ten minutes
            naive_ms = median_ms(partial(twin.naive_topk_indices, logits, lens, TOPK), slow=True)
            rows.append(Row("topk_indices", shape, "naive twin", naive_ms, rate(nbytes, 0, naive_ms), fl))
    positions = topk_indices(keep["logits"], keep["lens"], TOPK)
    table = torch.randint(0, 1 << 20, (positions.shape[0], 2048), dtype=torch.int32, device="cuda")
    nbytes = positions.numel() * 8 + table.numel() * 4
    ms = op_ms(partial(slots_from_positions, positions, table))
    rows.append(
        Row(
            "slots_from_positions",
            f"R={positions.shape[0]} k={TOPK}",
            "ours",
            ms,
            rate(nbytes, 0, ms),
            floor_ms(ceil, nbytes),
        )
    )
    naive_ms = median_ms(partial(twin.naive_slots_from_positions, positions, table))
    rows.append(
        Row(
            "slots_from_positions",
            f"R={positions.shape[0]} k={TOPK}",
            "naive twin",
            naive_ms,
            rate(nbytes, 0, naive_ms),
            floor_ms(ceil, nbytes),
        )
    )
    return rows


def _mla_flops(tokens: int, heads: int, topk: int) -> float:
    return 2.0 * tokens * heads * topk * (576 + 512)


def bench_sparse_mla(ceil: Ceilings, quick: bool) -> list[Row]:
    gen = torch.Generator(device="cuda").manual_seed(2)
    rows: list[Row] = []
    num_slots = 1 << 20  # 656 MiB of rows: far past L2, so gathers hit memory as at 128K contexts
    kv = mla_cache(num_slots, "cuda", gen)
    kv576_fp8 = kv[:, :576].contiguous().view(torch.float8_e4m3fn).view(num_slots, 1, 576)  # sglang's raw layout
    kv576_bf16 = torch.cat(twin.read_mla_kv(kv, torch.arange(num_slots, device="cuda")), dim=-1).to(torch.bfloat16)
    sglang = load_sglang()
    shapes = [(32, 64), (32, 8), (32, 16), (1, 64), (4096, 64), (4096, 16)]
    if quick:
        shapes = [(32, 64), (32, 8), (4096, 64)]
    for tokens, heads in shapes:
        q = mla_queries(tokens, heads, "cuda", gen)
        idx = torch.randint(0, num_slots, (tokens, TOPK), generator=gen, device="cuda", dtype=torch.int32)
        phase = "decode" if tokens < 1024 else "prefill"
        shape = f"{phase} T={tokens} H={heads} topk={TOPK}"
        flops = _mla_flops(tokens, heads, TOPK)
        nbytes = tokens * TOPK * MLA_ROW_BYTES + tokens * heads * (576 + 512) * 2
        fl = floor_ms(ceil, nbytes, flops)
        for selection, capability in (("Hopper configs", None), ("Ada's configs, run here", ADA)):
            with assume_capability(capability) if capability else contextlib.nullcontext():
                ms = op_ms(partial(sparse_mla, q, kv, idx, SM_SCALE))
                config, ada = mla_ran()
            impl = f"ours (656-B FP8 rows), {selection}"
            rows.append(
                Row("sparse_mla", shape, impl, ms, f"{rate(nbytes, 0, ms)}, {rate(0, flops, ms)}", fl, "", config, ada)
            )
        if sglang is not None:
            fused, decode, prefill = sglang
            q_nope, q_rope = q[..., :512], q[..., 512:]
            idx3 = idx.unsqueeze(1)
            sg_bytes = tokens * TOPK * 576 + tokens * heads * (576 + 512) * 2
            fp8_args = (q_nope, q_rope, kv576_fp8, idx3, SM_SCALE)
            variants = [
                (
                    "sglang 0.5.23 triton prefill, bf16 rows",
                    partial(prefill.sparse_mla_prefill, q, kv576_bf16, idx, SM_SCALE),
                    tokens * TOPK * 1152,
                ),
            ]
            if phase == "decode":  # its fused single-pass path (T >= #SMs) autotunes 1-warp configs for gfx950
                fwd = partial(fused.triton_sparse_mla_fwd, *fp8_args)
                split_k = partial(decode.triton_sparse_mla_decode_splitk, *fp8_args)
                variants.append(("sglang 0.5.23 triton, FP8 576-B rows", fwd, sg_bytes))
                variants.append(("sglang 0.5.23 triton decode split-K, FP8", split_k, sg_bytes))
            for label, fn, their_bytes in variants:
                try:
                    their_ms = op_ms(fn)
                except Exception as exc:  # a fallback that cannot run here is reported, not hidden
                    rows.append(
                        Row(
                            "sparse_mla", shape, label, float("nan"), "failed", fl, f"{type(exc).__name__}: {exc}"[:120]
                        )
                    )
                    continue
                rows.append(
                    Row(
                        "sparse_mla",
                        shape,
                        label,
                        their_ms,
                        rate(their_bytes, flops, their_ms),
                        floor_ms(ceil, their_bytes, flops),
                    )
                )
        if tokens <= 32 or not quick:
            naive_ms = median_ms(partial(twin.naive_sparse_mla, q, kv, idx, SM_SCALE), slow=True)
            rows.append(Row("sparse_mla", shape, "naive twin", naive_ms, rate(nbytes, flops, naive_ms), fl))
    return rows


def bench_decode_step(ceil: Ceilings, quick: bool) -> list[dict[str, object]]:
    gen = torch.Generator(device="cuda").manual_seed(3)
    batch = 32
    results: list[dict[str, object]] = []
    contexts = [8192, 32768, 131072] if quick else [8192, 16384, 32768, 65536, 131072]
    for context in contexts:
        pages_per_request = context // PAGE_SIZE
        pages = index_pages(batch * pages_per_request, "cuda", gen)
        kv = mla_cache(pages.shape[0] * PAGE_SIZE, "cuda", gen)
        table = block_table(batch, pages_per_request, pages.shape[0], "cuda", gen)
        q_index = index_queries((batch, 1, INDEX_HEADS), "cuda", gen)
        weights = head_weights(batch, INDEX_HEADS, "cuda", gen)
        lens = torch.full((batch,), context, dtype=torch.int32, device="cuda")
        every_position = torch.arange(context, device="cuda", dtype=torch.int32).expand(batch, -1).contiguous()
        dense_slots = slots_from_positions(every_position, table)
        dense_floor = floor_ms(ceil, batch * context * MLA_ROW_BYTES)
        index_floor = floor_ms(ceil, batch * context * 132 + batch * context * 4)
        for heads in (64, 8):  # all of GLM-5's heads, and one rank's at TP=8 (the Ada deployment)
            q = mla_queries(batch, heads, "cuda", gen)
            step = partial(_decode_step, q_index, pages, weights, lens, table, context, q, kv)
            step_ms = op_ms(step)
            mla_config, mla_ada = mla_ran()
            ada_ms, ada_config = float("nan"), ""
            if context == contexts[-1]:  # the same step with the sparse-MLA configs Ada selects
                with assume_capability(ADA):
                    ada_ms = op_ms(step)
                    ada_config, _ = mla_ran()
            dense_ms = op_ms(partial(sparse_mla, q, kv, dense_slots, SM_SCALE))
            mla_floor = floor_ms(ceil, batch * TOPK * MLA_ROW_BYTES, _mla_flops(batch, heads, TOPK))
            print(f"  decode step ctx={context} H={heads}: DSA {step_ms:.3f} ms, dense {dense_ms:.3f} ms", flush=True)
            results.append(
                {
                    "context": context,
                    "heads": heads,
                    "dsa_step_ms": step_ms,
                    "dsa_floor_ms": index_floor + mla_floor,
                    "dense_ms": dense_ms,
                    "dense_floor_ms": max(dense_floor, _mla_flops(batch, heads, context) / ceil.bf16_tflops / 1e9),
                    "mla_config": f"{mla_config} (Ada: {mla_ada})",
                    "ada_step_ms": ada_ms,
                    "ada_mla_config": ada_config,
                }
            )
    return results


def _decode_step(q_index, pages, weights, lens, table, context, q, kv) -> object:  # type: ignore[no-untyped-def]
    logits = paged_mqa_logits(q_index, pages, weights, lens, table, context)
    slots = slots_from_positions(topk_indices(logits, lens, TOPK), table)
    return sparse_mla(q, kv, slots, SM_SCALE)


def render(rows: list[Row], steps: list[dict[str, Any]], ceil: Ceilings, header: str) -> str:
    ceilings = (
        f"Ceilings measured here: copy {ceil.copy_gbs:.0f} GB/s, bf16 matmul {ceil.bf16_tflops:.0f} TFLOP/s, "
        f"fp8 matmul {ceil.fp8_tflops:.0f} TFLOP/s."
    )
    lines = [header, "", ceilings, ""]
    for op in dict.fromkeys(r.op for r in rows):
        lines += [
            f"#### {op}",
            "",
            "| shape | impl | time (ms) | rate | floor (ms) | % of floor | ours faster by | config that ran "
            "| Ada selects it |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in (r for r in rows if r.op == op):
            ours = next((x for x in rows if x.op == op and x.shape == r.shape and x.impl.startswith("ours")), None)
            speedup = f"{r.ms / ours.ms:.2f}x" if ours and r is not ours and r.ms == r.ms else ""
            note = f" ({r.note})" if r.note else ""
            cells = [r.shape, r.impl + note, f"{r.ms:.4f}", r.rate, f"{r.floor_ms:.4f}", f"{r.pct_floor:.0f}%", speedup]
            lines.append("| " + " | ".join([*cells, r.config, r.ada]) + " |")
        lines.append("")
    lines += [
        "#### decode step (B=32, 32 index heads, top-k 2048): indexer -> top-k -> slots -> sparse MLA, CUDA graph",
        "",
        "| context | heads | DSA step (ms) | DSA floor (ms) | % of floor | dense MLA, ours over all slots (ms) "
        "| dense floor (ms) | DSA vs dense measured | DSA vs dense floor | sparse-MLA config in the step |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in steps:
        cells = [
            f"{int(s['context']) // 1024}K",
            f"{int(s['heads'])}",
            f"{s['dsa_step_ms']:.3f}",
            f"{s['dsa_floor_ms']:.3f}",
            f"{100 * s['dsa_floor_ms'] / s['dsa_step_ms']:.0f}%",
            f"{s['dense_ms']:.3f}",
            f"{s['dense_floor_ms']:.3f}",
            f"{s['dense_ms'] / s['dsa_step_ms']:.1f}x",
            f"{s['dense_floor_ms'] / s['dsa_step_ms']:.2f}x",
            str(s["mla_config"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
        if s["ada_step_ms"] == s["ada_step_ms"]:  # measured for the longest context only
            ada_ms = float(s["ada_step_ms"])
            cells = [cells[0], cells[1] + ", Ada's configs", f"{ada_ms:.3f}", cells[3]]
            cells += [f"{100 * float(s['dsa_floor_ms']) / ada_ms:.0f}%", "", "", "", "", str(s["ada_mla_config"])]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(steps: list[dict[str, Any]], path: Path, device: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for heads, marker in ((64, "o"), (8, "^")):
        rows = [s for s in steps if s["heads"] == heads]
        ctx = [s["context"] // 1024 for s in rows]
        ax.plot(ctx, [s["dsa_step_ms"] for s in rows], marker + "-", label=f"DSA decode step, H={heads} (ours)")
        ax.plot(ctx, [s["dense_ms"] for s in rows], marker + "--", label=f"dense MLA over all slots, H={heads} (ours)")
    rows = [s for s in steps if s["heads"] == 64]
    ctx = [s["context"] // 1024 for s in rows]
    ax.plot(ctx, [s["dsa_floor_ms"] for s in rows], "k:", label="DSA floor, H=64")
    ax.plot(ctx, [s["dense_floor_ms"] for s in rows], "r:", label="dense MLA floor (reads every row), H=64")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(ctx, [f"{c}K" for c in ctx])
    ax.set_xlabel("context (tokens)")
    ax.set_ylabel("ms per layer, batch 32")
    ax.set_title(f"GLM-5 attention per layer: DSA vs dense MLA ({device})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer shapes, skip the slowest twins")
    parser.add_argument("--out", type=Path, default=None, help="folder for kernels_bench.{md,json} and the plot")
    parser.add_argument("--only", default="", help="comma list of sections: writers,indexer,topk,mla,step")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2
    sections = set(args.only.split(",")) if args.only else {"writers", "indexer", "topk", "mla", "step"}
    device = torch.cuda.get_device_name()
    header = (
        f"{datetime.date.today()} on {device}, torch {torch.__version__}, triton {triton.__version__}: "
        f"`python3 bench/kernels.py{' --quick' if args.quick else ''}`"
    )
    ceil = measure_ceilings()
    rows: list[Row] = []
    steps: list[dict[str, Any]] = []
    if "writers" in sections:
        rows += bench_writers(ceil, args.quick)
    if {"indexer", "topk"} & sections:
        indexer_rows, keep = bench_indexer(ceil, args.quick)
        rows += indexer_rows
        if "topk" in sections:
            rows += bench_topk(ceil, keep, args.quick)
        del keep
    if "mla" in sections:
        rows += bench_sparse_mla(ceil, args.quick)
    torch.cuda.empty_cache()
    if "step" in sections:
        steps = bench_decode_step(ceil, args.quick)
    text = render(rows, steps, ceil, header)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "kernels_bench.md").write_text(text)
        raw = {
            "header": header,
            "ceilings": asdict(ceil),
            "rows": [asdict(r) | {"pct_floor": r.pct_floor} for r in rows],
            "steps": steps,
        }
        (args.out / "kernels_bench.json").write_text(json.dumps(raw, indent=1))
        if steps:
            plot(steps, args.out / "kernels_decode_step.png", device)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    sys.exit(main())
