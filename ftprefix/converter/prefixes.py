"""Prefix tensors: check them against the base model, resolve soft prompts, write FT's rank files."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ftprefix import layout
from ftprefix.converter.checkpoints import LoadedCheckpoint, PrefixSource, load_checkpoint
from ftprefix.converter.values import check_servable
from ftprefix.errors import UserError
from ftprefix.task_table import Task


def check_task_names(sources: Sequence[PrefixSource], existing: Sequence[str] = ()) -> None:
    """Every checkpoint there, and every name readable by FT and unique, also against tasks already
    in the model: a mistyped path is named as missing, not as the task name taken from it."""
    seen = set(existing)
    for source in sources:
        source.check_exists()
        layout.validate_task_name(source.name)
        if source.name in seen:
            where = "already in the model" if source.name in existing else "given twice"
            raise UserError(
                f"duplicate task name {source.name!r} ({where}); "
                "name it explicitly with --prefix NEWNAME=PATH"
            )
        seen.add(source.name)


def canonical_prefix(ckpt: LoadedCheckpoint, cfg: layout.ModelConfig) -> np.ndarray:
    """A loaded prefix as [P, layers*2*hidden], or a UserError saying what does not match and how."""
    width = layout.prefix_width(cfg)
    layers, heads, head_dim = cfg.num_layer, cfg.head_num, cfg.size_per_head
    expected = f"[P, {width}] = [P, layers {layers} x 2 x heads {heads} x head_dim {head_dim}]"
    declared = dict(ckpt.declared or {})
    if declared:
        want = {"num_layers": layers, "num_attention_heads": heads, "token_dim": cfg.hidden_units}
        wrong = [
            f"{k} {declared[k]} (base: {v})" for k, v in want.items() if k in declared and declared[k] != v
        ]
        if wrong:
            raise UserError(f"task {ckpt.name}: adapter was trained for another model: {', '.join(wrong)}")
    x = ckpt.tensor
    if x.ndim == 1:
        if x.size % width:
            raise UserError(
                f"task {ckpt.name}: {x.size} values do not divide into whole tokens of {width} "
                f"(expected {expected})"
            )
        x = x.reshape(-1, width)
    if x.shape[1] != width:
        hint = ""
        if x.shape[1] % (2 * cfg.hidden_units) == 0:
            hint = f"; it looks like {x.shape[1] // (2 * cfg.hidden_units)} layers"
        elif x.shape[1] % (2 * layers) == 0:
            hint = f"; it looks like hidden size {x.shape[1] // (2 * layers)} (heads x head_dim)"
        raise UserError(
            f"task {ckpt.name}: prefix shape {list(x.shape)} does not match the base model: "
            f"expected {expected}{hint}"
        )
    return x


def check_soft_prompt(ckpt: LoadedCheckpoint, cfg: layout.ModelConfig) -> np.ndarray:
    x = ckpt.tensor
    h = cfg.hidden_units
    if ckpt.declared and ckpt.declared.get("token_dim", h) != h:
        raise UserError(
            f"task {ckpt.name}: soft prompt has token_dim {ckpt.declared['token_dim']}, base hidden {h}"
        )
    if x.ndim == 1:
        if x.size % h:
            raise UserError(
                f"task {ckpt.name}: {x.size} values do not divide into whole tokens of hidden size {h}"
            )
        x = x.reshape(-1, h)
    if x.shape[1] != h:
        raise UserError(f"task {ckpt.name}: soft prompt shape {list(x.shape)}, expected [P, hidden {h}]")
    return x


def load_prefixes(
    sources: Sequence[PrefixSource], cfg: layout.ModelConfig, hf_dir: Path | None, *, trust_pickle: bool
) -> list[tuple[LoadedCheckpoint, np.ndarray]]:
    """Load and check every source; soft prompts are run through the base model (needs hf_dir).

    Returns (checkpoint, canonical prefix [P, layers*2*hidden] float32) in the order given.
    """
    loaded = [load_checkpoint(s, trust_pickle=trust_pickle, hidden_size=cfg.hidden_units) for s in sources]
    prefixes: list[np.ndarray | None] = []
    soft: list[tuple[int, np.ndarray]] = []
    for i, ckpt in enumerate(loaded):
        if ckpt.kind == "prefix":
            prefixes.append(canonical_prefix(ckpt, cfg))
        else:
            soft.append((i, check_soft_prompt(ckpt, cfg)))
            prefixes.append(None)
    if soft:
        if hf_dir is None:
            names = ", ".join(loaded[i].name for i, _ in soft)
            raise UserError(
                f"task {names}: a soft prompt needs the base model to convert; pass --model HF_DIR"
            )
        from ftprefix.converter.soft_prompt import soft_prompts_to_prefixes

        for (i, _), prefix in zip(soft, soft_prompts_to_prefixes([e for _, e in soft], hf_dir), strict=True):
            prefixes[i] = canonical_prefix(
                LoadedCheckpoint(loaded[i].name, "prefix", prefix, loaded[i].path), cfg
            )
    out = [(ckpt, p) for ckpt, p in zip(loaded, prefixes, strict=True) if p is not None]
    for ckpt, prefix in out:
        check_servable(prefix, f"task {ckpt.name} ({ckpt.path})", cfg.weight_data_type)
    return out


def write_prefix(out_dir: Path, name: str, prefix: np.ndarray, cfg: layout.ModelConfig) -> int:
    """Write one task's rank files; returns bytes written."""
    written = 0
    for file_name, part in zip(
        layout.prefix_file_names(name, cfg.tensor_para_size), layout.prefix_to_ft(prefix, cfg), strict=True
    ):
        data = part.astype(cfg.np_dtype)
        layout.write_array(out_dir / file_name, data)
        written += data.nbytes
    return written


def write_placeholder(out_dir: Path, slot: Task, cfg: layout.ModelConfig) -> int:
    """A retired slot's prefix files: zeros of its length, so FT loads it like any other slot."""
    zeros = np.zeros((slot.prompt_length, layout.prefix_width(cfg)), dtype=np.float32)
    return write_prefix(out_dir, slot.name, zeros, cfg)
