"""`ftprefix tasks list|add|remove DIR`: the task table of a converted model.

DIR is the convert output directory or its `<tp>-gpu` directory. `list` keeps DIR optional so other
sources for the table (e.g. a running server) can be added as options of `list` alone.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ftprefix.commands.options import (
    add_prefix_option,
    add_trust_pickle_option,
    add_wait_option,
    check_wait,
    prefix_sources,
)
from ftprefix.commands.tables import tasks_table, written_tasks_table
from ftprefix.errors import UserError


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "tasks",
        help="list, add or remove prefix tasks of a converted model",
        description="List, add or remove the prefix tasks of a converted model.",
    )
    sub = p.add_subparsers(dest="tasks_command", metavar="ACTION", required=True)

    ls = sub.add_parser("list", help="print the task table (id, name, prefix length)")
    ls.add_argument("dir", nargs="?", type=Path, metavar="DIR", help="converted model (OUT or OUT/<tp>-gpu)")
    ls.add_argument("--url", metavar="HOST:PORT", help="read the table from a running server (gRPC) instead")
    ls.set_defaults(func=run_list)

    add = sub.add_parser("add", help="add prefix checkpoints; existing task ids do not change")
    add.add_argument("dir", type=Path, metavar="DIR", help="converted model (OUT or OUT/<tp>-gpu)")
    add_prefix_option(add, required=True)
    add.add_argument(
        "--model",
        type=Path,
        metavar="HF_DIR",
        help="the base Hugging Face model directory (needed to convert soft prompts)",
    )
    add_trust_pickle_option(add)
    add_wait_option(add)
    add.set_defaults(func=run_add, extras=("convert",))

    rm = sub.add_parser("remove", help="remove tasks and their files; later task ids move down")
    rm.add_argument("dir", type=Path, metavar="DIR", help="converted model (OUT or OUT/<tp>-gpu)")
    rm.add_argument("names", nargs="+", metavar="NAME", help="task names to remove")
    add_wait_option(rm)
    rm.set_defaults(func=run_remove)


def run_list(args: argparse.Namespace) -> int:
    from ftprefix.converter.tasks import leftovers, list_tasks

    if args.url is not None:
        if args.dir is not None:
            raise UserError("give DIR or --url, not both")
        return _list_from_server(args.url)
    if args.dir is None:
        raise UserError("give DIR, the converted model directory, or --url HOST:PORT of a running server")
    ft_dir, cfg = list_tasks(args.dir)
    print(tasks_table(cfg.tasks))
    print(f"{len(cfg.tasks)} task(s) in {ft_dir}")
    left = leftovers(ft_dir, cfg)
    if left:
        names = ", ".join(p.name for p in left)
        print(f"note: {names} left by an interrupted command; the next tasks add/remove removes them")
    return 0


def _list_from_server(url: str) -> int:
    from ftprefix.client import Client

    with Client(url) as client:
        tasks = client.tasks()
    print(tasks_table(tasks))
    print(f"{len(tasks)} task(s) served at {client.url}")
    return 0


def _note(message: str) -> None:
    print(f"ftprefix tasks: note: {message}", file=sys.stderr)


def run_add(args: argparse.Namespace) -> int:
    from ftprefix.converter.tasks import add_tasks

    reports = add_tasks(
        args.dir,
        prefix_sources(args.prefix),
        hf_dir=args.model,
        trust_pickle=args.trust_pickle,
        wait=check_wait(args.wait),
        report=_note,
    )
    print(written_tasks_table(reports))
    return 0


def run_remove(args: argparse.Namespace) -> int:
    from ftprefix.converter.tasks import remove_tasks

    removed, moved = remove_tasks(args.dir, args.names, wait=check_wait(args.wait), report=_note)
    for task in removed:
        print(f"removed task {task.name}")
    if moved:
        # Ids are positions in the task table: clients that cached ids must look them up again.
        moves = ", ".join(f"{m.name} {m.old_id}->{m.new_id}" for m in moved)
        print(f"task ids moved down: {moves}")
    return 0
