"""Import pretrained GPT-2, GPT-NeoX/Pythia, OPT and BLOOM checkpoints (Hugging Face
format, local) as kbit-jax presets + params; see README.md in this folder."""
