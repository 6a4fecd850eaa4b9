"""`ftprefix verify`: prove a converted directory reproduces Hugging Face before renting a GPU."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "verify",
        help="compare a converted model with Hugging Face on CPU (base model and every task)",
        description="Run the converted FasterTransformer files on CPU with FasterTransformer's semantics and "
        "compare logits and greedy tokens with Hugging Face GPTNeoXForCausalLM given each task's original "
        "prefix as past_key_values (or its soft prompt as input embeddings). Exits 1 on a mismatch.",
    )
    p.add_argument("directory", type=Path, metavar="DIR", help="converted directory (OUT or OUT/<tp>-gpu)")
    p.add_argument("--model", required=True, type=Path, metavar="HF_DIR",
                   help="the Hugging Face model that was converted")
    p.add_argument("--prefix", action="append", default=[], metavar="CKPTS",
                   help="the original checkpoints, as given to `ftprefix convert` (NAME=PATH or PATH, "
                   "comma-separated, repeatable); tasks without one are listed as not checked")
    p.add_argument("--atol", type=float, default=None,
                   help="largest allowed max abs logit difference (default 2e-3 for fp32, 5e-2 for fp16)")
    p.add_argument("--gelu", choices=("auto", "tanh", "erf"), default="auto",
                   help="GELU formula for the engine; auto follows the HF config's hidden_act "
                   "(FasterTransformer itself always uses tanh)")
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow torch pickles that run code when loaded (only for files you trust)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ftprefix.engine.verify import format_rows, verify
    from ftprefix.errors import UserError

    if args.atol is not None and not args.atol > 0:
        raise UserError(f"--atol must be positive, got {args.atol}")
    rows = verify(args.directory, args.model, args.prefix, atol=args.atol, gelu=args.gelu,
                  trust_pickle=args.trust_pickle)
    print(format_rows(rows))
    failed = [r.task for r in rows if not r.ok]
    if failed:
        print(f"MISMATCH: {', '.join(failed)}")
        return 1
    checked = sum(r.max_abs_diff is not None for r in rows)
    print(f"ok: {checked} of {len(rows)} checked, all match")
    return 0
