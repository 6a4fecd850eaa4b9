"""The independent reference for served answers: Hugging Face GPTNeoXForCausalLM with each task's
original prefix as past_key_values, decoding greedily with FasterTransformer's stopping rules
(written here from docs/design.md, not taken from ftprefix). Helpers only, no tests here."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from transformers import DynamicCache

from ftprefix.hf_compat import cache_argument, load_gptneox


def prefix_cache(prefix: np.ndarray, config) -> DynamicCache:
    """A canonical prefix [P, layers*2*hidden] (layer, key/value, head, head_dim) as HF's KV cache."""
    t = torch.from_numpy(np.ascontiguousarray(prefix, dtype=np.float32))
    heads = config.num_attention_heads
    kv = t.view(t.shape[0], config.num_hidden_layers, 2, heads, config.hidden_size // heads)
    cache = DynamicCache()
    for layer in range(config.num_hidden_layers):
        cache.update(
            kv[:, layer, 0].permute(1, 0, 2)[None].contiguous(),
            kv[:, layer, 1].permute(1, 0, 2)[None].contiguous(),
            layer,
        )
    return cache


def logits_with_prefix(model, ids: Sequence[int], prefix: np.ndarray | None) -> np.ndarray:
    """HF logits [len(ids), vocab] of one row, the prefix (if any) as past_key_values at positions 0..P-1."""
    tokens = torch.tensor([list(ids)])
    with torch.no_grad():
        if prefix is None:
            return model(tokens).logits[0].numpy()
        p = prefix.shape[0]
        out = model(
            tokens,
            **cache_argument(model, prefix_cache(prefix, model.config)),
            attention_mask=torch.ones((1, p + len(ids)), dtype=torch.long),
            position_ids=torch.arange(p, p + len(ids))[None],
        )
        return out.logits[0].numpy()


class HFReference:
    """`greedy(ids, task, n)`: what FT must answer for one row, given the toy model's HF directory
    (built with FT's eps and tanh GELU) and each task's canonical prefix [P, layers*2*hidden]."""

    def __init__(self, hf_dir: Path, prefixes: dict[str, np.ndarray]) -> None:
        self.model = load_gptneox(hf_dir)
        self.prefixes = {name: np.asarray(p, dtype=np.float32) for name, p in prefixes.items()}
        self._cache: dict[tuple, tuple[list[int], str]] = {}

    def _logits(self, ids: list[int], task: str | None) -> np.ndarray:
        return logits_with_prefix(self.model, ids, None if task is None else self.prefixes[task])[-1]

    def greedy(
        self,
        ids: Sequence[int],
        task: str | None,
        max_new_tokens: int,
        end_id: int | None = None,
        stop_words: Sequence[Sequence[int]] = (),
        min_new_tokens: int = 0,
    ) -> tuple[list[int], str]:
        """(generated tokens, finish reason): a row ends after end_id or a stop word (both kept).
        While fewer than `min_new_tokens` are generated, end_id cannot be chosen (transformers'
        MinNewTokensLengthLogitsProcessor: its logit is -inf)."""
        key = (tuple(ids), task, max_new_tokens, end_id, tuple(map(tuple, stop_words)), min_new_tokens)
        if key not in self._cache:
            seq, new, reason = list(ids), [], "length"
            for _ in range(max_new_tokens):
                logits = self._logits(seq, task)
                if end_id is not None and len(new) < min_new_tokens:
                    logits[end_id] = -np.inf
                token = int(logits.argmax())
                seq.append(token)
                new.append(token)
                if token == end_id:
                    reason = "end_id"
                    break
                if any(w and seq[-len(w) :] == list(w) for w in stop_words):
                    reason = "stop_words"
                    break
            self._cache[key] = (new, reason)
        return self._cache[key]
