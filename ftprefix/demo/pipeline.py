"""The whole ftprefix path on one CPU, offline: train -> convert -> verify -> serve -> ask each task.

Each stage uses the same public API a user would (converter, verify, EmbeddedServer, Client), so
the demo doubles as an end-to-end check of the embedded default.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ftprefix.demo.training import QUESTIONS_AND_ANSWERS, TASK_STYLES

DEMO_QUESTIONS = tuple(q for q, _ in QUESTIONS_AND_ANSWERS[:3])
BASE_COLUMN = "(base model)"


@dataclass
class DemoResult:
    questions: tuple[str, ...]
    # column name (task or BASE_COLUMN) -> one answer per question
    answers: dict[str, list[str]] = field(default_factory=dict)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    converted_dir: Path | None = None
    model_dir: Path | None = None


def run_demo(
    workdir: str | os.PathLike[str],
    *,
    tp: int = 2,
    dtype: str = "fp16",
    steps: int = 300,
    max_new_tokens: int = 24,
    say: Callable[[str], None] = print,
) -> DemoResult:
    """Run every stage in `workdir` and return the answers; raises UserError if verify fails."""
    from ftprefix.client import Client
    from ftprefix.converter import convert
    from ftprefix.converter.checkpoints import parse_prefix_args
    from ftprefix.demo.training import train_demo_tasks
    from ftprefix.engine.verify import format_rows, verify
    from ftprefix.errors import UserError
    from ftprefix.serving.server import EmbeddedServer

    workdir = Path(workdir)
    result = DemoResult(DEMO_QUESTIONS)
    clock = time.perf_counter()

    def stage(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        result.stage_seconds[name] = now - clock
        clock = now

    say(f"[1/5] training a tiny GPT-NeoX and {len(TASK_STYLES)} prefixes ({', '.join(TASK_STYLES)}) on CPU")
    model_dir, checkpoints = train_demo_tasks(workdir, steps=steps)
    result.model_dir = model_dir
    stage("train")

    say(f"[2/5] ftprefix convert --tp {tp} --dtype {dtype}")
    prefix_arg = ",".join(str(p) for p in checkpoints)
    report = convert(
        model_dir,
        parse_prefix_args([prefix_arg]),
        workdir / "ft",
        tp=tp,
        dtype=dtype,
        warn=lambda m: say(f"      note: {m}"),
    )
    result.converted_dir = report.model_dir
    stage("convert")

    say("[3/5] ftprefix verify: engine on the converted files vs Hugging Face with the original prefixes")
    rows = verify(report.model_dir, model_dir, [prefix_arg])
    say(format_rows(rows))
    if not all(r.ok for r in rows):
        raise UserError("verify found a mismatch between the converted files and the Hugging Face model")
    stage("verify")

    say("[4/5] ftprefix serve: starting Triton Inference Server on CPU")
    with EmbeddedServer(report.model_dir, tokenizer_dir=model_dir) as server:
        say(f"      listening on grpc {server.grpc_url}, http {server.http_url}")
        stage("serve")
        say("[5/5] one request per task through the gRPC client")
        with Client(server.grpc_url, tokenizer=model_dir) as client:
            columns: list[str | None] = [None, *(t.name for t in client.tasks())]
            for task in columns:
                answers = [
                    client.generate(q, task=task, max_new_tokens=max_new_tokens).text or ""
                    for q in DEMO_QUESTIONS
                ]
                result.answers[task or BASE_COLUMN] = [a.strip() for a in answers]
        stage("ask")
    return result


def format_answers(result: DemoResult) -> str:
    """Questions down, tasks across."""
    header = ["prompt", *result.answers]
    table = [header] + [
        [q, *(answers[i] for answers in result.answers.values())] for i, q in enumerate(result.questions)
    ]
    widths = [max(len(row[c]) for row in table) for c in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
