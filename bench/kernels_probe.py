"""Exploration on a GPU, to choose defaults: every sparse-MLA config per shape (for Hopper and as Ada would
select), top-k paths, and the previous kernels of a given file beside the current ones.

    python3 bench/kernels_probe.py [--old DIR] [--only mla,topk,indexer] [--shapes 32x64,1x64] [--paths two-pass]

--old DIR: a folder holding earlier `sparse_mla.py` / `topk.py` (as `sparse_mla_main.py`, `topk_main.py`), timed
beside the current ones. Every variant is checked (top-k against torch.topk's values, sparse MLA against its
twin), then timed as a CUDA graph replay (kernel time without Python launch cost). docs/kernels.md records what
it showed.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from types import ModuleType

import torch
import triton

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.kernels import capture_graph, measure_ceilings
from bench.kernels_baselines import load_sglang
from sparsegate.kernels.dsa import naive as twin
from sparsegate.kernels.dsa import paged_mqa_logits, ragged_mqa_logits
from sparsegate.kernels.dsa import topk as topk_module
from sparsegate.kernels.dsa._configs import assume_capability
from sparsegate.kernels.dsa._layout import MLA_ROW_BYTES, PAGE_SIZE
from tests.kernels.dsa_inputs import block_table, head_weights, index_pages, index_queries, mla_cache, mla_queries

mla = importlib.import_module("sparsegate.kernels.dsa.sparse_mla")
two_pass = importlib.import_module("sparsegate.kernels.dsa.sparse_mla_two_pass")
SM_SCALE = 256**-0.5
ADA = (8, 9)


def graph_ms(fn: Callable[[], object]) -> float:
    graph = capture_graph(fn)
    return float(triton.testing.do_bench(graph.replay, warmup=10, rep=60, return_mode="median"))


def load_old(folder: Path | None, name: str) -> ModuleType | None:
    path = folder / f"{name}_main.py" if folder else None
    if path is None or not path.exists():
        return None
    spec = importlib.util.spec_from_file_location(f"old_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.float() - ref.float()).norm() / ref.float().norm())


def _compiled_report(label: str, name: str) -> str:
    launches = {"split-K": mla.last_launch()[1], "scores": two_pass.last_launch()[0][1]}
    compiled = launches.get(label, launches["scores"] if "scores" in name else two_pass.last_launch()[1][1])
    return f"regs {getattr(compiled, 'n_regs', '?')} spills {getattr(compiled, 'n_spills', '?')}"


def probe_sparse_mla(
    ceil: object, old: ModuleType | None, shapes: list[tuple[int, int]], paths: tuple[str, ...]
) -> None:
    gen = torch.Generator(device="cuda").manual_seed(7)
    num_slots = 1 << 20
    kv = mla_cache(num_slots, "cuda", gen)
    sglang = load_sglang()
    kv576 = kv[:, :576].contiguous().view(torch.float8_e4m3fn).view(num_slots, 1, 576)
    for tokens, heads in shapes:
        q = mla_queries(tokens, heads, "cuda", gen)
        idx = torch.randint(0, num_slots, (tokens, 2048), generator=gen, device="cuda", dtype=torch.int32)
        check = min(tokens, 4)
        ref, ref_lse = twin.naive_sparse_mla(q[:check], kv, idx[:check], SM_SCALE)
        flops = 2.0 * tokens * heads * 2048 * 1088
        nbytes = tokens * 2048 * MLA_ROW_BYTES + tokens * heads * 1088 * 2
        floor = max(nbytes / ceil.copy_gbs / 1e6, flops / ceil.bf16_tflops / 1e9)  # type: ignore[attr-defined]
        sms = torch.cuda.get_device_properties(0).multi_processor_count
        variants = [
            ("split-K", partial(mla.split_k_sparse_mla, multiprocessors=sms), [mla._sparse_mla_kernel]),
            ("two-pass", partial(two_pass.two_pass_sparse_mla, multiprocessors=sms),
             [two_pass._mla_scores_kernel, two_pass._mla_values_kernel]),
            ("sparse_mla", mla.sparse_mla, []),
        ]  # fmt: skip
        if tokens == 1:
            variants = [v for v in variants if v[0] != "two-pass"]
        variants = [v for v in variants if v[0] in paths]
        for arch in ("hopper", "ada"):
            for label, fn, kernels in variants:
                for kernel in kernels:
                    kernel.cache.clear()
                try:
                    with assume_capability(ADA) if arch == "ada" else contextlib.nullcontext():
                        out, lse = fn(q, kv, idx, SM_SCALE)
                        ms = graph_ms(partial(fn, q, kv, idx, SM_SCALE))
                except Exception as exc:  # report and go on: one broken variant must not end the probe
                    print(f"  sparse_mla T={tokens} H={heads} {arch} {label}: FAILED {type(exc).__name__}: {exc}")
                    continue
                err, lerr = rel_err(out[:check], ref), rel_err(lse[:check], ref_lse)
                print(
                    f"  sparse_mla T={tokens} H={heads} {arch} {label}: {ms * 1000:.1f} us,"
                    f" {100 * floor / ms:.0f}% of floor ({floor * 1000:.1f} us), err {err:.1e}/{lerr:.1e}",
                    flush=True,
                )
                for kernel in kernels:
                    name = kernel.fn.__name__
                    cfg = kernel.best_config
                    print(f"      ran {name}: {cfg} {_compiled_report(label, name)}", flush=True)
                    timings = getattr(kernel, "configs_timings", None) or {}
                    ranked = sorted(
                        ((float(v[0] if isinstance(v, list | tuple) else v), str(c)) for c, v in timings.items())
                    )
                    for t, c in ranked[:5]:
                        print(f"      {t * 1000:8.1f} us  {c}")
        if sglang is not None:
            fused, decode, prefill = sglang
            q_nope, q_rope = q[..., :512], q[..., 512:]
            if tokens <= 32:
                fn = partial(decode.triton_sparse_mla_decode_splitk, q_nope, q_rope, kv576, idx.unsqueeze(1), SM_SCALE)
                print(f"  sparse_mla T={tokens} H={heads} sglang fp8 split-K: {graph_ms(fn) * 1000:.1f} us", flush=True)
                fn = partial(fused.triton_sparse_mla_fwd, q_nope, q_rope, kv576, idx.unsqueeze(1), SM_SCALE)
                print(f"  sparse_mla T={tokens} H={heads} sglang fp8 fused: {graph_ms(fn) * 1000:.1f} us", flush=True)
            else:
                bf16 = torch.cat(twin.read_mla_kv(kv, torch.arange(num_slots, device="cuda")), dim=-1).bfloat16()
                fn = partial(prefill.sparse_mla_prefill, q, bf16, idx, SM_SCALE)
                print(
                    f"  sparse_mla T={tokens} H={heads} sglang bf16 prefill: {graph_ms(fn) * 1000:.1f} us", flush=True
                )
                del bf16


def probe_indexer_topk(ceil: object, old: ModuleType | None) -> None:
    gen = torch.Generator(device="cuda").manual_seed(8)
    batch, context = 32, 131072
    pages = index_pages(batch * context // PAGE_SIZE, "cuda", gen)
    table = block_table(batch, context // PAGE_SIZE, pages.shape[0], "cuda", gen)
    lens = torch.full((batch,), context, dtype=torch.int32, device="cuda")
    decode_logits = None
    for next_n in (1, 2):
        q = index_queries((batch, next_n, 32), "cuda", gen)
        w = head_weights(batch * next_n, 32, "cuda", gen)
        nbytes = batch * context * 132 + batch * next_n * context * 4
        ms = graph_ms(partial(paged_mqa_logits, q, pages, w, lens, table, context))
        floor = nbytes / ceil.copy_gbs / 1e6  # type: ignore[attr-defined]
        best = paged_mqa_logits.__globals__["_paged_mqa_logits_kernel"].best_config
        print(f"  paged next_n={next_n}: {ms * 1000:.1f} us, {100 * floor / ms:.0f}% of floor, {best}", flush=True)
        if next_n == 1:
            decode_logits = paged_mqa_logits(q, pages, w, lens, table, context)
    del pages
    m = 8192
    qr = index_queries((m, 32), "cuda", gen)
    kr = index_queries((m,), "cuda", gen)
    prefill_logits = ragged_mqa_logits(
        qr, kr, torch.rand(m, device="cuda") + 0.5, head_weights(m, 32, "cuda", gen),
        torch.zeros(m, dtype=torch.int32, device="cuda"), torch.arange(1, m + 1, dtype=torch.int32, device="cuda"),
    )  # fmt: skip
    cases = [
        ("decode 32x128K", decode_logits, lens),
        ("prefill 8192x8192 causal", prefill_logits, torch.arange(1, m + 1, dtype=torch.int32, device="cuda")),
        (
            "prefill 8192x8192 full",
            prefill_logits.clamp_min(-1e30),
            torch.full((m,), m, dtype=torch.int32, device="cuda"),
        ),
        ("decode 32x128K randn", torch.randn(32, 131072, device="cuda"), lens),
    ]
    for name, logits, row_lens in cases:
        assert logits is not None
        want = None
        for label, module in (("new", topk_module), ("old", old)):
            if module is None:
                continue
            got = module.topk_indices(logits, row_lens, 2048)
            valid = got >= 0
            vals = torch.where(valid, logits.gather(1, got.clamp_min(0).long()), float("-inf")).sort(dim=1).values
            if want is None:
                hidden = torch.arange(logits.shape[1], device="cuda") >= row_lens[:, None]
                want = torch.topk(logits.masked_fill(hidden, float("-inf")), 2048, dim=1).values.sort(dim=1).values
            ok = torch.equal(vals, want)
            ms = graph_ms(partial(module.topk_indices, logits, row_lens, 2048))
            print(f"  topk {name} {label}: {ms * 1000:.1f} us {'ok' if ok else 'WRONG'}", flush=True)
        ms = graph_ms(partial(torch.topk, logits, 2048, dim=1, sorted=False))
        print(f"  topk {name} torch.topk: {ms * 1000:.1f} us", flush=True)


def ncu_target(tokens: int, heads: int, spec: str) -> None:
    """One launch of one sparse-MLA config, without the autotuner, for Nsight Compute: spec is
    `BLOCK_H,BLOCK_N,DEQUANT,num_splits,warps,stages`."""
    bh, bn, dq, splits, warps, stages = (int(x) for x in spec.split(","))
    gen = torch.Generator(device="cuda").manual_seed(9)
    kv = mla_cache(1 << 20, "cuda", gen)
    q = mla_queries(tokens, heads, "cuda", gen)
    idx = torch.randint(0, 1 << 20, (tokens, 2048), generator=gen, device="cuda", dtype=torch.int32)
    out = torch.empty(tokens, heads, 512, dtype=torch.bfloat16, device="cuda")
    lse = torch.empty(tokens, heads, device="cuda")
    part = torch.empty(tokens * splits * heads * 512, device="cuda")
    part_lse = torch.empty(tokens * splits * heads, device="cuda")
    grid = (triton.cdiv(heads, bh), splits, tokens)
    for _ in range(3):
        mla._sparse_mla_kernel.fn[grid](
            q, kv.view(torch.float8_e4m3fn), kv.view(torch.float32), kv.view(torch.bfloat16), idx, out, lse,
            part, part_lse, SM_SCALE * 1.4426950408889634, heads, 2048, q.stride(0), q.stride(1),
            idx.stride(0), 32, splits, 90, splits, PARTIAL=splits > 1, ROW_BYTES=656,
            SCALE_OFFSET=512, ROPE_OFFSET=528, LATENT=512, TILES=4, ROPE=64, BLOCK_H=bh, BLOCK_N=bn,
            DEQUANT=bool(dq), num_warps=warps, num_stages=stages,
        )  # fmt: skip
    torch.cuda.synchronize()
    ref, _ = twin.naive_sparse_mla(q[:2], kv, idx[:2], SM_SCALE)
    print(f"  ncu target T={tokens} H={heads} {spec}: err {rel_err(out[:2], ref):.1e}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", type=Path, default=None)
    parser.add_argument("--only", default="mla,topk")
    parser.add_argument("--shapes", default="32x64,32x8,32x16,1x64,4096x64", help="sparse MLA T x H list")
    parser.add_argument("--paths", default="split-K,two-pass,sparse_mla", help="sparse MLA paths to time")
    parser.add_argument("--ncu", default="", help="T,H,BLOCK_H,BLOCK_N,DEQUANT,splits,warps,stages: one launch")
    args = parser.parse_args()
    if args.ncu:
        tokens, heads, spec = args.ncu.split(",", 2)
        ncu_target(int(tokens), int(heads), spec)
        return 0
    print(torch.cuda.get_device_name(), "torch", torch.__version__, "triton", triton.__version__, flush=True)
    ceil = measure_ceilings()
    print(f"  ceilings: {ceil}", flush=True)
    only = set(args.only.split(","))
    if "topk" in only:
        probe_indexer_topk(ceil, load_old(args.old, "topk"))
    if "mla" in only:
        shapes = [(int(t), int(h)) for t, h in (x.split("x") for x in args.shapes.split(","))]
        probe_sparse_mla(ceil, load_old(args.old, "sparse_mla"), shapes, tuple(args.paths.split(",")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
