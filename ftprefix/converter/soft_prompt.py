"""Soft prompt (prompt tuning) -> prefix, exactly.

Prepending P soft-prompt embeddings to the input is the same as starting from a KV cache that holds
what every layer computes for those P embeddings at positions 0..P-1: the real tokens then sit at
positions P, P+1, ... either way, and the cache already holds rotated keys. So running the base
model once over the embeddings and keeping each layer's keys (after rotary) and values gives a
prefix that FT can serve per task id like any prefix-tuned one.

The base model runs in Hugging Face (fp32, its own layer_norm_eps and activation).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ftprefix.hf_cache import cache_to_prefix
from ftprefix.hf_compat import returned_cache


def soft_prompts_to_prefixes(embeddings: Sequence[np.ndarray], hf_dir: Path) -> list[np.ndarray]:
    """[P, hidden] soft prompts -> [P, layers*2*hidden] canonical prefixes (float32), loading the base
    model once."""
    import torch

    model = _load_model(Path(hf_dir))
    results = []
    with torch.no_grad():
        for emb in embeddings:
            inputs = torch.from_numpy(np.asarray(emb, dtype=np.float32)).unsqueeze(0)
            out = model(inputs_embeds=inputs, use_cache=True)
            results.append(cache_to_prefix(returned_cache(out), model.config.num_hidden_layers))
    return results


def _load_model(hf_dir: Path) -> Any:
    from transformers.utils import logging as hf_logging

    from ftprefix.hf_compat import load_gptneox

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        model = load_gptneox(hf_dir)
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()
    return model
