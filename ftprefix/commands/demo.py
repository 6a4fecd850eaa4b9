"""`ftprefix demo`: the whole path on this machine, offline, in a couple of minutes.

Train -> convert -> verify -> serve -> ask each task, each stage through the same public API a user
would call (converter, verify, EmbeddedServer, Client), so the demo doubles as an end-to-end check
of the embedded default.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ftprefix.commands.tables import format_table
from ftprefix.demo.training import DEMO_TP

BASE_COLUMN = "(base model)"


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
    p.add_argument(
        "--tp",
        type=int,
        default=2,
        choices=DEMO_TP,
        help="tensor-parallel size to convert for (default 2; the demo's model has 4 attention heads)",
    )
    p.add_argument("--dtype", choices=("fp16", "fp32"), default="fp16")
    p.add_argument("--steps", type=int, default=300, help="training steps for the base model and each prefix")
    p.add_argument(
        "--tokenizer",
        choices=("bpe", "sentencepiece"),
        default="bpe",
        help=(
            "bpe: a byte-level BPE tokenizer.json, as GPT-NeoX and Pythia ship (default); sentencepiece: "
            "spiece.model with a T5Tokenizer config, as rinna's japanese-gpt-neox models ship"
        ),
    )
    p.set_defaults(func=run, extras=("serve", "verify"))


@dataclass
class DemoResult:
    questions: tuple[str, ...]
    # column name (task or BASE_COLUMN) -> one answer per question
    answers: dict[str, list[str]] = field(default_factory=dict)
    stage_seconds: dict[str, float] = field(default_factory=dict)


def run_demo(
    workdir: Path,
    *,
    tp: int = 2,
    dtype: str = "fp16",
    steps: int = 300,
    max_new_tokens: int = 24,
    tokenizer_kind: str = "bpe",
    say: Callable[[str], None] = print,
) -> DemoResult:
    """Run every stage in `workdir` and return the answers; raises UserError if verify fails."""
    from ftprefix.client import Client
    from ftprefix.commands.verify import files_table
    from ftprefix.converter import convert
    from ftprefix.converter.checkpoints import PrefixSource
    from ftprefix.demo.training import QUESTIONS_AND_ANSWERS, TASK_STYLES, train_demo_tasks
    from ftprefix.errors import UserError
    from ftprefix.serving.server import EmbeddedServer
    from ftprefix.verify import verify_files

    result = DemoResult(tuple(q for q, _ in QUESTIONS_AND_ANSWERS[:3]))
    clock = time.perf_counter()

    def stage(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        result.stage_seconds[name] = now - clock
        clock = now

    kind = {"bpe": "a byte-level BPE tokenizer", "sentencepiece": "a SentencePiece tokenizer (rinna's kind)"}
    say(
        f"[1/5] training a tiny GPT-NeoX with {kind[tokenizer_kind]} and {len(TASK_STYLES)} prefixes "
        f"({', '.join(TASK_STYLES)}) on CPU"
    )
    hf_dir, checkpoints = train_demo_tasks(workdir, steps=steps, tokenizer_kind=tokenizer_kind)
    sources = [PrefixSource.at(path) for path in checkpoints]
    stage("train")

    say(f"[2/5] ftprefix convert --tp {tp} --dtype {dtype}")
    report = convert(
        hf_dir, sources, workdir / "ft", tp=tp, dtype=dtype, warn=lambda m: say(f"      note: {m}")
    )
    stage("convert")

    say("[3/5] ftprefix verify: engine on the converted files vs Hugging Face with the original prefixes")
    checked = verify_files(report.ft_dir, hf_dir, sources)
    say(files_table(checked.rows))
    if not checked.ok:
        raise UserError("verify found a mismatch between the converted files and the Hugging Face model")
    stage("verify")

    say("[4/5] ftprefix serve: starting Triton Inference Server on CPU")
    with EmbeddedServer(report.ft_dir, tokenizer_dir=hf_dir, stop_timeout=0) as server:
        say(f"      listening on grpc {server.grpc_url}, http {server.http_url}")
        stage("serve")
        say("[5/5] one request per task through the gRPC client")
        with Client(server.grpc_url, tokenizer=hf_dir) as client:
            columns: list[str | None] = [None, *(t.name for t in client.tasks())]
            for task in columns:
                answers = [
                    client.generate(q, task=task, max_new_tokens=max_new_tokens).text or ""
                    for q in result.questions
                ]
                result.answers[task or BASE_COLUMN] = [a.strip() for a in answers]
        stage("ask")
    return result


def answers_table(result: DemoResult) -> str:
    """Questions down, tasks across."""
    rows = [[q, *(answers[i] for answers in result.answers.values())] for i, q in enumerate(result.questions)]
    return format_table(["prompt", *result.answers], rows)


def run(args: argparse.Namespace) -> int:
    from ftprefix import layout
    from ftprefix.errors import UserError
    from ftprefix.serving.server import ServerError, check_repository_place

    if args.steps < 1:  # before a minute of training, as every check here
        raise UserError(f"--steps must be at least 1, got {args.steps}")
    if args.workdir is not None:
        layout.check_creatable(args.workdir, "--workdir")
        if args.workdir.exists() and any(args.workdir.iterdir()):
            raise UserError(f"--workdir {args.workdir} is not empty; pass a new or empty directory")
    check_repository_place()  # the server of step 4, before a minute of training
    start = time.perf_counter()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="ftprefix-demo-"))
    try:
        result = run_demo(
            workdir, tp=args.tp, dtype=args.dtype, steps=args.steps, tokenizer_kind=args.tokenizer
        )
    except ServerError as exc:  # Triton's reason and its log's tail, as `serve` prints them
        print(f"ftprefix demo: error: {exc}", file=sys.stderr)
        return 1
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print()
    print(answers_table(result))
    stages = ", ".join(f"{k} {v:.1f}s" for k, v in result.stage_seconds.items())
    print(f"\ndone in {time.perf_counter() - start:.1f}s ({stages})")
    if args.workdir is not None:
        print(f"artefacts kept in {args.workdir}: base/ (HF model), prefixes/ (checkpoints), ft/ (converted)")
    return 0
