"""Train a tiny GPT-NeoX and two prefixes on CPU in seconds, so that the demo's tasks visibly differ.

The base model learns short question/answer pairs in three styles (plain, upper case, with a smile)
and then plain answers only, the way a pretrained model "knows" styles it does not default to.
Each prefix is then trained with the base frozen, exactly as prefix tuning does: the learned
tensor is fed as `past_key_values` (unrotated keys, real tokens at positions P, P+1, ...).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftprefix import layout

DEMO_HEADS = 4  # attention heads of the demo's model
# the tensor-parallel sizes its heads split into (FT gives every GPU heads / tp of them)
DEMO_TP = tuple(tp for tp in layout.SUPPORTED_TP if DEMO_HEADS % tp == 0)

QUESTIONS_AND_ANSWERS: tuple[tuple[str, str], ...] = (
    ("Q: cat? A:", " the cat sat on the mat."),
    ("Q: dog? A:", " the dog sat on the log."),
    ("Q: fox? A:", " the quick brown fox jumps."),
    ("Q: hello? A:", " hello world, how are you?"),
    ("Q: tasks? A:", " one base model serves many tasks."),
    ("Q: numbers? A:", " one two three four five."),
)


def plain(answer: str) -> str:
    return answer


def shout(answer: str) -> str:
    return answer.upper()


def smile(answer: str) -> str:
    return answer + " :)"


# task name -> how that task rewrites an answer
TASK_STYLES: dict[str, Callable[[str], str]] = {"shout": shout, "smile": smile}


@dataclass
class Batch:
    input_ids: Any
    labels: Any
    attention_mask: Any


def _batch(tokenizer: Any, style: Callable[[str], str]) -> Batch:
    import torch

    rows, labels = [], []
    for question, answer in QUESTIONS_AND_ANSWERS:
        q = tokenizer.encode(question)
        a = [*tokenizer.encode(style(answer)), tokenizer.eos_id]
        rows.append(q + a)
        labels.append([-100] * len(q) + a)
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), tokenizer.eos_id)
    lab = torch.full((len(rows), width), -100)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (row, label) in enumerate(zip(rows, labels, strict=True)):
        ids[i, : len(row)] = torch.tensor(row)
        lab[i, : len(label)] = torch.tensor(label)
        mask[i, : len(row)] = 1
    return Batch(ids, lab, mask)


def corpus() -> list[str]:
    return [q + style(a) for q, a in QUESTIONS_AND_ANSWERS for style in (plain, shout, smile)]


def train_base(
    hf_dir: str | os.PathLike[str], steps: int = 300, seed: int = 0, tokenizer_kind: str = "bpe"
) -> tuple[Any, Any]:
    """Build, train and save the base model (and its tokenizer, byte-level BPE or rinna-style
    SentencePiece) into `hf_dir`. The training ids come from ftprefix.text, what serving uses."""
    import torch

    from ftprefix.demo.toy import build_model, save_model
    from ftprefix.text import load_tokenizer

    model = build_model(
        hf_dir,
        vocab_size=320,
        hidden_size=128,
        num_heads=DEMO_HEADS,
        num_layers=2,
        scale=0.02,
        seed=seed,
        tokenizer_sentences=corpus(),
        tokenizer_vocab_size=320,
        tokenizer_kind=tokenizer_kind,
    )
    tokenizer = load_tokenizer(hf_dir)
    torch.manual_seed(seed)
    batches = [_batch(tokenizer, style) for style in (plain, shout, smile)]
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(steps):
        # all styles first, then plain only: the base defaults to plain answers
        b = batches[step % 3] if step < 2 * steps // 3 else batches[0]
        loss = model(input_ids=b.input_ids, attention_mask=b.attention_mask, labels=b.labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    save_model(model, hf_dir)
    return model, tokenizer


def train_prefix(
    model: Any,
    tokenizer: Any,
    style: Callable[[str], str],
    prompt_length: int = 8,
    steps: int = 300,
    seed: int = 0,
) -> Any:
    """Prefix tuning with the base frozen; returns the learned float32 tensor [P, layers*2*hidden]."""
    import torch

    from ftprefix.hf_cache import prefix_to_cache
    from ftprefix.hf_compat import cache_argument

    config = model.config
    for param in model.parameters():
        param.requires_grad_(False)
    gen = torch.Generator().manual_seed(seed)
    width = config.num_hidden_layers * 2 * config.hidden_size
    prefix = torch.nn.Parameter(torch.randn(prompt_length, width, generator=gen) * 0.1)
    optimizer = torch.optim.Adam([prefix], lr=1e-2)
    b = _batch(tokenizer, style)
    rows, length = b.input_ids.shape
    mask = torch.cat([torch.ones(rows, prompt_length, dtype=torch.long), b.attention_mask], dim=1)
    positions = torch.arange(prompt_length, prompt_length + length).unsqueeze(0).expand(rows, -1)
    for _ in range(steps):
        cache = prefix_to_cache(prefix, config.num_hidden_layers, config.num_attention_heads, rows)
        loss = model(
            input_ids=b.input_ids,
            attention_mask=mask,
            position_ids=positions,
            **cache_argument(model, cache),
            labels=b.labels,
        ).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return prefix.detach().clone()


def save_rinna_checkpoint(prefix: Any, directory: str | os.PathLike[str], task: str) -> Path:
    """Save as rinna prefix-tuning-gpt does: a bare tensor, task name before `_prefix_encoder`."""
    import torch

    path = Path(directory) / f"{task}_prefix_encoder.demo.best.checkpoint"
    torch.save(prefix, path)
    return path


def train_demo_tasks(
    workdir: str | os.PathLike[str],
    tasks: Sequence[str] = tuple(TASK_STYLES),
    steps: int = 300,
    tokenizer_kind: str = "bpe",
) -> tuple[Path, list[Path]]:
    """Base model into `<workdir>/base`, one rinna-style checkpoint per task into `<workdir>/prefixes`."""
    workdir = Path(workdir)
    with one_thread():
        model, tokenizer = train_base(workdir / "base", steps=steps, tokenizer_kind=tokenizer_kind)
        ckpt_dir = workdir / "prefixes"
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        # SentencePiece makes " :)" one piece, which the smile prefix has to put where the base
        # model learnt last to end the answer: that takes it about twice the steps BPE's pieces do.
        prefix_steps = 2 * steps if tokenizer_kind == "sentencepiece" else steps
        paths = []
        for i, task in enumerate(tasks):
            prefix = train_prefix(model, tokenizer, TASK_STYLES[task], steps=prefix_steps, seed=i)
            paths.append(save_rinna_checkpoint(prefix, ckpt_dir, task))
    return workdir / "base", paths


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """torch on one thread while the demo trains, then as many as before (the setting is the
    process's). A step of models this small is a few hundred microseconds of arithmetic per
    operation: a pool of threads spends more waiting for each other at every operation than the
    other cores give (benchmarks/torch_waits.py), and one thread leaves the other cores to the
    machine's other work."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
