"""Tensor-by-tensor access to a `.safetensors` file, each tensor its own short-lived memory map.

The format (huggingface/safetensors, docs "Format"): 8-byte little-endian header length, a JSON
header {name: {dtype, shape, data_offsets: [begin, end]}} (offsets relative to the end of the
header), then the raw little-endian data. Mapping one tensor at a time and dropping the map after
use keeps the resident set near the size of one tensor, not of the file.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ftprefix.errors import UserError

_NUMPY_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2"}
_MAX_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class TensorEntry:
    dtype: str  # safetensors dtype name, e.g. "F16"
    shape: tuple[int, ...]
    offset: int  # absolute byte offset in the file
    nbytes: int


class SafetensorsFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries = _read_header(path)

    def names(self) -> list[str]:
        return list(self.entries)

    def read(self, name: str) -> np.ndarray:
        """The tensor as a read-only memory-mapped array; bf16 is widened to float32 (a copy)."""
        entry = self.entries[name]
        if entry.dtype not in _NUMPY_DTYPES:
            raise UserError(
                f"{self.path}: tensor {name} has dtype {entry.dtype}; only float tensors are read"
            )
        if entry.nbytes == 0:
            return np.zeros(entry.shape, dtype=_NUMPY_DTYPES[entry.dtype])
        array = np.memmap(
            self.path, dtype=_NUMPY_DTYPES[entry.dtype], mode="r", offset=entry.offset, shape=entry.shape
        )
        if entry.dtype == "BF16":
            # bf16 is the upper half of an fp32: shifting the bits up is exact.
            return (array.astype(np.uint32) << 16).view(np.float32)
        return array


def _read_header(path: Path) -> dict[str, TensorEntry]:
    try:
        with open(path, "rb") as f:
            raw_len = f.read(8)
            if len(raw_len) != 8:
                raise ValueError("file too short")
            (header_len,) = struct.unpack("<Q", raw_len)
            if header_len > _MAX_HEADER:
                raise ValueError("header length out of range")
            header = json.loads(f.read(header_len))
        size = path.stat().st_size
    except (OSError, ValueError) as exc:
        raise UserError(f"{path} is not a readable safetensors file: {exc}") from None
    data_start = 8 + header_len
    entries: dict[str, TensorEntry] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        if data_start + end > size:
            raise UserError(f"{path} is truncated: tensor {name} ends past the end of the file")
        entries[name] = TensorEntry(info["dtype"], tuple(info["shape"]), data_start + begin, end - begin)
    return entries
