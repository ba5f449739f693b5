"""The train stage: data, run config and its checks, sharding, the loop, checkpoints, metrics."""
