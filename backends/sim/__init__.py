"""sparsegate backends/sim."""
