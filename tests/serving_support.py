"""Shared helpers for the serving tests (no tests here): a tiny converted model written through
ftprefix.layout, the single source of truth of the FT format, from a toy Hugging Face model."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ftprefix import layout
from ftprefix.toy import build_model, random_prefix

HIDDEN, HEADS, LAYERS = 32, 4, 2


def hf_state(model) -> dict[str, np.ndarray]:
    state = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    for alias in layout.HF_LM_HEAD_NAMES[1:]:
        if alias in state:
            state.setdefault(layout.HF_LM_HEAD_NAMES[0], state[alias])
    return state


def write_prefix(model_dir: Path, cfg: layout.ModelConfig, name: str, prefix: np.ndarray) -> None:
    names = layout.prefix_file_names(name, cfg.tensor_para_size)
    for fname, part in zip(names, layout.prefix_to_ft(prefix, cfg), strict=True):
        part.astype(cfg.np_dtype).tofile(model_dir / fname)


def add_task(model_dir: Path, name: str, prefix: np.ndarray) -> None:
    """What `ftprefix tasks add` does: prefix files first, then config.ini (atomically)."""
    cfg = layout.read_config(model_dir)
    write_prefix(model_dir, cfg, name, prefix)
    layout.write_config(model_dir, cfg.with_tasks([*cfg.tasks, layout.Task(name, prefix.shape[0])]))


def make_converted(root: Path, tasks: dict[str, int], seed: int = 0):
    """Toy HF model + tokenizer in root/hf, FT conversion (tp 1, fp32) in root/ft/1-gpu.

    Returns (hf_model, model_dir, prefixes by task name)."""
    hf_dir = root / "hf"
    model = build_model(hf_dir, hidden_size=HIDDEN, num_heads=HEADS, num_layers=LAYERS, seed=seed)
    c = model.config
    cfg = layout.ModelConfig(
        model_name="toy",
        head_num=c.num_attention_heads,
        size_per_head=c.hidden_size // c.num_attention_heads,
        inter_size=c.intermediate_size,
        num_layer=c.num_hidden_layers,
        rotary_embedding=int(c.hidden_size // c.num_attention_heads * 0.25),
        vocab_size=c.vocab_size,
        start_id=c.bos_token_id,
        end_id=c.eos_token_id,
        use_gptj_residual=bool(c.use_parallel_residual),
        weight_data_type="fp32",
        tensor_para_size=1,
    )
    model_dir = layout.model_dir(root / "ft", 1)
    model_dir.mkdir(parents=True)
    state = hf_state(model)
    for spec in layout.base_tensors(cfg):
        parts = layout.hf_to_ft(spec, [state[s] for s in spec.sources], cfg)
        for fname, part in zip(spec.file_names(1), parts, strict=True):
            part.astype(cfg.np_dtype).tofile(model_dir / fname)
    prefixes = {}
    for i, (name, length) in enumerate(tasks.items()):
        prefix = random_prefix(length, LAYERS, HIDDEN, seed=seed + 10 + i).numpy()
        write_prefix(model_dir, cfg, name, prefix)
        prefixes[name] = prefix
    layout.write_config(model_dir, cfg.with_tasks([layout.Task(n, p.shape[0]) for n, p in prefixes.items()]))
    return model, model_dir, prefixes
