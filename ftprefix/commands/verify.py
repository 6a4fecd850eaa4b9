"""`ftprefix verify`: prove a converted directory reproduces Hugging Face before renting a GPU."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ftprefix.commands.options import add_prefix_option, add_trust_pickle_option
from ftprefix.commands.tables import format_table


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "verify",
        help="compare a converted model with Hugging Face on CPU (base model and every task)",
        description="Run the converted FasterTransformer files on CPU with FasterTransformer's semantics and "
        "compare logits and greedy tokens with Hugging Face GPTNeoXForCausalLM given each task's original "
        "prefix as past_key_values (or its soft prompt as input embeddings). Exits 1 on a mismatch.",
    )
    p.add_argument("directory", type=Path, metavar="DIR", help="converted directory (OUT or OUT/<tp>-gpu)")
    p.add_argument(
        "--model",
        required=True,
        type=Path,
        metavar="HF_DIR",
        help="the Hugging Face model that was converted",
    )
    add_prefix_option(
        p,
        help="the original checkpoints, as given to `ftprefix convert` (NAME=PATH or PATH, "
        "comma-separated, repeatable); tasks without one are listed as not checked",
    )
    p.add_argument(
        "--atol",
        type=float,
        default=None,
        help="largest allowed max abs logit difference (default 2e-3 for fp32, 5e-2 for fp16)",
    )
    p.add_argument(
        "--gelu",
        choices=("auto", "tanh", "erf"),
        default="auto",
        help="GELU formula for the engine; auto follows the HF config's hidden_act "
        "(FasterTransformer itself always uses tanh)",
    )
    add_trust_pickle_option(p)
    p.set_defaults(func=run, extras=("verify",))


def run(args: argparse.Namespace) -> int:
    from ftprefix.commands.options import prefix_sources
    from ftprefix.errors import UserError
    from ftprefix.verify import verify_files

    if args.atol is not None and not args.atol > 0:
        raise UserError(f"--atol must be positive, got {args.atol}")
    rows = verify_files(
        args.directory,
        args.model,
        prefix_sources(args.prefix),
        atol=args.atol,
        gelu=args.gelu,
        trust_pickle=args.trust_pickle,
    )
    print(files_table(rows))
    failed = [r.task for r in rows if not r.ok]
    if failed:
        print(f"MISMATCH: {', '.join(failed)}")
        return 1
    checked = sum(r.max_abs_diff is not None for r in rows)
    print(f"ok: {checked} of {len(rows)} checked, all match")
    return 0


def files_table(rows: list[Any]) -> str:
    table = []
    for r in rows:
        if r.max_abs_diff is None:
            table.append([r.task, r.prompt_length, "-", "-", r.note])
            continue
        result = "ok" if r.ok else f"MISMATCH ({r.note})"
        table.append(
            [r.task, r.prompt_length, f"{r.max_abs_diff:.3g}", "yes" if r.greedy_equal else "no", result]
        )
    return format_table(["task", "prefix length", "max abs diff", "greedy tokens equal", "result"], table)
