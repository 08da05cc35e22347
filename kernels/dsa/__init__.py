"""DSA sparse-attention kernels in Triton with FP8, for Ada (sm_89) and up. The contract is ../shared/DSA.md §4.

Each op has a float32 twin `naive_<op>` in `sparsegate.kernels.dsa.naive`, the oracle of the tests. The decode-path
ops (`paged_mqa_logits`, `topk_indices`, `slots_from_positions`, `sparse_mla`) read lengths on the device only and
size their grids from shapes, so they capture in CUDA graphs.
"""

from sparsegate.kernels.dsa.indexer import paged_mqa_logits, ragged_mqa_logits
from sparsegate.kernels.dsa.quantize import quantize_fp8_blocks, write_index_k, write_mla_kv
from sparsegate.kernels.dsa.sparse_mla import sparse_mla
from sparsegate.kernels.dsa.topk import slots_from_positions, topk_indices

__all__ = [
    "paged_mqa_logits",
    "quantize_fp8_blocks",
    "ragged_mqa_logits",
    "slots_from_positions",
    "sparse_mla",
    "topk_indices",
    "write_index_k",
    "write_mla_kv",
]
