"""Check converted files before renting a GPU: the CPU engine (FT's semantics) on the converted
directory versus Hugging Face given each task's original checkpoint, on a few fixed prompts:
logits and greedy tokens.
"""

from __future__ import annotations

import gc
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ftprefix import layout
from ftprefix.converter.checkpoints import PrefixSource
from ftprefix.converter.hf_config import GELU_FORMULA
from ftprefix.errors import UserError
from ftprefix.task_table import unknown_name_hint
from ftprefix.verify.progress import Progress, Say
from ftprefix.verify.reference import (
    BASE,
    TaskReference,
    check_shapes,
    hf_answer,
    load_hf,
    task_references,
)

PROMPT_LENGTHS = (4, 7, 11)
GREEDY_TOKENS = 8
DEFAULT_ATOL = {"fp32": 2e-3, "fp16": 5e-2}
BASE_NAME = "(base model)"


@dataclass
class Fp16Check:
    """The engine run with fp16 activations (as FT's fp16 model keeps them) on the verify prompts."""

    largest: dict[int, float]  # layer (-1: embeddings, num_layer: final LayerNorm and logits) -> max |x|
    non_finite: list[int]  # layers where a value overflowed to inf or became nan
    logit_error: float  # largest |logit| difference from the fp32 run (inf when non-finite)

    @property
    def ok(self) -> bool:
        return not self.non_finite


@dataclass
class FilesReport:
    rows: list[FileCheck]
    fp16: Fp16Check | None  # for fp16 conversions

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.rows) and (self.fp16 is None or self.fp16.ok)


@dataclass
class FileCheck:
    task: str  # BASE_NAME for the plain model
    prompt_length: int
    max_abs_diff: float | None  # None: not checked
    greedy_equal: bool | None
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.max_abs_diff is None or (self.note == "" and bool(self.greedy_equal))


def prompts(vocab_size: int, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab_size, size=n).tolist() for n in PROMPT_LENGTHS]


def unknown_tasks(cfg: layout.ModelConfig, sources: Sequence[PrefixSource]) -> None:
    """Refuse a checkpoint that is not there, or whose task the conversion does not have."""
    for source in sources:
        source.check_exists()
        if cfg.tasks.find(source.name) is None:
            hint = unknown_name_hint(source.name, cfg.tasks.names)
            raise UserError(f"unknown task {source.name!r} in the converted model; {hint}")


@dataclass
class _Answers:
    """What Hugging Face answered for one check: the logits of every prompt (in a scratch file:
    thousands of tasks' would not fit in memory) and the greedy tokens."""

    logits_file: Path
    greedy: list[list[int]]

    def logits(self, lengths: Sequence[int]) -> list[np.ndarray]:
        rows = np.load(self.logits_file, mmap_mode="r")
        ends = np.cumsum(lengths)
        return [rows[end - n : end] for n, end in zip(lengths, ends, strict=True)]


