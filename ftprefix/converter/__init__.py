"""Hugging Face GPT-NeoX + prefix checkpoints -> FasterTransformer layout (`<out>/<tp>-gpu/`).

Everything is checked before anything is written; the output is staged in a temporary sibling and
renamed into place at the end.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ftprefix import layout, locking, model_dirs
from ftprefix.converter.base_weights import plan_base, write_base
from ftprefix.converter.checkpoints import PrefixSource
from ftprefix.converter.hf_model import open_hf_model
from ftprefix.converter.output_dir import check_output, clean_stale, staged_ft_dir
from ftprefix.converter.prefixes import check_task_names, load_prefixes, write_placeholder, write_prefix
from ftprefix.converter.progress import progress_bar
from ftprefix.errors import UserError
from ftprefix.locking import DEFAULT_WAIT_S
from ftprefix.task_table import TaskTable

__all__ = ["ConvertReport", "TaskReport", "convert"]


@dataclass(frozen=True)
class TaskReport:
    task_id: int
    name: str
    kind: str  # "prefix" or "soft_prompt" (the checkpoint's kind; both are written as prefixes)
    prompt_length: int
    bytes_written: int
    source: Path


@dataclass
class ConvertReport:
    out: Path
    ft_dir: Path  # `<out>/<tp>-gpu`
    config: layout.ModelConfig
    tasks: list[TaskReport] = field(default_factory=list)
    base_files: int = 0
    base_bytes_written: int = 0
    bytes_read: int = 0
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)

    @property
    def bytes_written(self) -> int:
        return self.base_bytes_written + sum(t.bytes_written for t in self.tasks)


def _stderr_warning(message: str) -> None:
    print(f"ftprefix convert: warning: {message}", file=sys.stderr)


def convert(
    hf_dir: str | Path,
    prefixes: Sequence[PrefixSource],
    out: str | Path,
    *,
    tp: int,
    dtype: str,
    force: bool = False,
    trust_pickle: bool = False,
    progress: bool | None = None,
    warn: Callable[[str], None] = _stderr_warning,
    wait: float = DEFAULT_WAIT_S,
) -> ConvertReport:
    """Convert into `<out>/<tp>-gpu`; raises UserError (with nothing written) on bad input.

    `force` replaces an earlier conversion for the same tp, and nothing else (output_dir.py).
    `progress`: None shows a bar only on an interactive terminal outside CI.
    `warn` receives one line per FT behaviour that differs slightly from the model's own, and per
    leftover of an interrupted conversion cleaned up. `wait`: seconds to wait for another command
    holding the model lock.
    """
    start = time.perf_counter()
    hf_dir, out = Path(hf_dir), Path(out)
    if dtype not in layout.WEIGHT_DTYPES:
        raise UserError(f"--dtype {dtype} is not supported; use one of {', '.join(layout.WEIGHT_DTYPES)}")
    check_task_names(prefixes)
    inputs = [hf_dir, *(s.path for s in prefixes)]
    check_output(out, tp, force=force, inputs=inputs)
    with open_hf_model(hf_dir, trust_pickle=trust_pickle) as hf:
        hf.config.check_tp(tp)
        cfg = hf.config.to_ft(tp=tp, dtype=dtype, model_name=model_dirs.model_name(hf_dir) or "gptneox")
        plan = plan_base(hf, cfg)
        loaded = load_prefixes(prefixes, cfg, hf_dir, trust_pickle=trust_pickle)
        warnings = hf.config.warnings()
        for message in warnings:
            warn(message)
        new_tasks = [(c.name, int(p.shape[0])) for c, p in loaded]
        cfg = cfg.with_tasks(TaskTable(new_tasks))
        report = ConvertReport(out, layout.ft_dir(out, tp), cfg, warnings=warnings)
        # out made here is removed again if the conversion fails (it holds nothing but the lock then)
        with locking.exclusive_making(out, layout.LOCK_FILE, out, wait):
            check_output(out, tp, force=force, inputs=inputs)  # again, now that no one else writes
            clean_stale(out, warn)
            previous = layout.ft_dir(out, tp) / layout.CONFIG_FILE
            if previous.is_file():  # --force: tasks that remain keep their ids (task_table.py)
                cfg = cfg.with_tasks(layout.read_config(previous.parent).tasks.replaced_by(new_tasks))
                report.config = cfg
            with staged_ft_dir(out, tp) as target:
                with progress_bar(len(plan) + len(loaded), "convert", progress) as bar:
                    stats = write_base(hf, plan, cfg, target, on_tensor=lambda: bar.update(1))
                    for ckpt, prefix in loaded:
                        written = write_prefix(target, ckpt.name, prefix, cfg)
                        task = cfg.tasks.find(ckpt.name)
                        assert task is not None
                        report.tasks.append(
                            TaskReport(
                                task.id, ckpt.name, ckpt.kind, int(prefix.shape[0]), written, ckpt.path
                            )
                        )
                        bar.update(1)
                    for slot in cfg.tasks.retired:
                        write_placeholder(target, slot, cfg)
                layout.write_config(target, cfg)
    report.base_files = stats.files
    report.base_bytes_written = stats.bytes_written
    report.bytes_read = stats.bytes_read
    report.seconds = time.perf_counter() - start
    return report
