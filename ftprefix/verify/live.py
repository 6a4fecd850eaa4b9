"""Check what is deployed: a live server (FT on GPUs or `ftprefix serve`) against Hugging Face.

One mixed batch of greedy requests goes to the server: a few prompts of different lengths per task
(one request, rows padded as FT pads them) and for the base model (its own request: FT has no id
for "no task"). Each row's tokens are compared with Hugging Face `GPTNeoXForCausalLM` given the
task's original checkpoint. Two greedy answers can part where two logits nearly tie (fp16, the
GELU form, LayerNorm eps); such a first difference is reported as a near tie with the logit gap
Hugging Face sees, and counted apart; a layout error shows up as differences with large gaps.

A decoupled (streaming) model is checked response by response: every streamed response must hold
a prefix of the final answer, in FT's layout. That is how an image without the fix for FT issue
#704 shows itself: its streamed tokens, and then its final answer, go wrong without any error.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ftprefix import layout, model_dirs, protocol
from ftprefix.client import Client, MalformedResponseError, wire
from ftprefix.client.base import OpenStream
from ftprefix.client.model_info import ModelInfo
from ftprefix.client.plan import Plan, Request
from ftprefix.client.sync import ResponseStream
from ftprefix.client.types import GenerationParams
from ftprefix.converter.checkpoints import PrefixSource
from ftprefix.converter.hf_config import read_hf_config
from ftprefix.errors import UserError
from ftprefix.task_table import unknown_name_hint
from ftprefix.verify.files import BASE_NAME
from ftprefix.verify.progress import Progress, Say
from ftprefix.verify.reference import BASE, TaskReference, hf_answer, hf_logits, load_hf, task_references

PROMPT_LENGTHS = (3, 6, 10)
NEW_TOKENS = 8
# Largest logit gap (Hugging Face's) at which a first difference still counts as a near tie.
DEFAULT_TIE_GAP = {"fp32": 0.01, "fp16": 0.25}


@dataclass(frozen=True)
class Difference:
    row: int  # prompt of the task, 0-based
    position: int  # generated token index
    expected: int
    got: int
    gap: float  # HF logit of `expected` minus that of `got`


@dataclass
class LiveCheck:
    task: str  # BASE_NAME for the plain model
    prompt_length: int
    compared: int = 0  # tokens compared
    first: Difference | None = None  # the first difference that is not a near tie
    near_ties: list[Difference] = field(default_factory=list)
    note: str = ""  # not checked, or what went wrong with the server's answer

    @property
    def checked(self) -> bool:
        return not self.note.startswith("not checked")

    @property
    def ok(self) -> bool:
        return self.first is None and (not self.checked or self.note == "")


@dataclass
class LiveReport:
    url: str
    decoupled: bool
    rows: list[LiveCheck]

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.rows)


def _prompts(vocab: int, task_index: int) -> list[list[int]]:
    rng = np.random.default_rng(1000 + task_index)
    return [rng.integers(0, vocab, size=n).tolist() for n in PROMPT_LENGTHS]


def _compare(
    check: LiveCheck,
    row: int,
    hf: Any,
    ids: list[int],
    ref: TaskReference,
    cfg: layout.ModelConfig,
    expected: list[int],
    got: list[int],
    tie_gap: float,
) -> None:
    for position, want in enumerate(expected):
        token = got[position] if position < len(got) else None
        if token == want:
            check.compared += 1
            continue
        if token is None:
            check.note = (
                check.note or f"row {row} ends after {len(got)} tokens, Hugging Face after {len(expected)}"
            )
            return
        logits = hf_logits(hf, ids + expected[:position], ref, cfg)[-1]
        diff = Difference(row, position, want, token, float(logits[want] - logits[token]))
        check.compared += 1
        if diff.gap <= tie_gap:
            check.near_ties.append(diff)  # past it the two answers continue different texts
        elif check.first is None:
            check.first = diff
        return
    if len(got) > len(expected):
        check.note = check.note or f"row {row} goes on past Hugging Face's end_id"


def _stream_one(
    target: tuple[str, bool], model: str, request: Request, names: list[str], timeout: float
) -> list[dict]:
    """Every response of one request to a decoupled model, in order (the last is the final one).
    `target`: the gRPC address and whether it speaks TLS, as a `Client` reads them from a URL."""
    stream = ResponseStream(*target, timeout, OpenStream(model, request, names))
    try:
        responses = []
        while (outputs := stream.next()) is not None:
            responses.append(outputs)
        return responses
    finally:
        stream.close()


def _streamed_answers(
    target: tuple[str, bool], info: ModelInfo, plan: Plan, timeout: float
) -> tuple[list[list[int]], list[str]]:
    """Each row's final tokens, and what is wrong with the streamed responses (per row, "" if nothing)."""
    finals: dict[int, list[int]] = {}
    problems = [""] * len(plan.rows)
    for request in plan.requests():
        responses = _stream_one(target, info.name, request, plan.outputs(), timeout)
        specs = [plan.row_spec(i) for i in request.rows]
        last = responses[-1]
        answers = wire.read_rows(last[protocol.OUTPUT_IDS], last[protocol.SEQUENCE_LENGTH], specs, final=True)
        for i, answer in zip(request.rows, answers, strict=True):
            finals[i] = answer.tokens
        for step, response in enumerate(responses[:-1], start=1):
            try:
                partial = wire.read_rows(
                    response[protocol.OUTPUT_IDS], response[protocol.SEQUENCE_LENGTH], specs, final=False
                )
            except MalformedResponseError as exc:
                for i in request.rows:
                    problems[i] = problems[i] or f"streamed response {step}: {exc}"
                continue
            for i, answer in zip(request.rows, partial, strict=True):
                if answer.tokens != finals[i][: len(answer.tokens)] and not problems[i]:
                    problems[i] = f"streamed response {step} is not a prefix of the final answer"
    return [finals[i] for i in range(len(plan.rows))], problems