def verify_files(
    directory: str | os.PathLike[str],
    hf_dir: str | os.PathLike[str],
    sources: Sequence[PrefixSource] = (),
    *,
    atol: float | None = None,
    gelu: Literal["auto", "tanh", "erf"] = "auto",
    trust_pickle: bool = False,
    say: Say | None = None,
) -> FilesReport:
    """One row for the base model and one per task of the converted directory; for an fp16
    conversion also the fp16-activation check. `say` gets a line per stage and per check done.

    Hugging Face answers every check first and its model is released before the converted one is
    read: both in float32 at once would need twice a large model's memory (about 29 GB for a
    3.6 B model, where either alone fits in 16)."""
    from ftprefix.engine.engine import Engine

    progress = Progress(say)
    ft_dir = layout.find_ft_dir(directory)
    cfg = layout.read_config(ft_dir)
    unknown_tasks(cfg, sources)
    hf = load_hf(Path(hf_dir), cfg.weight_data_type)
    check_shapes(hf, cfg, Path(hf_dir))
    if gelu == "auto":
        act = getattr(hf.config, "hidden_act", "gelu")
        if act not in GELU_FORMULA:
            raise UserError(
                f"--model uses activation {act!r}; FasterTransformer's GPT-NeoX computes GELU only"
            )
        gelu = GELU_FORMULA[act]
    tolerance = DEFAULT_ATOL[cfg.weight_data_type] if atol is None else atol
    refs = task_references(cfg, sources, trust_pickle)
    # by task id (None: the base model): the name it is reported under and its reference
    checks: dict[int | None, tuple[str, TaskReference]] = {None: (BASE_NAME, BASE)}
    checks |= {task.id: (task.name, refs[task.name]) for task in cfg.tasks.live if task.name in refs}
    fp16 = cfg.weight_data_type == "fp16"
    progress.total = len(checks)
    progress.stage("read the Hugging Face model", f"its answers for {len(checks)} checks")
    batch = prompts(cfg.vocab_size)
    with tempfile.TemporaryDirectory(prefix="ftprefix-verify-") as scratch:
        answers: dict[int | None, _Answers] = {}
        for task_id, (name, ref) in checks.items():
            answers[task_id] = _hf_answers(hf, batch, ref, cfg, Path(scratch) / f"{len(answers)}.npy")
            progress.counted(name, "Hugging Face answered")
        del hf
        gc.collect()  # the model's memory goes back before the converted one is read

        engine = Engine.load(ft_dir, gelu=gelu)
        progress.total, progress.done = len(checks) + fp16, 0
        progress.stage("read the converted model", f"{progress.total} checks")
        rows: list[FileCheck] = []
        for task in [None, *cfg.tasks.live]:
            task_id = None if task is None else task.id
            if task_id not in checks:
                note = f"not checked: pass --prefix {task.name}=PATH"
                rows.append(FileCheck(task.name, task.prompt_length, None, None, note))
                continue
            name, ref = checks[task_id]
            rows.append(_check(engine, answers[task_id], batch, name, task_id, ref, tolerance))
            progress.counted(name)
    activations = check_fp16(engine) if fp16 else None
    if fp16:
        progress.counted("fp16 activations")
    return FilesReport(rows, activations)


def _hf_answers(
    hf: Any, batch: list[list[int]], ref: TaskReference, cfg: layout.ModelConfig, logits_file: Path
) -> _Answers:
    answers = [hf_answer(hf, ids, ref, cfg, GREEDY_TOKENS) for ids in batch]
    np.save(logits_file, np.concatenate([logits for logits, _ in answers]))
    return _Answers(logits_file, [greedy for _, greedy in answers])


def check_fp16(engine: Any) -> Fp16Check:
    """Every task and the base model on the verify prompts, with fp16 activations, against fp32."""
    from ftprefix.engine.precision import Fp16Activations

    probe = Fp16Activations()
    fp16 = engine.with_activations(probe)
    cfg = engine.config
    batch = prompts(cfg.vocab_size)
    error = 0.0
    for task_id in [None, *(t.id for t in cfg.tasks.live)]:
        ids = [task_id] * len(batch)
        for low, exact in zip(fp16.logits(batch, ids), engine.logits(batch, ids), strict=True):
            diff = np.abs(low - exact)
            error = max(error, float(diff.max()) if np.isfinite(diff).all() else float("inf"))
    return Fp16Check(dict(sorted(probe.largest.items())), sorted(probe.non_finite), error)


def _check(
    engine: Any,
    hf: _Answers,
    batch: list[list[int]],
    name: str,
    task_id: int | None,
    ref: TaskReference,
    tolerance: float,
) -> FileCheck:
    from ftprefix.engine.api import GenerationRequest

    ours = engine.logits(batch, [task_id] * len(batch))
    theirs = hf.logits([len(ids) for ids in batch])
    diff = max(float(np.abs(o - h).max()) for o, h in zip(ours, theirs, strict=True))
    generated = engine.generate(
        [GenerationRequest(ids, GREEDY_TOKENS, task_id=task_id, end_id=-1) for ids in batch]
    )
    greedy_equal = all(g.generated_ids == want for g, want in zip(generated, hf.greedy, strict=True))
    if not np.isfinite(diff):
        note = "non-finite logits: the converted model overflows or holds inf/nan"
    else:
        note = "" if diff <= tolerance else f"logits differ by more than {tolerance:g}"
    if not greedy_equal:
        note = "; ".join(n for n in (note, "greedy tokens differ") if n)
    return FileCheck(name, ref.prompt_length, diff, greedy_equal, note)
