"""Independent re-statements of DESIGN.md's FT layout rules, for the converter tests to compare with.

Written from DESIGN.md's text alone, not with ftprefix.layout or ftprefix.converter, so a mistake in
those modules cannot cancel itself out here.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

NP_DTYPE = {"fp32": np.float32, "fp16": np.float16}


def hf_state(hf_dir: Path) -> dict[str, np.ndarray]:
    """The model's tensors as saved, via the safetensors library (float32)."""
    from safetensors.numpy import load_file

    return {k: v.astype(np.float32) for k, v in load_file(str(hf_dir / "model.safetensors")).items()}


def hf_json(hf_dir: Path) -> dict:
    return json.loads((hf_dir / "config.json").read_text())


def dims(cfg: dict) -> tuple[int, int, int, int]:
    h, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    return h, heads, h // heads, cfg["num_hidden_layers"]


def expected_base_files(sd: dict[str, np.ndarray], cfg: dict, tp: int, dtype: str) -> dict[str, bytes]:
    """DESIGN.md "FasterTransformer GPT-NeoX format": every base file name -> its exact bytes."""
    dt = NP_DTYPE[dtype]
    h, heads, hd, layers = dims(cfg)

    def raw(a: np.ndarray) -> bytes:
        return np.ascontiguousarray(a.astype(dt)).tobytes()

    def ranks(name: str, a: np.ndarray, axis: int) -> dict[str, bytes]:
        return {f"{name}.{r}.bin": raw(part) for r, part in enumerate(np.split(a, tp, axis=axis))}

    files = {
        "model.wte.bin": raw(sd["gpt_neox.embed_in.weight"]),
        "model.lm_head.weight.bin": raw(sd["embed_out.weight"]),
        "model.final_layernorm.weight.bin": raw(sd["gpt_neox.final_layer_norm.weight"]),
        "model.final_layernorm.bias.bin": raw(sd["gpt_neox.final_layer_norm.bias"]),
    }
    for i in range(layers):
        hf, ft = f"gpt_neox.layers.{i}.", f"model.layers.{i}."
        for ln in ("input_layernorm", "post_attention_layernorm"):
            for wb in ("weight", "bias"):
                files[f"{ft}{ln}.{wb}.bin"] = raw(sd[f"{hf}{ln}.{wb}"])
        qkv_w = sd[hf + "attention.query_key_value.weight"].T.reshape(h, heads, 3, hd).transpose(0, 2, 1, 3)
        files.update(ranks(ft + "attention.query_key_value.weight", qkv_w, 2))
        qkv_b = sd[hf + "attention.query_key_value.bias"].reshape(heads, 3, hd).transpose(1, 0, 2)
        files.update(ranks(ft + "attention.query_key_value.bias", qkv_b, 1))
        files.update(ranks(ft + "attention.dense.weight", sd[hf + "attention.dense.weight"].T, 0))
        files.update(ranks(ft + "mlp.dense_h_to_4h.weight", sd[hf + "mlp.dense_h_to_4h.weight"].T, -1))
        files.update(ranks(ft + "mlp.dense_h_to_4h.bias", sd[hf + "mlp.dense_h_to_4h.bias"], -1))
        files.update(ranks(ft + "mlp.dense_4h_to_h.weight", sd[hf + "mlp.dense_4h_to_h.weight"].T, 0))
        attn_b, mlp_b = sd[hf + "attention.dense.bias"], sd[hf + "mlp.dense_4h_to_h.bias"]
        files[ft + "attention.dense.bias.bin"] = raw(attn_b)  # never divided
        files[ft + "mlp.dense_4h_to_h.bias.bin"] = raw(mlp_b)
        if cfg["use_parallel_residual"]:
            # every rank adds this before the all-reduce, so it is divided by tp
            files[ft + "mlp.attention.bias.sum.bin"] = raw((attn_b + mlp_b) / np.float32(tp))
    return files


