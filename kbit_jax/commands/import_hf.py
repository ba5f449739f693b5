"""Imports a local Hugging Face checkpoint (GPT-2, Pythia, OPT, BLOOM) as a kbit-jax model:
checks config.json and every tensor before reading data, then writes an Orbax checkpoint,
architecture.json and the tokenizer (kbit_jax/convert/README.md).

    kbit import --hf_dir ~/hf/pythia-70m --workdir ~/kbit/pretrained/pythia-70m
"""

from __future__ import annotations

from absl import flags

FLAGS = flags.FlagValues()
HF_DIR = flags.DEFINE_string(
  "hf_dir", None, "a local Hugging Face model directory", flag_values=FLAGS
)
WORKDIR = flags.DEFINE_string(
  "workdir", None, "the new (empty or missing) import directory", flag_values=FLAGS
)
REQUIRED = ("hf_dir", "workdir")
ERRORS = (
  (FileExistsError, "invalid --workdir"),
  (FileNotFoundError, "invalid --hf_dir"),
  (ValueError, "cannot import"),
)


def main() -> None:
  from kbit_jax.convert import importer

  importer.import_main(HF_DIR.value, WORKDIR.value)
