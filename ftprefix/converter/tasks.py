"""Change the task table of an already converted model without touching its base weights.

Every change holds the model lock (ftprefix.locking) for its whole read-modify-write, so
concurrent `tasks add` commands all land, with distinct ids. The order of writes keeps the model
loadable at every instant, whatever kills the command: `add` writes the new prefix files first
and then publishes them with an atomic rename of config.ini; `remove` writes the retired slot's
placeholder files, renames config.ini and deletes the task's files only once config.ini no longer
names them. What an interrupted command
leaves behind (prefix files config.ini does not name, config.ini temporaries) is removed by the
next `tasks add` / `remove` and reported by `tasks list`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from ftprefix import layout, locking
from ftprefix.converter import TaskReport
from ftprefix.converter.checkpoints import PrefixSource
from ftprefix.converter.prefixes import check_task_names, load_prefixes, write_placeholder, write_prefix
from ftprefix.errors import UserError
from ftprefix.task_table import Task, unknown_name_hint


def list_tasks(directory: str | Path) -> tuple[Path, layout.ModelConfig]:
    """(the `<tp>-gpu` directory, its config) for DIR given as the out dir or the `<tp>-gpu` dir."""
    ft_dir = layout.find_ft_dir(directory)
    return ft_dir, layout.read_config(ft_dir)


def leftovers(ft_dir: Path, cfg: layout.ModelConfig) -> list[Path]:
    """Files of interrupted commands: prefix files config.ini does not name, config.ini temporaries."""
    named = {f for t in cfg.tasks for f in layout.prefix_file_names(t.name, cfg.tensor_para_size)}
    found = []
    for entry in sorted(ft_dir.iterdir()):
        if entry.is_symlink() or not entry.is_file():
            continue
        orphan_prefix = layout.PREFIX_FILE_RE.match(entry.name) and entry.name not in named
        config_temporary = entry.name.startswith(f".{layout.CONFIG_FILE}.") and entry.name.endswith(".tmp")
        if orphan_prefix or config_temporary:
            found.append(entry)
    return found


def _clean(ft_dir: Path, cfg: layout.ModelConfig, report: Callable[[str], None]) -> None:
    for path in leftovers(ft_dir, cfg):
        path.unlink()
        report(f"removed {path.name}, left by an interrupted command")


def add_tasks(
    directory: str | Path,
    sources: Sequence[PrefixSource],
    *,
    hf_dir: Path | None = None,
    trust_pickle: bool = False,
    wait: float = locking.DEFAULT_WAIT_S,
    report: Callable[[str], None] = lambda _message: None,
) -> list[TaskReport]:
    """Append tasks (ids of existing tasks stay as they are). Soft prompts need `hf_dir`."""
    if not sources:
        raise UserError("no checkpoints given; pass --prefix PATH, NAME=PATH or @FILE, or --prefix-dir DIR")
    ft_dir = layout.find_ft_dir(directory)
    with locking.exclusive(ft_dir.parent, wait):
        cfg = layout.read_config(ft_dir)
        check_task_names(sources, existing=cfg.tasks.names)
        loaded = load_prefixes(sources, cfg, hf_dir, trust_pickle=trust_pickle)
        _clean(ft_dir, cfg, report)
        written: list[Path] = []
        reports = []
        try:
            for offset, (ckpt, prefix) in enumerate(loaded):
                written.extend(ft_dir / f for f in layout.prefix_file_names(ckpt.name, cfg.tensor_para_size))
                size = write_prefix(ft_dir, ckpt.name, prefix, cfg)
                task_id = len(cfg.tasks) + offset
                reports.append(
                    TaskReport(task_id, ckpt.name, ckpt.kind, int(prefix.shape[0]), size, ckpt.path)
                )
            table = cfg.tasks.appended((r.name, r.prompt_length) for r in reports)
            layout.write_config(ft_dir, cfg.with_tasks(table))
        except BaseException:
            for path in written:
                path.unlink(missing_ok=True)
            raise
    return reports


def remove_tasks(
    directory: str | Path,
    names: Sequence[str],
    *,
    wait: float = locking.DEFAULT_WAIT_S,
    report: Callable[[str], None] = lambda _message: None,
) -> list[Task]:
    """Remove tasks by name: each one's slot is retired (its id is never given again, every other id
    stays). Returns the retired slots (their `removed` is the task's name)."""
    if not names:
        raise UserError("no task names given")
    twice = next((name for i, name in enumerate(names) if name in names[:i]), None)
    if twice is not None:
        raise UserError(f"task {twice!r} is given twice; name each task to remove once")
    ft_dir = layout.find_ft_dir(directory)
    with locking.exclusive(ft_dir.parent, wait):
        cfg = layout.read_config(ft_dir)
        for name in names:
            if cfg.tasks.find(name) is None:
                raise UserError(f"unknown task {name!r}; {unknown_name_hint(name, cfg.tasks.names)}")
        _clean(ft_dir, cfg, report)
        removed = [t for t in cfg.tasks.live if t.name in set(names)]
        table = cfg.tasks.retire(names)
        slots = [table[t.id] for t in removed]
        written: list[Path] = []
        try:
            for slot in slots:  # the placeholders first: a config.ini naming them is always loadable
                written.extend(ft_dir / f for f in layout.prefix_file_names(slot.name, cfg.tensor_para_size))
                write_placeholder(ft_dir, slot, cfg)
            layout.write_config(ft_dir, cfg.with_tasks(table))
        except BaseException:
            for path in written:
                path.unlink(missing_ok=True)
            raise
        for task in removed:  # no longer named by config.ini
            _remove_prefix_files(ft_dir, task.name, cfg)
    return slots


def compact_tasks(
    directory: str | Path,
    *,
    wait: float = locking.DEFAULT_WAIT_S,
    report: Callable[[str], None] = lambda _message: None,
) -> tuple[layout.ModelConfig, list[tuple[str, int, int]]]:
    """Drop the retired slots and renumber the live tasks from 0: the one change that moves ids.
    Returns the new config and (name, old id, new id) of every task that moved."""
    ft_dir = layout.find_ft_dir(directory)
    with locking.exclusive(ft_dir.parent, wait):
        cfg = layout.read_config(ft_dir)
        _clean(ft_dir, cfg, report)
        table, moved = cfg.tasks.compacted()
        new = cfg.with_tasks(table)
        layout.write_config(ft_dir, new)  # task files are named by task, not id: nothing else moves
        for slot in cfg.tasks.retired:
            _remove_prefix_files(ft_dir, slot.name, cfg)
    return new, moved


def _remove_prefix_files(ft_dir: Path, task: str, cfg: layout.ModelConfig) -> None:
    for file_name in layout.prefix_file_names(task, cfg.tensor_para_size):
        (ft_dir / file_name).unlink(missing_ok=True)
