"""sparsegate kernels."""
