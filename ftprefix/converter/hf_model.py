"""A local Hugging Face GPT-NeoX directory: its config plus lazy, tensor-by-tensor weight access.

Weights may be `model.safetensors`, sharded safetensors with `model.safetensors.index.json`,
`pytorch_model.bin`, or sharded `pytorch_model-*.bin` with `pytorch_model.bin.index.json`.
Safetensors tensors are memory-mapped one at a time (see safetensors_file); torch pickles are
loaded with `mmap=True` so pages are read on demand, one shard object per file.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from ftprefix.converter.hf_config import NeoXConfig, read_hf_config
from ftprefix.converter.safetensors_file import SafetensorsFile
from ftprefix.converter.torch_files import to_numpy, torch_load
from ftprefix.errors import UserError

SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_BIN = "pytorch_model.bin"
TORCH_BIN_INDEX = "pytorch_model.bin.index.json"
BASE_PREFIX = "gpt_neox."  # GPTNeoXForCausalLM's name for the base model


class HFModel:
    """Open with `HFModel(hf_dir)`; `tensor(name)` returns one weight as a numpy array.

    Names are those of GPTNeoXForCausalLM (`gpt_neox.layers.0....`, `embed_out.weight`); a bare
    GPTNeoXModel checkpoint (no `gpt_neox.` prefix) is accepted too.
    """

    def __init__(self, hf_dir: str | Path, *, trust_pickle: bool = False) -> None:
        self.dir = Path(hf_dir)
        self.config: NeoXConfig = read_hf_config(self.dir)
        self.trust_pickle = trust_pickle
        self._safetensors: dict[Path, SafetensorsFile] = {}
        self._torch_shards: dict[Path, dict[str, Any]] = {}
        self._file_of: dict[str, Path] = self._weight_map()

    # -- discovery --------------------------------------------------------------------------

    def _weight_map(self) -> dict[str, Path]:
        d = self.dir
        if (d / SAFETENSORS).is_file():
            return dict.fromkeys(self._safetensors_file(d / SAFETENSORS).names(), d / SAFETENSORS)
        if (d / SAFETENSORS_INDEX).is_file():
            return self._read_index(d / SAFETENSORS_INDEX)
        if (d / TORCH_BIN).is_file():
            return dict.fromkeys(self._torch_shard(d / TORCH_BIN), d / TORCH_BIN)
        if (d / TORCH_BIN_INDEX).is_file():
            return self._read_index(d / TORCH_BIN_INDEX)
        raise UserError(
            f"no weights in {d}: expected {SAFETENSORS}, {SAFETENSORS_INDEX}, "
            f"{TORCH_BIN} or {TORCH_BIN_INDEX}"
        )

    def _read_index(self, index: Path) -> dict[str, Path]:
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UserError(f"{index} is not a valid shard index: {exc}") from None
        files = {name: self.dir / shard for name, shard in weight_map.items()}
        for shard in sorted(set(files.values())):
            if not shard.is_file():
                raise UserError(f"{index} lists shard {shard.name}, which is missing from {self.dir}")
        return files

    def resolve(self, name: str) -> str | None:
        """The stored name of `name` (with or without the `gpt_neox.` prefix), or None if absent."""
        if name in self._file_of:
            return name
        bare = name.removeprefix(BASE_PREFIX)
        if bare in self._file_of:
            return bare
        return None

    # -- access -----------------------------------------------------------------------------

    def shape(self, name: str) -> tuple[int, ...]:
        path = self._file_of[name]
        if path.suffix == ".safetensors":
            return self._safetensors_file(path).entries[name].shape
        return tuple(self._torch_shard(path)[name].shape)

    def stored_nbytes(self, name: str) -> int:
        path = self._file_of[name]
        if path.suffix == ".safetensors":
            return self._safetensors_file(path).entries[name].nbytes
        t = self._torch_shard(path)[name]
        return int(t.numel() * t.element_size())

    def tensor(self, name: str) -> np.ndarray:
        """One weight, memory-mapped where the format allows; bf16 is widened to float32."""
        path = self._file_of[name]
        if path.suffix == ".safetensors":
            return self._safetensors_file(path).read(name)
        return to_numpy(self._torch_shard(path)[name])

    def _safetensors_file(self, path: Path) -> SafetensorsFile:
        if path not in self._safetensors:
            self._safetensors[path] = SafetensorsFile(path)
        return self._safetensors[path]

    def _torch_shard(self, path: Path) -> dict[str, Any]:
        if path not in self._torch_shards:
            state = torch_load(path, trust_pickle=self.trust_pickle, mmap=True)
            if not isinstance(state, dict):
                raise UserError(f"{path} is not a state dict")
            self._torch_shards[path] = state
        return self._torch_shards[path]

    def close(self) -> None:
        self._safetensors.clear()
        self._torch_shards.clear()


@contextmanager
def open_hf_model(hf_dir: str | Path, *, trust_pickle: bool = False) -> Iterator[HFModel]:
    model = HFModel(hf_dir, trust_pickle=trust_pickle)
    try:
        yield model
    finally:
        model.close()
