"""Check a converted directory against Hugging Face: the engine's logits and greedy tokens versus
GPTNeoXForCausalLM given each task's original prefix as past_key_values (or its soft prompt as
input embeddings), on a few fixed prompts.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ftprefix import layout
from ftprefix.errors import UserError

PROMPT_LENGTHS = (4, 7, 11)
GREEDY_TOKENS = 8
DEFAULT_ATOL = {"fp32": 2e-3, "fp16": 5e-2}
# HF activation names -> the GELU formula they compute
_HF_GELU: dict[str, Literal["tanh", "erf"]] = {
    "gelu": "erf",
    "gelu_new": "tanh",
    "gelu_fast": "tanh",
    "gelu_pytorch_tanh": "tanh",
}


@dataclass
class VerifyRow:
    task: str  # "(base model)" for the plain model
    prompt_length: int
    max_abs_diff: float | None  # None: not checked
    greedy_equal: bool | None
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.max_abs_diff is None or (self.note == "" and bool(self.greedy_equal))


@dataclass
class _Reference:
    """What HF needs to reproduce one task: a canonical prefix or a soft prompt (or nothing)."""

    prefix: np.ndarray | None = None  # [P, layers*2*hidden]
    soft_prompt: np.ndarray | None = None  # [P, hidden]


def prompts(vocab_size: int, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab_size, size=n).tolist() for n in PROMPT_LENGTHS]


def _load_hf(model_dir: Path, weight_dtype: str) -> Any:
    import torch
    from transformers import GPTNeoXForCausalLM
    from transformers.utils import logging as hf_logging

    if not (model_dir / "config.json").is_file():
        raise UserError(f"--model {model_dir} is not a Hugging Face model directory (no config.json)")
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    model = GPTNeoXForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32, local_files_only=True)
    model.eval()
    if weight_dtype == "fp16":
        # the converted files hold fp16-rounded weights: give HF the same values, computed in fp32
        with torch.no_grad():
            for param in model.parameters():
                param.copy_(param.half().float())
    return model


def _hf_logits(model: Any, ids: Sequence[int], ref: _Reference, cfg: layout.ModelConfig) -> np.ndarray:
    """HF logits [len(ids), vocab] for one row with its task's prefix or soft prompt."""
    import torch

    from ftprefix.hf_cache import prefix_to_cache

    tokens = torch.tensor([list(ids)], dtype=torch.long)
    n = len(ids)
    with torch.no_grad():
        if ref.soft_prompt is not None:
            soft = torch.from_numpy(ref.soft_prompt).float()[None]
            embeds = torch.cat([soft, model.get_input_embeddings()(tokens)], dim=1)
            return model(inputs_embeds=embeds).logits[0, soft.shape[1] :].numpy()
        if ref.prefix is None:
            return model(tokens).logits[0].numpy()
        p = ref.prefix.shape[0]
        cache = prefix_to_cache(torch.from_numpy(ref.prefix).float(), cfg.num_layer, cfg.head_num)
        out = model(
            tokens,
            past_key_values=cache,
            attention_mask=torch.ones((1, p + n), dtype=torch.long),
            position_ids=torch.arange(p, p + n)[None],
        )
        return out.logits[0].numpy()


def _hf_greedy(
    model: Any, ids: Sequence[int], ref: _Reference, cfg: layout.ModelConfig, steps: int
) -> list[int]:
    seq = list(ids)
    for _ in range(steps):
        seq.append(int(_hf_logits(model, seq, ref, cfg)[-1].argmax()))
    return seq[len(ids) :]


def _references(
    cfg: layout.ModelConfig, prefix_args: Sequence[str], trust_pickle: bool
) -> dict[str, _Reference]:
    if not prefix_args:
        return {}
    from ftprefix.converter.checkpoints import load_checkpoint, parse_prefix_args

    refs: dict[str, _Reference] = {}
    for source in parse_prefix_args(prefix_args):
        cfg.task_id(source.name)  # UserError naming the known tasks if absent
        ckpt = load_checkpoint(source, trust_pickle=trust_pickle, hidden_size=cfg.hidden_units)
        tensor = np.asarray(ckpt.tensor, dtype=np.float32)
        if cfg.weight_data_type == "fp16":
            tensor = tensor.astype(np.float16).astype(np.float32)
        if ckpt.kind == "soft_prompt":
            refs[source.name] = _Reference(soft_prompt=tensor)
        else:
            if tensor.shape[1] != layout.prefix_width(cfg):
                raise UserError(
                    f"task {source.name}: {source.path} holds {tensor.shape[1]} values per token, "
                    f"the converted model needs {layout.prefix_width(cfg)}; is it for another model?"
                )
            refs[source.name] = _Reference(prefix=tensor)
    return refs


