"""The model stage: the one Transformer (architecture switches), its presets and FLOPs."""
