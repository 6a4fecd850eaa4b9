"""The independent reference every check compares with: Hugging Face `GPTNeoXForCausalLM` given a
task's ORIGINAL checkpoint, as a prefix in `past_key_values` or a soft prompt in `inputs_embeds`.

Nothing here reads the converted files: a converter or server bug cannot cancel itself out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ftprefix import layout
from ftprefix.converter.checkpoints import PrefixSource, load_checkpoint
from ftprefix.errors import UserError


@dataclass(frozen=True)
class TaskReference:
    """What HF needs to reproduce one task: a canonical prefix or a soft prompt (or nothing: base)."""

    prefix: np.ndarray | None = None  # [P, layers*2*hidden]
    soft_prompt: np.ndarray | None = None  # [P, hidden]

    @property
    def prompt_length(self) -> int:
        for tensor in (self.prefix, self.soft_prompt):
            if tensor is not None:
                return int(tensor.shape[0])
        return 0


BASE = TaskReference()


def load_hf(hf_dir: Path, weight_dtype: str) -> Any:
    """The HF model in fp32; with fp16 files its weights are rounded to fp16 first (same values)."""
    import torch
    from transformers.utils import logging as hf_logging

    from ftprefix.hf_compat import load_gptneox

    if not (hf_dir / "config.json").is_file():
        raise UserError(f"--model {hf_dir} is not a Hugging Face model directory (no config.json)")
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    model = load_gptneox(hf_dir, local_files_only=True)
    if weight_dtype == "fp16":
        with torch.no_grad():
            for param in model.parameters():
                param.copy_(param.half().float())
    return model


def check_shapes(hf: Any, cfg: layout.ModelConfig, hf_dir: Path) -> None:
    hc = hf.config
    if (hc.num_hidden_layers, hc.hidden_size, hc.vocab_size) != (
        cfg.num_layer,
        cfg.hidden_units,
        cfg.vocab_size,
    ):
        raise UserError(
            f"--model {hf_dir} has {hc.num_hidden_layers} layers, hidden {hc.hidden_size}, vocab "
            f"{hc.vocab_size}; the converted model has {cfg.num_layer}, {cfg.hidden_units}, {cfg.vocab_size}"
        )


def task_references(
    cfg: layout.ModelConfig, sources: Sequence[PrefixSource], trust_pickle: bool
) -> dict[str, TaskReference]:
    """Each source's checkpoint as HF will use it (rounded to fp16 when the conversion is fp16)."""
    refs: dict[str, TaskReference] = {}
    for source in sources:
        ckpt = load_checkpoint(source, trust_pickle=trust_pickle, hidden_size=cfg.hidden_units)
        tensor = np.asarray(ckpt.tensor, dtype=np.float32)
        if cfg.weight_data_type == "fp16":
            tensor = tensor.astype(np.float16).astype(np.float32)
        if ckpt.kind == "soft_prompt":
            refs[source.name] = TaskReference(soft_prompt=tensor)
            continue
        if tensor.ndim != 2 or tensor.shape[1] != layout.prefix_width(cfg):
            raise UserError(
                f"task {source.name}: {source.path} holds {tensor.shape[-1]} values per token, "
                f"the converted model needs {layout.prefix_width(cfg)}; is it for another model?"
            )
        refs[source.name] = TaskReference(prefix=tensor)
    return refs


def hf_logits(model: Any, ids: Sequence[int], ref: TaskReference, cfg: layout.ModelConfig) -> np.ndarray:
    """HF logits [len(ids), vocab] for one row with its task's prefix or soft prompt."""
    return hf_answer(model, ids, ref, cfg, 0)[0]


def hf_answer(
    model: Any,
    ids: Sequence[int],
    ref: TaskReference,
    cfg: layout.ModelConfig,
    steps: int,
    end_id: int | None = None,
) -> tuple[np.ndarray, list[int]]:
    """HF's logits [len(ids), vocab] for one row with its task's prefix or soft prompt, and up to
    `steps` greedy tokens after it (with `end_id`, FT's end: the row stops right after it).

    The tokens are decoded with HF's KV cache, one token per forward pass, as `generate` decodes:
    running the whole row again for every token cost verify most of its time on a large model."""
    import torch

    from ftprefix.hf_cache import prefix_to_cache
    from ftprefix.hf_compat import returned_cache

    tokens = torch.tensor([list(ids)], dtype=torch.long)
    with torch.no_grad():
        if ref.soft_prompt is not None:
            soft = torch.from_numpy(ref.soft_prompt).float()[None]
            embeds = torch.cat([soft, model.get_input_embeddings()(tokens)], dim=1)
            out = model(inputs_embeds=embeds, use_cache=True)
            before = soft.shape[1]
            logits = out.logits[0, before:]
        else:
            before = 0 if ref.prefix is None else ref.prefix.shape[0]
            cache = None
            if ref.prefix is not None:
                cache = prefix_to_cache(torch.from_numpy(ref.prefix).float(), cfg.num_layer, cfg.head_num)
            out = _forward(model, tokens, cache, before)
            logits = out.logits[0]
        length = before + len(ids)  # positions in the cache
        generated: list[int] = []
        while len(generated) < steps:
            token = int(out.logits[0, -1].argmax())
            generated.append(token)
            if token == end_id or len(generated) == steps:
                break
            out = _forward(model, torch.tensor([[token]]), returned_cache(out), length)
            length += 1
    return logits.numpy(), generated


def _forward(model: Any, tokens: Any, cache: Any, start: int) -> Any:
    """A forward pass of `tokens` at positions start, start+1, ... after `cache` (None: none),
    returning the cache extended by them."""
    import torch

    from ftprefix.hf_compat import cache_argument

    n = tokens.shape[1]
    return model(
        tokens,
        **({} if cache is None else cache_argument(model, cache)),
        attention_mask=torch.ones((1, start + n), dtype=torch.long),
        position_ids=torch.arange(start, start + n)[None],
        use_cache=True,
    )
