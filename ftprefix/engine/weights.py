"""Read a converted FasterTransformer directory into full (rank-joined) torch tensors.

Tensor parallelism only splits matmuls: the all-reduce of row-parallel partial sums equals one
matmul with the rank pieces concatenated, so joining the rank files (layout.read_tensor) gives the
same function FT computes. The one place the split shows through is the bias rule: with
use_gptj_residual=1 every rank adds `mlp.attention.bias.sum` (stored divided by tp) before the
all-reduce, so the effective bias is the stored value times tp (FT: GptNeoXContextDecoder.cc and
add_residual_kernels.cu, NVIDIA/FasterTransformer).

Weights keep the values as stored (fp16 files keep their fp16 rounding) but are held as float32:
fp16 matmuls on CPU are slow and accumulate in low precision, which FT's GPU GEMMs do not.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ftprefix import layout

COMPUTE_DTYPE = torch.float32


def _tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


@dataclass
class LayerWeights:
    ln1_weight: torch.Tensor  # [hidden]
    ln1_bias: torch.Tensor
    ln2_weight: torch.Tensor
    ln2_bias: torch.Tensor
    qkv_weight: torch.Tensor  # [hidden, 3 * hidden], output columns ordered (q/k/v, head, head_dim)
    qkv_bias: torch.Tensor  # [3 * hidden], same order
    dense_weight: torch.Tensor  # [hidden, hidden] as [in, out]
    fc1_weight: torch.Tensor  # [hidden, inter]
    fc1_bias: torch.Tensor
    fc2_weight: torch.Tensor  # [inter, hidden]
    # use_gptj_residual=1: attn_bias is None and out_bias = attention.dense.bias + 4h_to_h.bias (once).
    # use_gptj_residual=0: attn_bias = attention.dense.bias, out_bias = 4h_to_h.bias.
    attn_bias: torch.Tensor | None
    out_bias: torch.Tensor


@dataclass
class ModelWeights:
    wte: torch.Tensor  # [vocab, hidden]
    lm_head: torch.Tensor  # [vocab, hidden]
    final_ln_weight: torch.Tensor
    final_ln_bias: torch.Tensor
    layers: list[LayerWeights]


def load_weights(
    directory: str | os.PathLike[str], cfg: layout.ModelConfig, *, mapped: bool = False
) -> ModelWeights:
    """Every base tensor FT reads for this config, rank files joined, as float32 torch tensors.
    `mapped`: tensors on the files' pages where they are float32 files of their own, as
    shared_weights writes them (a tp-1 fp32 layout), instead of copies."""
    d = Path(directory)

    def read(spec: layout.TensorSpec) -> np.ndarray:
        return layout.read_tensor(d, spec, cfg, mapped=mapped)

    glob = {spec.name: spec for spec in layout.global_tensors(cfg)}
    weights = ModelWeights(
        wte=_tensor(read(glob["model.wte"])),
        lm_head=_tensor(read(glob["model.lm_head.weight"])),
        final_ln_weight=_tensor(read(glob["model.final_layernorm.weight"])),
        final_ln_bias=_tensor(read(glob["model.final_layernorm.bias"])),
        layers=[],
    )
    h = cfg.hidden_units
    for i in range(cfg.num_layer):
        specs = {spec.name.split(f"model.layers.{i}.", 1)[1]: spec for spec in layout.layer_tensors(cfg, i)}

        def get(name: str, specs: dict[str, layout.TensorSpec] = specs) -> torch.Tensor:
            return _tensor(read(specs[name]))

        if cfg.use_gptj_residual:
            # FT reads only the pre-divided sum here; the two separate biases are ignored.
            spec = specs["mlp.attention.bias.sum"]
            attn_bias = None
            out_bias = _tensor(read(spec)) * cfg.tensor_para_size
        else:
            attn_bias = get("attention.dense.bias")
            out_bias = get("mlp.dense_4h_to_h.bias")
        weights.layers.append(
            LayerWeights(
                ln1_weight=get("input_layernorm.weight"),
                ln1_bias=get("input_layernorm.bias"),
                ln2_weight=get("post_attention_layernorm.weight"),
                ln2_bias=get("post_attention_layernorm.bias"),
                # FT [hidden, 3, heads, head_dim] -> [hidden, 3*hidden] keeps (q/k/v, head, dim) order
                qkv_weight=get("attention.query_key_value.weight").reshape(h, 3 * h).contiguous(),
                qkv_bias=get("attention.query_key_value.bias").reshape(3 * h).contiguous(),
                dense_weight=get("attention.dense.weight"),
                fc1_weight=get("mlp.dense_h_to_4h.weight"),
                fc1_bias=get("mlp.dense_h_to_4h.bias"),
                fc2_weight=get("mlp.dense_4h_to_h.weight"),
                attn_bias=attn_bias,
                out_bias=out_bias,
            )
        )
    return weights


def load_prefixes(directory: str | os.PathLike[str], cfg: layout.ModelConfig) -> list[torch.Tensor]:
    """Per task id: its prefix as float32 [layers, 2 (key, value), heads, P, head_dim]."""
    prefixes = []
    for task in cfg.tasks:
        # [P, layers, 2, heads, head_dim]
        canonical = layout.read_prefix(directory, cfg, task.name, task.prompt_length)
        prefixes.append(_tensor(canonical).permute(1, 2, 3, 0, 4).contiguous())
    return prefixes
