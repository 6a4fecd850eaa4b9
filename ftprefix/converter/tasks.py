"""Change the task table of an already converted model without touching its base weights.

Order of writes keeps the model usable at every instant: `add` writes the new prefix files first and
then swaps in the new config.ini (atomic rename); `remove` swaps config.ini first and deletes the
task's files only once config.ini no longer lists it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ftprefix import layout
from ftprefix.converter import TaskReport
from ftprefix.converter.checkpoints import PrefixSource
from ftprefix.converter.prefixes import check_task_names, load_prefixes, write_prefix
from ftprefix.errors import UserError
from ftprefix.task_table import Moved, Task


def list_tasks(directory: str | Path) -> tuple[Path, layout.ModelConfig]:
    """(the `<tp>-gpu` directory, its config) for DIR given as the out dir or the `<tp>-gpu` dir."""
    ft_dir = layout.find_ft_dir(directory)
    return ft_dir, layout.read_config(ft_dir)


def add_tasks(
    directory: str | Path,
    sources: Sequence[PrefixSource],
    *,
    hf_dir: Path | None = None,
    trust_pickle: bool = False,
) -> list[TaskReport]:
    """Append tasks (ids of existing tasks stay as they are). Soft prompts need `hf_dir`."""
    if not sources:
        raise UserError("no checkpoints given; pass --prefix PATH or --prefix NAME=PATH")
    ft_dir, cfg = list_tasks(directory)
    check_task_names(sources, existing=cfg.tasks.names)
    loaded = load_prefixes(sources, cfg, hf_dir, trust_pickle=trust_pickle)
    written: list[Path] = []
    reports = []
    try:
        for offset, (ckpt, prefix) in enumerate(loaded):
            written.extend(ft_dir / f for f in layout.prefix_file_names(ckpt.name, cfg.tensor_para_size))
            size = write_prefix(ft_dir, ckpt.name, prefix, cfg)
            reports.append(
                TaskReport(
                    len(cfg.tasks) + offset, ckpt.name, ckpt.kind, int(prefix.shape[0]), size, ckpt.path
                )
            )
        table = cfg.tasks.appended((r.name, r.prompt_length) for r in reports)
        layout.write_config(ft_dir, cfg.with_tasks(table))
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    return reports


def remove_tasks(directory: str | Path, names: Sequence[str]) -> tuple[list[Task], list[Moved]]:
    """Remove tasks by name; returns (removed tasks, tasks whose id moved down)."""
    if not names:
        raise UserError("no task names given")
    ft_dir, cfg = list_tasks(directory)
    for name in names:
        if cfg.tasks.find(name) is None:
            raise UserError(f"unknown task {name!r}; known tasks: {', '.join(cfg.tasks.names) or 'none'}")
    if len(set(names)) != len(names):
        raise UserError("a task name is given twice")
    removed = [t for t in cfg.tasks if t.name in names]
    kept, moved = cfg.tasks.without(names)
    layout.write_config(ft_dir, cfg.with_tasks(kept))
    for task in removed:
        for file_name in layout.prefix_file_names(task.name, cfg.tensor_para_size):
            (ft_dir / file_name).unlink(missing_ok=True)
    return removed, moved