def verify(
    directory: str | os.PathLike[str],
    model_dir: str | os.PathLike[str],
    prefix_args: Sequence[str] = (),
    *,
    atol: float | None = None,
    gelu: Literal["auto", "tanh", "erf"] = "auto",
    trust_pickle: bool = False,
) -> list[VerifyRow]:
    """One row for the base model and one per task of the converted directory."""
    from ftprefix.engine.engine import Engine

    ft_dir = layout.find_model_dir(directory)
    cfg = layout.read_config(ft_dir)
    hf = _load_hf(Path(model_dir), cfg.weight_data_type)
    hc = hf.config
    if (hc.num_hidden_layers, hc.hidden_size, hc.vocab_size) != (
        cfg.num_layer,
        cfg.hidden_units,
        cfg.vocab_size,
    ):
        raise UserError(
            f"--model {model_dir} has {hc.num_hidden_layers} layers, hidden {hc.hidden_size}, vocab "
            f"{hc.vocab_size}; the converted model has {cfg.num_layer}, {cfg.hidden_units}, {cfg.vocab_size}"
        )
    if gelu == "auto":
        act = getattr(hc, "hidden_act", "gelu")
        if act not in _HF_GELU:
            raise UserError(
                f"--model uses activation {act!r}; FasterTransformer's GPT-NeoX computes GELU only"
            )
        gelu = _HF_GELU[act]
    tolerance = DEFAULT_ATOL[cfg.weight_data_type] if atol is None else atol
    refs = _references(cfg, prefix_args, trust_pickle)
    engine = Engine.load(ft_dir, gelu=gelu)
    rows = [_check(engine, hf, cfg, "(base model)", None, _Reference(), tolerance)]
    for task_id, task in enumerate(cfg.tasks):
        if task.name not in refs:
            rows.append(
                VerifyRow(
                    task.name, task.prompt_length, None, None, f"not checked: pass --prefix {task.name}=PATH"
                )
            )
            continue
        rows.append(_check(engine, hf, cfg, task.name, task_id, refs[task.name], tolerance))
    return rows


def _check(
    engine: Any,
    hf: Any,
    cfg: layout.ModelConfig,
    name: str,
    task_id: int | None,
    ref: _Reference,
    tolerance: float,
) -> VerifyRow:
    from ftprefix.engine.api import GenerationRequest

    batch = prompts(cfg.vocab_size)
    ours = engine.logits(batch, [task_id] * len(batch))
    diff = max(
        float(np.abs(o - _hf_logits(hf, ids, ref, cfg)).max()) for o, ids in zip(ours, batch, strict=True)
    )
    generated = engine.generate(
        [GenerationRequest(ids, GREEDY_TOKENS, task_id=task_id, end_id=-1) for ids in batch]
    )
    greedy_equal = all(
        g.generated_ids == _hf_greedy(hf, ids, ref, cfg, GREEDY_TOKENS)
        for g, ids in zip(generated, batch, strict=True)
    )
    prompt_length = 0 if task_id is None else cfg.tasks[task_id].prompt_length
    note = "" if diff <= tolerance else f"logits differ by more than {tolerance:g}"
    if not greedy_equal:
        note = "; ".join(n for n in (note, "greedy tokens differ") if n)
    return VerifyRow(name, prompt_length, diff, greedy_equal, note)


def format_rows(rows: Sequence[VerifyRow]) -> str:
    header = ["task", "prefix length", "max abs diff", "greedy tokens equal", "result"]
    table = [header]
    for r in rows:
        if r.max_abs_diff is None:
            table.append([r.task, str(r.prompt_length), "-", "-", r.note])
            continue
        result = "ok" if r.ok else f"MISMATCH ({r.note})"
        table.append(
            [r.task, str(r.prompt_length), f"{r.max_abs_diff:.3g}", "yes" if r.greedy_equal else "no", result]
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in table
    )
