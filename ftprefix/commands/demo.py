"""`ftprefix demo`: the whole path on this machine, offline, in a couple of minutes."""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="train two tiny prefixes, convert, verify, serve on CPU Triton and ask each task",
        description=(
            "Builds a small GPT-NeoX and tokenizer locally, trains two prefix-tuned tasks on CPU (one "
            "answers in upper case, one adds a smile), converts them with --tp 2, verifies them, starts a "
            "real Triton server on CPU, sends one request per task and prints the answers side by side."
        ),
    )
    p.add_argument("--workdir", type=Path, help="keep every artefact here (default: a temporary directory)")
    p.add_argument("--tp", type=int, default=2, help="tensor-parallel size to convert for (default 2)")
    p.add_argument("--dtype", choices=("fp16", "fp32"), default="fp16")
    p.add_argument("--steps", type=int, default=300, help="training steps for the base model and each prefix")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ftprefix.demo.pipeline import format_answers, run_demo
    from ftprefix.errors import UserError

    if args.workdir is not None and args.workdir.exists() and any(args.workdir.iterdir()):
        raise UserError(f"--workdir {args.workdir} is not empty; pass a new or empty directory")
    start = time.perf_counter()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="ftprefix-demo-"))
    try:
        result = run_demo(workdir, tp=args.tp, dtype=args.dtype, steps=args.steps)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print()
    print(format_answers(result))
    stages = ", ".join(f"{k} {v:.1f}s" for k, v in result.stage_seconds.items())
    print(f"\ndone in {time.perf_counter() - start:.1f}s ({stages})")
    if args.workdir is not None:
        print(f"artefacts kept in {args.workdir}: base/ (HF model), prefixes/ (checkpoints), ft/ (converted)")
    return 0
