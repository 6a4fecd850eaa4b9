"""GPT-NeoX forward pass with FasterTransformer's semantics and a per-row KV cache.

Semantics (NVIDIA/FasterTransformer src/fastertransformer/models/gptneox/GptNeoXContextDecoder.cc,
GptNeoXDecoder.cc, kernels/unfused_attention_kernels.cu, kernels/decoder_masked_multihead_attention):
- pre-layernorm with FT's fixed eps (layout.LAYERNORM_EPS, GptNeoX.h), parallel (use_gptj_residual=1)
  or sequential residual;
- NeoX-style rotary (rotate halves) on the first `rotary_embedding` dims of q and k, base 10000;
- prefix keys/values sit in the cache unrotated, in front of the row's tokens;
- real tokens of a row with a prefix of length P take rotary positions P, P+1, ...

Cache layout: one slot per position, per row. Slot j of row b holds position j, so the row's
prefix occupies slots 0..P_b-1 and its token t sits in slot P_b + t; rows of one batch fill
their caches to different depths and a query at position p sees exactly slots 0..p.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from ftprefix import layout
from ftprefix.engine.weights import COMPUTE_DTYPE, LayerWeights, ModelWeights

Gelu = Literal["tanh", "erf"]


@dataclass
class KVCache:
    keys: list[torch.Tensor]  # per layer [batch, heads, slots, head_dim]
    values: list[torch.Tensor]

    @property
    def slots(self) -> int:
        return self.keys[0].shape[2]


def _exact(x: torch.Tensor, layer: int) -> torch.Tensor:
    return x


class Transformer:
    def __init__(
        self,
        cfg: layout.ModelConfig,
        weights: ModelWeights,
        gelu: Gelu = "tanh",
        activations: Callable[[torch.Tensor, int], torch.Tensor] = _exact,
    ) -> None:
        """`activations` sees every intermediate tensor (and its layer) and may round it, e.g. to
        fp16 as FT's fp16 model stores them (engine/precision.py)."""
        if gelu not in ("tanh", "erf"):
            raise ValueError(
                f"gelu must be 'tanh' (FasterTransformer) or 'erf' (Hugging Face 'gelu'), got {gelu!r}"
            )
        self.cfg = cfg
        self.w = weights
        self.gelu: Gelu = gelu
        self.gelu_approximate = "tanh" if gelu == "tanh" else "none"
        self.act = activations
        rot = cfg.rotary_embedding
        # Same formula as FT's and HF's NeoX rotary: inv_freq_i = base^(-2i/rot), i < rot/2.
        exponents = torch.arange(0, rot, 2, dtype=torch.int64).to(torch.float32) / max(rot, 1)
        self.inv_freq = 1.0 / (layout.ROTARY_BASE**exponents)

    def new_cache(self, batch: int, slots: int, prefixes: list[torch.Tensor | None]) -> KVCache:
        """Empty cache with each row's prefix (if any) copied into its first P slots."""
        cfg = self.cfg
        shape = (batch, cfg.head_num, slots, cfg.size_per_head)
        cache = KVCache(
            keys=[torch.zeros(shape, dtype=COMPUTE_DTYPE) for _ in range(cfg.num_layer)],
            values=[torch.zeros(shape, dtype=COMPUTE_DTYPE) for _ in range(cfg.num_layer)],
        )
        for row, prefix in enumerate(prefixes):
            if prefix is None:
                continue
            p = prefix.shape[3]  # [layers, 2, heads, P, head_dim]
            for layer in range(cfg.num_layer):
                cache.keys[layer][row, :, :p] = prefix[layer, 0]
                cache.values[layer][row, :, :p] = prefix[layer, 1]
        return cache

    def _rotary(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions.to(torch.float32)[..., None] * self.inv_freq  # [B, T, rot/2]
        emb = torch.cat((freqs, freqs), dim=-1)[:, :, None, :]  # broadcast over heads
        return emb.cos(), emb.sin()

    def _apply_rotary(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        rot = self.cfg.rotary_embedding
        if rot == 0:
            return x
        x_rot, x_pass = x[..., :rot], x[..., rot:]
        half = rot // 2
        rotated = torch.cat((-x_rot[..., half:], x_rot[..., :half]), dim=-1)
        return torch.cat((x_rot * cos + rotated * sin, x_pass), dim=-1)

    def _layer_norm(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, (x.shape[-1],), weight, bias, layout.LAYERNORM_EPS)

    def _mlp(self, x: torch.Tensor, lw: LayerWeights, index: int) -> torch.Tensor:
        act = self.act
        h = act(torch.addmm(lw.fc1_bias, x.reshape(-1, x.shape[-1]), lw.fc1_weight), index)
        h = act(F.gelu(h, approximate=self.gelu_approximate), index)
        return act(h @ lw.fc2_weight, index).reshape(*x.shape[:-1], -1)

    def _layer(
        self,
        x: torch.Tensor,
        index: int,
        rows: torch.Tensor,
        positions: torch.Tensor,
        rotary: tuple[torch.Tensor, torch.Tensor],
        mask: torch.Tensor,
        cache: KVCache,
        visible: int,
    ) -> torch.Tensor:
        cfg, lw, act = self.cfg, self.w.layers[index], self.act
        b, t, hidden = x.shape
        h1 = act(self._layer_norm(x, lw.ln1_weight, lw.ln1_bias), index)
        qkv = act(torch.addmm(lw.qkv_bias, h1.reshape(b * t, hidden), lw.qkv_weight), index)
        q, k, v = qkv.view(b, t, 3, cfg.head_num, cfg.size_per_head).unbind(2)
        q = self._apply_rotary(q, *rotary)
        k = self._apply_rotary(k, *rotary)
        keys, values = cache.keys[index], cache.values[index]
        keys[rows, :, positions] = k
        values[rows, :, positions] = v.contiguous()
        attn = act(
            F.scaled_dot_product_attention(
                q.transpose(1, 2), keys[:, :, :visible], values[:, :, :visible], attn_mask=mask
            ),
            index,
        )
        attn_out = act(attn.transpose(1, 2).reshape(b * t, hidden) @ lw.dense_weight, index).view(
            b, t, hidden
        )
        if cfg.use_gptj_residual:
            mlp_out = self._mlp(act(self._layer_norm(x, lw.ln2_weight, lw.ln2_bias), index), lw, index)
            return act(x + attn_out + mlp_out + lw.out_bias, index)
        assert lw.attn_bias is not None
        h = act(x + attn_out + lw.attn_bias, index)
        mlp_out = self._mlp(act(self._layer_norm(h, lw.ln2_weight, lw.ln2_bias), index), lw, index)
        return act(h + mlp_out + lw.out_bias, index)

    def hidden_states(self, input_ids: torch.Tensor, positions: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Run tokens `input_ids` [B, T] at cache slots / rotary positions `positions` [B, T].

        Writes their keys/values into the cache; returns final-layernormed hidden states [B, T, H].
        Each query at position p attends to slots 0..p of its own row.
        """
        b, _ = input_ids.shape
        visible = int(positions.max()) + 1
        rows = torch.arange(b)[:, None].expand_as(positions)
        slot_ids = torch.arange(visible)
        mask = (slot_ids[None, None, :] <= positions[:, :, None])[:, None]  # [B, 1, T, visible]
        rotary = self._rotary(positions)
        x = self.act(self.w.wte[input_ids], -1)
        for index in range(self.cfg.num_layer):
            x = self._layer(x, index, rows, positions, rotary, mask, cache, visible)
        return self.act(self._layer_norm(x, self.w.final_ln_weight, self.w.final_ln_bias), self.cfg.num_layer)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.act(hidden @ self.w.lm_head.T, self.cfg.num_layer)
