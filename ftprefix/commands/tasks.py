"""`ftprefix tasks list|add|remove|compact DIR`: the task table of a converted model.

DIR is the convert output directory or its `<tp>-gpu` directory. Task ids never move: `remove`
retires a task's slot, `add` appends, and only `compact` renumbers (task_table.py says why).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ftprefix import model_dirs
from ftprefix.commands.options import (
    add_prefix_option,
    add_trust_pickle_option,
    add_wait_option,
    check_wait,
    prefix_sources,
)
from ftprefix.commands.tables import format_table, written_tasks_table
from ftprefix.errors import UserError
from ftprefix.task_table import TaskTable


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "tasks",
        help="list, add, remove or compact the prefix tasks of a converted model",
        description=(
            "List, add or remove the prefix tasks of a converted model. Task ids never move: a removed "
            "task leaves a retired slot, new tasks get new ids; only `compact` renumbers."
        ),
    )
    sub = p.add_subparsers(dest="tasks_command", metavar="ACTION", required=True)

    ls = sub.add_parser("list", help="print the task table (id, name, prefix length, retired slots)")
    ls.add_argument("dir", nargs="?", type=Path, metavar="DIR", help="converted model (OUT or OUT/<tp>-gpu)")
    ls.add_argument("--url", metavar="HOST:PORT", help="read the table from a running server (gRPC) instead")
    ls.add_argument("--json", action="store_true", help="one JSON object: the slots, for scripts")
    ls.set_defaults(func=run_list)

    add = sub.add_parser("add", help="add prefix checkpoints; they get new ids, existing ids do not change")
    add.add_argument("dir", type=Path, metavar="DIR", help="converted model (OUT or OUT/<tp>-gpu)")
    add_prefix_option(add, required=True)
    add.add_argument(
        "--model",
        type=model_dirs.hf_dir,
        metavar="HF_DIR",
        help="the base Hugging Face model directory, or ORG/NAME in the cache (to convert soft prompts)",
    )
    add_trust_pickle_option(add)
    add_wait_option(add)
    add.set_defaults(func=run_add, extras=("convert",))

    rm = sub.add_parser("remove", help="remove tasks: their ids are retired, no other id changes")
    rm.add_argument("dir", type=Path, metavar="DIR", help="converted model (OUT or OUT/<tp>-gpu)")
    rm.add_argument("names", nargs="+", metavar="NAME", help="task names to remove")
    add_wait_option(rm)
    rm.set_defaults(func=run_remove)

    compact = sub.add_parser(
        "compact",
        help="drop retired slots and renumber the tasks (moves ids: clients must read the table again)",
        description=(
            "Drop the retired slots of removed tasks and renumber the remaining tasks from 0. This is the "
            "one command that moves task ids: a client holding the old table would send an old id for "
            "another task, which FasterTransformer's GPU backend cannot notice. Prints the id map."
        ),
    )
    compact.add_argument("dir", type=Path, metavar="DIR", help="converted model (OUT or OUT/<tp>-gpu)")
    compact.add_argument(
        "--url",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="a server serving this model (repeatable): compact refuses while one is up, unless --force",
    )
    compact.add_argument("--force", action="store_true", help="compact even while a --url server is up")
    add_wait_option(compact)
    compact.set_defaults(func=run_compact)


def _print_slots(tasks: TaskTable, as_json: bool, where: str, retired_hint: str = "") -> None:
    """Every slot (retired ones included) as a table and a count line, or as JSON for scripts."""
    if as_json:
        slots = [
            {"id": t.id, "name": t.name, "prompt_length": t.prompt_length, "retired": t.retired}
            | ({"removed": t.removed} if t.removed else {})
            for t in tasks
        ]
        print(json.dumps({"tasks": slots}))
        return
    rows = [
        [t.id, t.name if not t.retired else f"(retired: {t.removed or 'removed task'})", t.prompt_length]
        for t in tasks
    ]
    print(format_table(["id", "task", "prefix length"], rows))
    retired = f" and {len(tasks.retired)} retired slot(s){retired_hint}" if tasks.retired else ""
    print(f"{len(tasks.live)} task(s){retired} {where}")


def run_list(args: argparse.Namespace) -> int:
    from ftprefix.converter.tasks import leftovers, list_tasks

    if args.url is not None:
        if args.dir is not None:
            raise UserError("give DIR or --url, not both")
        return _list_from_server(args.url, args.json)
    if args.dir is None:
        raise UserError("give DIR, the converted model directory, or --url HOST:PORT of a running server")
    ft_dir, cfg = list_tasks(args.dir)
    _print_slots(cfg.tasks, args.json, f"in {ft_dir}", " (`ftprefix tasks compact` reclaims them)")
    if args.json:
        return 0
    left = leftovers(ft_dir, cfg)
    if left:
        from ftprefix.task_table import summary

        names = summary([p.name for p in left])
        print(f"note: {names} left by an interrupted command; the next tasks add/remove removes them")
    return 0


def _list_from_server(url: str, as_json: bool) -> int:
    from ftprefix.client import Client

    with Client(url) as client:
        _print_slots(client.model_info().tasks, as_json, f"served at {client.url}")
    return 0


def _note(message: str) -> None:
    print(f"ftprefix tasks: note: {message}", file=sys.stderr)


def run_add(args: argparse.Namespace) -> int:
    from ftprefix.converter.tasks import add_tasks

    reports = add_tasks(
        args.dir,
        prefix_sources(args.prefix, args.prefix_dir),
        hf_dir=args.model,
        trust_pickle=args.trust_pickle,
        wait=check_wait(args.wait),
        report=_note,
    )
    print(written_tasks_table(reports))
    return 0


def run_remove(args: argparse.Namespace) -> int:
    from ftprefix.converter.tasks import remove_tasks
    from ftprefix.task_table import summary

    slots = remove_tasks(args.dir, args.names, wait=check_wait(args.wait), report=_note)
    ids = summary([f"{s.removed} (id {s.id})" for s in slots])
    print(f"removed {len(slots)} task(s): {ids}; their ids are retired, every other id stays")
    return 0


def _server_up(url: str) -> bool:
    from ftprefix.client import Client, FtprefixClientError

    try:
        with Client(url, connect_retries=0, timeout=5) as client:
            client.model_info()
    except FtprefixClientError:
        return False
    return True


def run_compact(args: argparse.Namespace) -> int:
    from ftprefix.converter.tasks import compact_tasks
    from ftprefix.task_table import summary

    up = [url for url in args.url if _server_up(url)]
    if up and not args.force:
        raise UserError(
            f"the server at {up[0]} is up: compacting moves task ids under its clients; stop it (or pass "
            "--force and reload every replica before clients read the table again)"
        )
    cfg, moved = compact_tasks(args.dir, wait=check_wait(args.wait), report=_note)
    if not moved:
        print(f"nothing to compact: {len(cfg.tasks)} task(s), no retired slot between them")
        return 0
    print(format_table(["task", "old id", "new id"], [[name, old, new] for name, old, new in moved]))
    print(
        f"{len(moved)} task(s) moved ({summary([m[0] for m in moved])}): clients must read the task table "
        "again before sending, and every server must load the model again first"
    )
    return 0
