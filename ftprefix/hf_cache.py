"""A canonical prefix as Hugging Face sees it: the KV cache GPTNeoXForCausalLM takes (`past_key_values`,
named `cache` in recent transformers).

Canonical prefix: [P, layers*2*hidden], last axis ordered (layer, key/value, head, head_dim), the
order rinna's PrefixEncoder and PEFT's prefix tuning view it in. HF's cache holds, per layer,
keys and values [batch, heads, P, head_dim]. Used by `verify` and the demo (prefix -> cache) and
by the soft-prompt conversion (cache -> prefix); torch and transformers are imported lazily.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def prefix_to_cache(prefix: Any, num_layers: int, num_heads: int, batch_size: int = 1) -> Any:
    """Torch prefix [P, layers*2*hidden] -> `transformers.DynamicCache`, the same for every row.

    Differentiable in `prefix` (prefix tuning trains through it). The real tokens that follow must
    get position_ids P, P+1, ... and an attention mask covering P + their length.
    """
    from transformers import DynamicCache

    p = prefix.shape[0]
    kv = prefix.reshape(p, num_layers, 2, num_heads, -1).permute(1, 2, 3, 0, 4)  # [L, 2, heads, P, hd]
    cache = DynamicCache()
    for layer in range(num_layers):
        cache.update(
            kv[layer, 0].unsqueeze(0).expand(batch_size, -1, -1, -1).contiguous(),
            kv[layer, 1].unsqueeze(0).expand(batch_size, -1, -1, -1).contiguous(),
            layer,
        )
    return cache


def cache_to_prefix(cache: Any, num_layers: int) -> np.ndarray:
    """A batch-of-one HF KV cache ([1, heads, P, head_dim] per layer) -> float32 [P, layers*2*hidden]."""
    import torch

    per_layer = []
    for i in range(num_layers):
        if hasattr(cache, "layers"):
            keys, values = cache.layers[i].keys, cache.layers[i].values
        else:  # older transformers: cache[i] -> (keys, values)
            keys, values = cache[i][0], cache[i][1]
        per_layer.append(torch.stack([keys[0], values[0]]))  # [2, heads, P, head_dim]
    stacked = torch.stack(per_layer)  # [layers, 2, heads, P, head_dim]
    p = stacked.shape[3]
    return stacked.permute(3, 0, 1, 2, 4).reshape(p, -1).float().numpy().copy()
