"""Options several commands share, parsed into the typed values the library takes."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ftprefix.errors import UserError

if TYPE_CHECKING:
    from ftprefix.converter.checkpoints import PrefixSource

PREFIX_HELP = (
    "comma-separated checkpoints, each PATH or NAME=PATH; repeatable. Task names default to the "
    "file name (rinna: up to '_prefix_encoder') or the adapter directory's name"
)


def add_prefix_option(
    parser: argparse.ArgumentParser, *, required: bool = False, help: str = PREFIX_HELP
) -> None:
    parser.add_argument(
        "--prefix", action="append", default=[], required=required, metavar="CKPTS", help=help
    )


def add_wait_option(parser: argparse.ArgumentParser) -> None:
    from ftprefix.locking import DEFAULT_WAIT_S

    parser.add_argument(
        "--wait",
        type=float,
        default=DEFAULT_WAIT_S,
        metavar="SECONDS",
        help="how long to wait for another ftprefix command changing the same model (default %(default)g)",
    )


def check_wait(seconds: float) -> float:
    if not seconds >= 0:
        raise UserError(f"--wait must be 0 or more seconds, got {seconds:g}")
    return seconds


def add_trust_pickle_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow torch pickles that run code when loaded (only for files you trust)",
    )


def prefix_sources(values: Sequence[str]) -> list[PrefixSource]:
    """`--prefix` values, each "a.ckpt,b.ckpt" and/or "name=path" -> sources in the order given."""
    from ftprefix.converter.checkpoints import PrefixSource

    sources: list[PrefixSource] = []
    for value in values:
        for item in value.split(","):
            item = item.strip()
            if not item:
                raise UserError(f"empty entry in --prefix {value!r}; separate checkpoints with single commas")
            name, sep, path = item.partition("=")
            if not sep:
                sources.append(PrefixSource.at(item))
            elif not path:
                raise UserError(f"--prefix {item!r} names no path; use name=path")
            else:
                sources.append(PrefixSource.at(path, name))
    return sources


def add_queue_delay_option(parser: argparse.ArgumentParser) -> None:
    from ftprefix.serving.batching import DEFAULT_MAX_QUEUE_DELAY_US

    parser.add_argument(
        "--max-queue-delay-us",
        type=int,
        default=DEFAULT_MAX_QUEUE_DELAY_US,
        metavar="US",
        help=(
            "how long Triton's dynamic batcher holds a request for others to join its batch, in "
            f"microseconds (default {DEFAULT_MAX_QUEUE_DELAY_US}); wider keeps batches full behind the "
            "OpenAI gateway, at the cost of that much latency for a lone request"
        ),
    )
