"""k-bit knowledge-graph embeddings: TransE and RotatE trained for link prediction, then
evaluated with their entity and relation tables quantized by the project's quant core.

    data.py           triples, vocabularies, splits, the TSV loader, the shipped WordNet graph
    build_wordnet.py  rebuilds assets/wordnet/ from Debian's wordnet-base (offline, byte exact)
    models.py         TransE and RotatE (Flax linen), scores of triples and of all entities
    train.py          negative-sampling training with optax, Orbax checkpoints, exact resume
    ranking.py        filtered ranks, MRR and Hits@k over head and tail corruption, on device
    quantize.py       fake-quantized tables and their total bits (quant/bits.py's rules)
    experiment.py     one (model, dim, training triples) cell: train once, evaluate every spec
    plan.py           the grid's models and cells, validated before anything trains; its cost
    grid.py           `kbit kg`: train each model once, one record per cell, resumable
"""
