"""The evaluation stage: perplexity, zero-shot tasks and k-bit probes."""