def recombine_to_hf(ft_dir: Path, cfg: dict, tp: int, dtype: str) -> dict[str, np.ndarray]:
    """Read the rank files back and undo DESIGN.md's transforms: HF name -> tensor (float32)."""
    dt = NP_DTYPE[dtype]
    h, heads, hd, layers = dims(cfg)
    inter = cfg["intermediate_size"]

    def one(name: str, shape: tuple[int, ...]) -> np.ndarray:
        return np.fromfile(ft_dir / f"{name}.bin", dtype=dt).reshape(shape).astype(np.float32)

    def joined(name: str, rank_shape: tuple[int, ...], axis: int) -> np.ndarray:
        parts = [np.fromfile(ft_dir / f"{name}.{r}.bin", dtype=dt).reshape(rank_shape) for r in range(tp)]
        return np.concatenate(parts, axis=axis).astype(np.float32)

    vocab = cfg["vocab_size"]
    out = {
        "gpt_neox.embed_in.weight": one("model.wte", (vocab, h)),
        "embed_out.weight": one("model.lm_head.weight", (vocab, h)),
        "gpt_neox.final_layer_norm.weight": one("model.final_layernorm.weight", (h,)),
        "gpt_neox.final_layer_norm.bias": one("model.final_layernorm.bias", (h,)),
    }
    for i in range(layers):
        hf, ft = f"gpt_neox.layers.{i}.", f"model.layers.{i}."
        for ln in ("input_layernorm", "post_attention_layernorm"):
            for wb in ("weight", "bias"):
                out[f"{hf}{ln}.{wb}"] = one(f"{ft}{ln}.{wb}", (h,))
        qkv = joined(ft + "attention.query_key_value.weight", (h, 3, heads // tp, hd), 2)
        out[hf + "attention.query_key_value.weight"] = qkv.transpose(0, 2, 1, 3).reshape(h, 3 * h).T
        qkv_b = joined(ft + "attention.query_key_value.bias", (3, heads // tp, hd), 1)
        out[hf + "attention.query_key_value.bias"] = qkv_b.transpose(1, 0, 2).reshape(3 * h)
        out[hf + "attention.dense.weight"] = joined(ft + "attention.dense.weight", (h // tp, h), 0).T
        out[hf + "attention.dense.bias"] = one(ft + "attention.dense.bias", (h,))
        out[hf + "mlp.dense_h_to_4h.weight"] = joined(ft + "mlp.dense_h_to_4h.weight", (h, inter // tp), 1).T
        out[hf + "mlp.dense_h_to_4h.bias"] = joined(ft + "mlp.dense_h_to_4h.bias", (inter // tp,), 0)
        out[hf + "mlp.dense_4h_to_h.weight"] = joined(ft + "mlp.dense_4h_to_h.weight", (inter // tp, h), 0).T
        out[hf + "mlp.dense_4h_to_h.bias"] = one(ft + "mlp.dense_4h_to_h.bias", (h,))
    return out


def read_prefix_files(
    ft_dir: Path, task: str, cfg: dict, tp: int, dtype: str, prompt_length: int
) -> np.ndarray:
    """Rank files [layers, 2, heads/tp, P, head_dim] -> [P, layers, 2, heads, head_dim] (float32)."""
    _h, heads, hd, layers = dims(cfg)
    parts = [
        np.fromfile(ft_dir / f"model.prefix_prompt.{task}.weight.{r}.bin", dtype=NP_DTYPE[dtype]).reshape(
            layers, 2, heads // tp, prompt_length, hd
        )
        for r in range(tp)
    ]
    return np.concatenate(parts, axis=2).transpose(3, 0, 1, 2, 4).astype(np.float32)


def prefix_cache(prefix: np.ndarray) -> object:
    """[P, layers, 2, heads, head_dim] -> an HF DynamicCache holding it for a batch of one."""
    from transformers import DynamicCache

    cache = DynamicCache()
    t = torch.from_numpy(np.ascontiguousarray(prefix))
    for layer in range(t.shape[1]):
        keys = t[:, layer, 0].permute(1, 0, 2).unsqueeze(0).contiguous()  # [1, heads, P, head_dim]
        values = t[:, layer, 1].permute(1, 0, 2).unsqueeze(0).contiguous()
        cache.update(keys, values, layer)
    return cache


def tree_digest(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under root."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# FutureWarnings raised inside PEFT's own calls into transformers (PEFT 0.21 on transformers 5.24:
# `is_gradient_checkpointing`, and the `past_key_values` its prefix tuning passes), not by ftprefix.
# Tests that run PEFT ignore exactly these; every other FutureWarning fails the suite (pyproject).
def ignores_peft_internal_warnings(test: Any) -> Any:
    for message in ("`is_gradient_checkpointing` is deprecated", "`past_key_values` is deprecated"):
        test = pytest.mark.filterwarnings(f"ignore:{message}:FutureWarning")(test)
    return test
