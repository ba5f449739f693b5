"""kbit-jax: k-bit inference scaling laws in JAX."""
