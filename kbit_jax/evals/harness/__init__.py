"""The lm-evaluation-harness bridge (kbit_jax/evals/README.md, "Harness"): any harness task
on any kbit-jax model, trained or imported, at any k-bit quantization.

    lm_eval --model kbit --model_args model_dir=W,bits=4,dtype=nf --tasks hellaswag
    kbit harness --model_dir W --bits 4 --dtype nf --tasks hellaswag --out R

Nothing here imports lm_eval or torch at import time; `lm` (the model class) and `run`
(`kbit harness`) do, and need `pip install "kbit-jax[harness]"`.
"""
