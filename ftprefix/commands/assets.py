"""`ftprefix assets [NAME]`: where the deployment files installed with ftprefix are."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "assets",
        help="print where the shipped deployment files are (Kubernetes manifests, chat templates, images)",
        description=(
            "Print the directory of one shipped deployment file or directory, e.g. "
            '`kubectl apply -k "$(ftprefix assets kubernetes/gpu)"` or `--chat-template "$(ftprefix '
            'assets chat-templates/rinna-instruction.jinja)"`; without NAME, list them. Copy a directory '
            "before you edit it: it belongs to the installed ftprefix."
        ),
    )
    p.add_argument("name", nargs="?", metavar="NAME", help="a path under the assets, e.g. kubernetes/gpu")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ftprefix import assets
    from ftprefix.errors import UserError

    if args.name is None:
        print(Path(str(assets.root())))
        for name in sorted(assets.walk("")):
            if name != "__init__.py":
                print(f"  {name}")
        return 0
    node = assets.asset(args.name)
    if not node.is_file() and not node.is_dir():
        known = sorted({n.split("/")[0] for n in assets.walk("") if "/" in n})
        raise UserError(
            f"no asset {args.name!r}; the assets are under {', '.join(known)} (ftprefix assets lists them)"
        )
    print(Path(str(node)))
    return 0
