"""sparsegate on SGLang 0.5.23 workers with Ada GPUs (sm_89).

- `plugin`: the `sglang.srt.plugins` entry point. Registers the DSA backend and routes the indexer, the top-k and
  the sparse MLA to `sparsegate.kernels.dsa` (modules `indexer`, `topk`, `mla`, `backend`).
- `flags` and `launch`: the server flags an Ada worker needs, and `python -m sparsegate.backends.sglang.launch`.

Importing this package imports neither sglang nor torch.
"""
