"""CPU tokens/s: the reference engine (batch 1, and batch 8 with 8 different tasks in one batch)
versus Hugging Face `generate` with the prefix as past_key_values (what PEFT prefix tuning does),
run task by task. Same toy model, same lengths, one run.

    .venv/bin/python benchmarks/engine.py [--hidden 256 --layers 4 --new-tokens 64 --threads 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ftprefix.hf_compat import cache_argument


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--prefix-length", type=int, default=16)
    parser.add_argument("--input-length", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from transformers import DynamicCache
    from transformers.utils import logging as hf_logging

    from ftprefix.converter import convert
    from ftprefix.converter.checkpoints import PrefixSource
    from ftprefix.demo import toy
    from ftprefix.engine import Engine, GenerationRequest

    hf_logging.set_verbosity_error()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = toy.build_model(
            root / "hf",
            vocab_size=args.vocab,
            hidden_size=args.hidden,
            num_heads=args.heads,
            num_layers=args.layers,
            with_tokenizer=False,
        )
        prefixes = []
        sources = []
        for i in range(args.tasks):
            prefix = toy.random_prefix(args.prefix_length, args.layers, args.hidden, seed=i)
            torch.save(prefix, root / f"task{i}.pt")
            prefixes.append(prefix)
            sources.append(PrefixSource(f"task{i}", root / f"task{i}.pt"))
        convert(root / "hf", sources, root / "ft", tp=1, dtype="fp32")
        engine = Engine.load(root / "ft", threads=args.threads)

        rng = np.random.default_rng(0)
        prompts = [rng.integers(0, args.vocab, args.input_length).tolist() for _ in range(args.tasks)]
        n = args.new_tokens

        def engine_run(rows: list[int]) -> float:
            requests = [GenerationRequest(prompts[i], n, task_id=i, end_id=-1) for i in rows]
            start = time.perf_counter()
            results = engine.generate(requests)
            elapsed = time.perf_counter() - start
            assert all(len(r.generated_ids) == n for r in results)
            return len(rows) * n / elapsed

        heads, head_dim = args.heads, args.hidden // args.heads

        def hf_run(task: int) -> float:
            p = args.prefix_length
            kv = prefixes[task].view(p, args.layers, 2, heads, head_dim)
            cache = DynamicCache()
            for layer in range(args.layers):
                cache.update(
                    kv[:, layer, 0].permute(1, 0, 2)[None].contiguous(),
                    kv[:, layer, 1].permute(1, 0, 2)[None].contiguous(),
                    layer,
                )
            ids = torch.tensor([prompts[task]])
            start = time.perf_counter()
            with torch.inference_mode():
                out = model.generate(
                    ids,
                    **cache_argument(model, cache),
                    attention_mask=torch.ones((1, p + ids.shape[1]), dtype=torch.long),
                    max_new_tokens=n,
                    min_new_tokens=n,
                    do_sample=False,
                    pad_token_id=0,
                )
            elapsed = time.perf_counter() - start
            assert out.shape[1] - ids.shape[1] == n
            return n / elapsed

        engine_run([0])  # warm-up
        hf_run(0)
        batch1 = engine_run([0])
        batch_all = engine_run(list(range(args.tasks)))
        start = time.perf_counter()
        for task in range(args.tasks):
            hf_run(task)
        hf_sequential = args.tasks * n / (time.perf_counter() - start)
        hf_single = hf_run(0)

    print(
        f"model: hidden {args.hidden}, {args.layers} layers, vocab {args.vocab}; "
        f"prefix {args.prefix_length}, input {args.input_length}, {n} new tokens, {args.threads} threads"
    )
    print(f"{'run':<52} {'tokens/s':>10}")
    print(f"{'engine, batch 1 (one task)':<52} {batch1:>10.1f}")
    print(f"{f'engine, batch {args.tasks} ({args.tasks} different tasks)':<52} {batch_all:>10.1f}")
    print(f"{'HF generate + prefix, one task':<52} {hf_single:>10.1f}")
    print(f"{f'HF generate + prefix, {args.tasks} tasks one after another':<52} {hf_sequential:>10.1f}")
    print(f"mixed-task batch vs per-task sequential HF: {batch_all / hf_sequential:.1f}x")
    print(f"mixed-task batch vs engine batch 1: {batch_all / batch1:.1f}x")


if __name__ == "__main__":
    main()
