"""The analysis stage, free of jax: results store, fits, bit-optimal k, figures, report."""
