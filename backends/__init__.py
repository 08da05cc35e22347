"""sparsegate backends."""
