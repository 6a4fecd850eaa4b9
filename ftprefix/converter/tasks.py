"""Change the task table of an already converted model without touching its base weights.

Order of writes keeps the model usable at every instant: `add` writes the new prefix files first and
then swaps in the new config.ini (atomic rename); `remove` swaps config.ini first and deletes the
task's files only once config.ini no longer lists it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ftprefix import layout
from ftprefix.converter import TaskReport
from ftprefix.converter.checkpoints import PrefixSource
from ftprefix.converter.prefixes import check_task_names, load_prefixes, write_prefix
from ftprefix.errors import UserError


def list_tasks(directory: str | Path) -> tuple[Path, layout.ModelConfig]:
    """(the `<tp>-gpu` directory, its config) for DIR given as the out dir or the `<tp>-gpu` dir."""
    model_dir = layout.find_model_dir(directory)
    return model_dir, layout.read_config(model_dir)


def add_tasks(
    directory: str | Path,
    sources: Sequence[PrefixSource],
    *,
    hf_model_dir: Path | None = None,
    trust_pickle: bool = False,
) -> list[TaskReport]:
    """Append tasks (ids of existing tasks stay as they are). Soft prompts need `hf_model_dir`."""
    if not sources:
        raise UserError("no checkpoints given; pass --prefix PATH or --prefix NAME=PATH")
    model_dir, cfg = list_tasks(directory)
    check_task_names(sources, existing=[t.name for t in cfg.tasks])
    loaded = load_prefixes(sources, cfg, hf_model_dir, trust_pickle=trust_pickle)
    written: list[Path] = []
    reports = []
    try:
        for offset, (ckpt, prefix) in enumerate(loaded):
            written.extend(model_dir / f for f in layout.prefix_file_names(ckpt.name, cfg.tensor_para_size))
            size = write_prefix(model_dir, ckpt.name, prefix, cfg)
            reports.append(
                TaskReport(
                    len(cfg.tasks) + offset, ckpt.name, ckpt.kind, int(prefix.shape[0]), size, ckpt.path
                )
            )
        new_tasks = [layout.Task(r.name, r.prompt_length) for r in reports]
        layout.write_config(model_dir, cfg.with_tasks([*cfg.tasks, *new_tasks]))
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    return reports


@dataclass(frozen=True)
class Renumbered:
    name: str
    old_id: int
    new_id: int


def remove_tasks(directory: str | Path, names: Sequence[str]) -> tuple[list[layout.Task], list[Renumbered]]:
    """Remove tasks by name; returns (removed tasks, tasks whose id moved down)."""
    if not names:
        raise UserError("no task names given")
    model_dir, cfg = list_tasks(directory)
    for name in names:
        cfg.task_id(name)  # UserError listing the known tasks
    if len(set(names)) != len(names):
        raise UserError("a task name is given twice")
    removed = [t for t in cfg.tasks if t.name in names]
    kept = [t for t in cfg.tasks if t.name not in names]
    renumbered = [
        Renumbered(t.name, old, new) for new, t in enumerate(kept) if (old := cfg.task_id(t.name)) != new
    ]
    layout.write_config(model_dir, cfg.with_tasks(kept))
    for task in removed:
        for file_name in layout.prefix_file_names(task.name, cfg.tensor_para_size):
            (model_dir / file_name).unlink(missing_ok=True)
    return removed, renumbered
