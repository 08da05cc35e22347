"""sparsegate gateway."""
