"""Tensors of a local Hugging Face checkpoint, read one at a time and lazily.

    files = reader.open_checkpoint(hf_dir)      # names, shapes, dtypes; no data read
    w = files.array("transformer.wte.weight")  # a read-only view in the stored dtype

Formats, first found wins: `model.safetensors.index.json` (sharded), `model.safetensors`,
`pytorch_model.bin.index.json`, `pytorch_model.bin` (the last two need torch).

Safetensors files are memory-mapped and parsed here (an 8-byte header length, a JSON
header of name -> dtype, shape, byte offsets, then raw little-endian data) rather than
with `safetensors.safe_open(framework="np")`, which cannot return bfloat16 (numpy has no
such type; BLOOM and many hub checkpoints store bf16): `ml_dtypes.bfloat16` can, and a
memory map reads only the bytes of the tensor being converted. PyTorch files are opened
with `torch.load(mmap=True, weights_only=True)` for the same reason.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import struct
from typing import Any

import ml_dtypes
import numpy as np

# safetensors dtype -> numpy; float ones are convertible, the rest reported by name.
_SAFETENSORS_DTYPES = {
  "F64": np.float64,
  "F32": np.float32,
  "F16": np.float16,
  "BF16": ml_dtypes.bfloat16,
  "I64": np.int64,
  "I32": np.int32,
  "I16": np.int16,
  "I8": np.int8,
  "U8": np.uint8,
  "BOOL": np.bool_,
  "F8_E4M3": ml_dtypes.float8_e4m3fn,
  "F8_E5M2": ml_dtypes.float8_e5m2,
}
FLOAT_DTYPES = ("float64", "float32", "float16", "bfloat16")
FORMATS = (
  "model.safetensors.index.json",
  "model.safetensors",
  "pytorch_model.bin.index.json",
  "pytorch_model.bin",
)


@dataclasses.dataclass(frozen=True)
class TensorInfo:
  file: pathlib.Path
  shape: tuple[int, ...]
  dtype: str  # numpy-style name: float32, bfloat16, int8, ...


class _SafetensorsFile:
  def __init__(self, path: pathlib.Path):
    self.path = path
    with open(path, "rb") as f:
      head = f.read(8)
      if len(head) < 8:
        raise ValueError(f"{path} is not a safetensors file (shorter than its header)")
      (size,) = struct.unpack("<Q", head)
      try:
        header = json.loads(f.read(size))
      except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not a safetensors file (unreadable header: {e})") from None
    header.pop("__metadata__", None)
    self.start = 8 + size
    self.entries = header
    # A download cut short: found here, before any tensor is read (a memory map of it
    # would fail with "mmap length is greater than file size").
    ends = {n: e["data_offsets"][1] for n, e in header.items() if isinstance(e, dict)}
    if ends:
      last = max(ends, key=ends.get)
      needed, actual = self.start + ends[last], path.stat().st_size
      if actual < needed:
        raise ValueError(
          f"{path} is truncated: {actual:,} bytes, but its header describes {needed:,} "
          f"(tensor {last!r} ends there); download it again"
        )

  def info(self, name: str) -> TensorInfo:
    entry = self.entries[name]
    dtype = _SAFETENSORS_DTYPES.get(entry["dtype"])
    return TensorInfo(
      self.path,
      tuple(entry["shape"]),
      np.dtype(dtype).name if dtype is not None else entry["dtype"],
    )

  def array(self, name: str) -> np.ndarray:
    entry = self.entries[name]
    dtype = np.dtype(_SAFETENSORS_DTYPES[entry["dtype"]])
    begin, end = entry["data_offsets"]
    shape = tuple(entry["shape"])
    if end - begin != math.prod(shape) * dtype.itemsize:
      raise ValueError(
        f"tensor {name!r} in {self.path}: {end - begin} bytes for shape "
        f"{shape} of {dtype.name}; the file is corrupt"
      )
    data = np.memmap(
      self.path, dtype=np.uint8, mode="r", offset=self.start + begin, shape=(end - begin,)
    )
    return data.view(dtype).reshape(shape)


def _torch():
  try:
    import torch
  except ImportError:
    raise ImportError(
      "reading pytorch_model.bin needs torch (pip install torch, the CPU "
      "build is enough) or a checkpoint in safetensors format"
    ) from None
  return torch


class _TorchFile:
  def __init__(self, path: pathlib.Path):
    torch = _torch()
    self.path = path
    try:
      self.tensors = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # the pre-1.6 (non-zip) format cannot be memory-mapped
      self.tensors = torch.load(path, map_location="cpu", weights_only=True)
    self._torch = torch

  def info(self, name: str) -> TensorInfo:
    t = self.tensors[name]
    return TensorInfo(self.path, tuple(t.shape), str(t.dtype).removeprefix("torch."))

  def array(self, name: str) -> np.ndarray:
    t = self.tensors[name]
    if t.dtype == self._torch.bfloat16:  # numpy has no bfloat16: reinterpret the bits
      return t.view(self._torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


class Checkpoint:
  """name -> TensorInfo for every tensor of a checkpoint; `array` reads one."""

  def __init__(self, directory: pathlib.Path, files: dict[str, Any]):
    self.directory = directory
    self._files = files
    self.info = {name: f.info(name) for name, f in files.items()}

  def array(self, name: str) -> np.ndarray:
    return self._files[name].array(name)


def _names(file: _SafetensorsFile | _TorchFile):
  return file.entries if isinstance(file, _SafetensorsFile) else file.tensors


def _open(path: pathlib.Path):
  if not path.exists():
    raise FileNotFoundError(f"{path} is missing (named by the checkpoint's index)")
  return _SafetensorsFile(path) if path.suffix == ".safetensors" else _TorchFile(path)


def open_checkpoint(directory: str | pathlib.Path) -> Checkpoint:
  """The checkpoint in `directory`, in the first format of FORMATS found there."""
  directory = pathlib.Path(directory)
  found = next((name for name in FORMATS if (directory / name).exists()), None)
  if found is None:
    present = sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []
    raise FileNotFoundError(
      f"no weights in {directory}: expected one of {list(FORMATS)}; found {present}"
    )
  if found.endswith(".index.json"):
    weight_map = json.loads((directory / found).read_text())["weight_map"]
    opened = {file: _open(directory / file) for file in sorted(set(weight_map.values()))}
    files = {name: opened[file] for name, file in weight_map.items()}
    for name, file in weight_map.items():
      if name not in _names(opened[file]):
        raise ValueError(f"{found} maps tensor {name!r} to {file}, which does not hold it")
  else:
    single = _open(directory / found)
    files = {name: single for name in _names(single)}
  return Checkpoint(directory, files)
