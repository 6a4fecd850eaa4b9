"""`ftprefix tasks list|add|remove DIR`: the task table of a converted model.

DIR is the convert output directory or its `<tp>-gpu` directory. `list` keeps DIR optional so other
sources for the table (e.g. a running server) can be added as options of `list` alone.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

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
    add.add_argument(
        "--prefix",
        action="append",
        default=[],
        required=True,
        metavar="CKPTS",
        help="comma-separated checkpoints, each PATH or NAME=PATH; repeatable",
    )
    add.add_argument(
        "--model",
        type=Path,
        metavar="HF_DIR",
        help="the base Hugging Face model directory (needed to convert soft prompts)",
    )
    add.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow torch pickles that run code when loaded (only for files you trust)",
    )
    add.set_defaults(func=run_add)

    rm = sub.add_parser("remove", help="remove tasks and their files; later task ids move down")
    rm.add_argument("dir", type=Path, metavar="DIR", help="converted model (OUT or OUT/<tp>-gpu)")
    rm.add_argument("names", nargs="+", metavar="NAME", help="task names to remove")
    rm.set_defaults(func=run_remove)


def run_list(args: argparse.Namespace) -> int:
    from ftprefix.converter.summary import format_table
    from ftprefix.converter.tasks import list_tasks

    if args.url is not None:
        if args.dir is not None:
            raise UserError("give DIR or --url, not both")
        return _list_from_server(args.url, format_table)
    if args.dir is None:
        raise UserError("give DIR, the converted model directory, or --url HOST:PORT of a running server")
    model_dir, cfg = list_tasks(args.dir)
    rows = [[i, t.name, t.prompt_length] for i, t in enumerate(cfg.tasks)]
    print(format_table(["id", "task", "prefix length"], rows))
    print(f"{len(cfg.tasks)} task(s) in {model_dir}")
    return 0


def _list_from_server(url: str, format_table: Any) -> int:
    from ftprefix.client import Client

    with Client(url) as client:
        tasks = client.tasks()
    print(format_table(["id", "task", "prefix length"], [[t.id, t.name, t.prompt_length] for t in tasks]))
    print(f"{len(tasks)} task(s) served at {client.url}")
    return 0


def run_add(args: argparse.Namespace) -> int:
    from ftprefix.converter.checkpoints import parse_prefix_args
    from ftprefix.converter.summary import format_table, human_bytes
    from ftprefix.converter.tasks import add_tasks

    reports = add_tasks(
        args.dir, parse_prefix_args(args.prefix), hf_model_dir=args.model, trust_pickle=args.trust_pickle
    )
    rows = [
        [r.task_id, r.name, r.kind.replace("_", " "), r.prompt_length, human_bytes(r.bytes_written)]
        for r in reports
    ]
    print(format_table(["id", "task", "from", "prefix length", "bytes written"], rows))
    return 0


def run_remove(args: argparse.Namespace) -> int:
    from ftprefix.converter.tasks import remove_tasks

    removed, renumbered = remove_tasks(args.dir, args.names)
    for task in removed:
        print(f"removed task {task.name}")
    if renumbered:
        # Ids are positions in the task table: clients that cached ids must look them up again.
        moves = ", ".join(f"{r.name} {r.old_id}->{r.new_id}" for r in renumbered)
        print(f"task ids moved down: {moves}")
    return 0