def verify_server(
    url: str,
    hf_dir: str | Path,
    sources: Sequence[PrefixSource] = (),
    *,
    tie_gap: float | None = None,
    timeout: float = 120.0,
    trust_pickle: bool = False,
    say: Say | None = None,
) -> LiveReport:
    """One row for the base model and one per task the server serves. `say` gets a line per stage
    and per check done."""
    progress = Progress(say)
    hf_dir = Path(hf_dir)
    for source in sources:  # before the server is asked anything
        source.check_exists()
    with Client(url, timeout=timeout, connect_retries=1) as client:
        info = client.model_info()
        target = client.url, client.tls  # a URL's scheme dropped, its TLS kept
    dtype = info.data_type if info.data_type in layout.WEIGHT_DTYPES else "fp32"
    for source in sources:
        if info.tasks.find(source.name) is None:
            hint = unknown_name_hint(source.name, info.tasks.names)
            raise UserError(f"the server at {url} serves no task {source.name!r}; {hint}")
    cfg = read_hf_config(hf_dir).to_ft(tp=1, dtype=dtype, model_name=model_dirs.model_name(hf_dir))
    refs = task_references(cfg, sources, trust_pickle)
    for name, ref in refs.items():
        served = info.tasks.find(name)
        assert served is not None
        if served.prompt_length != ref.prompt_length:
            raise UserError(
                f"task {name}: the server's prefix has {served.prompt_length} tokens, the checkpoint "
                f"{ref.prompt_length}; is --prefix the checkpoint this task was converted from?"
            )
    end_id = info.end_id if info.end_id is not None else cfg.end_id
    hf = load_hf(hf_dir, dtype)
    progress.stage("read the Hugging Face model")

    checks = [LiveCheck(BASE_NAME, 0)]
    rows: list[tuple[int, list[int], str | None]] = [(0, p, None) for p in _prompts(cfg.vocab_size, 0)]
    for task in info.tasks.live:
        if task.name not in refs:
            checks.append(
                LiveCheck(task.name, task.prompt_length, note=f"not checked: pass --prefix {task.name}=PATH")
            )
            continue
        checks.append(LiveCheck(task.name, task.prompt_length))
        rows += [(len(checks) - 1, p, task.name) for p in _prompts(cfg.vocab_size, task.id + 1)]

    prompts = [ids for _, ids, _ in rows]
    tasks = [name for _, _, name in rows]
    problems = [""] * len(rows)
    if info.decoupled:
        params = GenerationParams(max_new_tokens=NEW_TOKENS, end_id=end_id)
        plan = Plan.build(prompts, tasks, params, info, None)
        answers, problems = _streamed_answers(target, info, plan, timeout)
    else:
        with Client(url, timeout=timeout) as client:
            completions = client.generate_batch(
                prompts, tasks=tasks, max_new_tokens=NEW_TOKENS, end_id=end_id
            )
        answers = [c.token_ids for c in completions]

    progress.total = 1 + len(refs)
    progress.stage(f"the server answered {len(rows)} rows", f"{progress.total} checks")
    gap = DEFAULT_TIE_GAP[dtype] if tie_gap is None else tie_gap
    row_of_task: dict[int, int] = {}
    answered = zip(rows, answers, problems, strict=True)
    for index, ((check_index, ids, name), got, problem) in enumerate(answered):
        check = checks[check_index]
        row = row_of_task[check_index] = row_of_task.get(check_index, -1) + 1
        ref = BASE if name is None else refs[name]
        _compare(check, row, hf, ids, ref, cfg, hf_answer(hf, ids, ref, cfg, NEW_TOKENS, end_id)[1], got, gap)
        if problem:
            check.note = check.note or problem
        if index + 1 == len(rows) or rows[index + 1][0] != check_index:  # the check's last row
            progress.counted(check.task)
    return LiveReport(url, info.decoupled, checks)
