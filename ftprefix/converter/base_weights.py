"""Base-model weights: check every HF tensor FT needs is there with the right shape, then write the
FT files one tensor at a time. File names, shapes and split rules come from `ftprefix.layout`."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ftprefix import layout
from ftprefix.converter.hf_model import HFModel
from ftprefix.converter.values import check_servable
from ftprefix.errors import UserError

EMBED_IN = "gpt_neox.embed_in.weight"
# Rows of the source per transposed block: numpy's plain `.T` copy walks memory with a stride of a
# whole row and runs about 5x slower than copying small blocks that stay in cache.
_TRANSPOSE_BLOCK = 16


# the biases of the attention's two Linear layers, absent from a model with attention_bias false
ATTENTION_BIASES = ("attention.query_key_value.bias", "attention.dense.bias")


@dataclass(frozen=True)
class PlannedTensor:
    spec: layout.TensorSpec
    # names as stored in the HF files; None for a bias the model does not have, written as zeros
    stored_sources: tuple[str | None, ...]

    def describe(self) -> str:
        return " + ".join(name or "(no bias)" for name in self.stored_sources)


def hf_shape(spec: layout.TensorSpec) -> tuple[int, ...]:
    """Shape of each HF source tensor of `spec` (Linear weights are [out, in]; biases are flat)."""
    if spec.transpose:
        return (int(np.prod(spec.shape[1:])), spec.shape[0])
    if len(spec.shape) == 2:
        return spec.shape
    return (int(np.prod(spec.shape)),)


def plan_base(hf: HFModel, cfg: layout.ModelConfig) -> list[PlannedTensor]:
    """Every FT base tensor with its HF sources, or a UserError naming the first missing/misshaped one."""
    plan = []
    for spec in layout.base_tensors(cfg):
        stored = tuple(_find_source(hf, name) for name in spec.sources)
        expected = hf_shape(spec)
        for name in stored:
            if name is None:
                continue
            found = hf.shape(name)
            if found != expected:
                raise UserError(
                    f"{hf.dir}: weight {name} has shape {list(found)}, "
                    f"expected {list(expected)} from config.json"
                )
        plan.append(PlannedTensor(spec, stored))
    return plan


def _find_source(hf: HFModel, name: str) -> str | None:
    if not hf.config.attention_bias and name.endswith(ATTENTION_BIASES):
        # transformers builds these layers without a bias and ignores one a checkpoint holds
        return None
    stored = hf.resolve(name)
    if stored is None and name in layout.HF_LM_HEAD_NAMES:
        for alias in layout.HF_LM_HEAD_NAMES:
            stored = stored or hf.resolve(alias)
        if stored is None and hf.config.tie_word_embeddings:
            stored = hf.resolve(EMBED_IN)  # tied output head: the input embedding is the head
    if stored is None:
        raise UserError(f"{hf.dir}: missing weight {name}; the checkpoint is incomplete or not GPT-NeoX")
    return stored


def transpose_2d(x: np.ndarray) -> np.ndarray:
    """`np.ascontiguousarray(x.T)`, done block by block for speed."""
    out = np.empty(x.shape[::-1], dtype=x.dtype)
    for start in range(0, x.shape[0], _TRANSPOSE_BLOCK):
        out[:, start : start + _TRANSPOSE_BLOCK] = x[start : start + _TRANSPOSE_BLOCK].T
    return out


@dataclass
class WriteStats:
    bytes_read: int = 0
    bytes_written: int = 0
    files: int = 0


def write_base(
    hf: HFModel,
    plan: list[PlannedTensor],
    cfg: layout.ModelConfig,
    out_dir: Path,
    on_tensor: Callable[[], None] = lambda: None,
    workers: int = 2,
) -> WriteStats:
    """Write every planned tensor. numpy releases the GIL while copying and writing, so two tensors
    in flight overlap one's reading/transposing with the other's writing; memory stays bounded by
    `workers` tensors."""
    stats = WriteStats()
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for one in pool.map(lambda item: _write_tensor(hf, item, cfg, out_dir), plan):
            stats.bytes_read += one.bytes_read
            stats.bytes_written += one.bytes_written
            stats.files += one.files
            on_tensor()
    return stats


def _write_tensor(hf: HFModel, item: PlannedTensor, cfg: layout.ModelConfig, out_dir: Path) -> WriteStats:
    # overflow to inf in a cast is checked below, with a message naming the tensor
    with np.errstate(over="ignore", invalid="ignore"):
        return _write_tensor_checked(hf, item, cfg, out_dir)


def _write_tensor_checked(
    hf: HFModel, item: PlannedTensor, cfg: layout.ModelConfig, out_dir: Path
) -> WriteStats:
    stats = WriteStats()
    out_dtype = cfg.np_dtype
    spec = item.spec
    sources = [
        hf.tensor(name) if name is not None else np.zeros(hf_shape(spec), np.float32)
        for name in item.stored_sources
    ]
    stats.bytes_read += sum(hf.stored_nbytes(name) for name in item.stored_sources if name is not None)
    if len(sources) > 1 or spec.divide_by_tp:
        # Sums and divisions happen in fp32 and are rounded once, whatever the stored dtype.
        sources = [np.asarray(s, dtype=np.float32) for s in sources]
    else:
        # Pure data movement: casting first is exact and halves the copies when narrowing.
        sources = [s.astype(out_dtype, copy=False) for s in sources]
    if spec.transpose:
        sources = [transpose_2d(s) for s in sources]
        spec = replace(spec, transpose=False)
    parts = layout.hf_to_ft(spec, sources, cfg)
    del sources
    for file_name, part in zip(spec.file_names(cfg.tensor_para_size), parts, strict=True):
        data = part.astype(out_dtype, copy=False)
        if not np.isfinite(data).all():
            sources = [hf.tensor(name) for name in item.stored_sources if name is not None]
            what = f"base weight {item.describe()}"
            for source in sources:
                check_servable(source, what, cfg.weight_data_type)
            check_servable(part, what, cfg.weight_data_type, cast=data)
        layout.write_array(out_dir / file_name, data)
        stats.bytes_written += data.nbytes
        stats.files += 1
    return stats
