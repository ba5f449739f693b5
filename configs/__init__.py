"""Experiment configs; installed as `kbit_jax.configs` (see setup.cfg)."""
