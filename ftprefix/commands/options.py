"""Options several commands share, parsed into the typed values the library takes."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
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


def add_newline_token_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--newline-token",
        metavar="TOKEN",
        type=lambda value: value or None,  # empty = off, so deployments can pass an unset variable
        help=(
            "write \\n in prompts, stop and bad words as TOKEN and turn TOKEN back into \\n in answers "
            "(rinna's instruction models: --newline-token '<NL>'); default: off"
        ),
    )


def add_gateway_options(parser: argparse.ArgumentParser, flag_prefix: str = "") -> None:
    """API keys and the chat template of the OpenAI-compatible API (`ftprefix openai`, `serve`)."""
    parser.add_argument(
        "--api-key",
        action="append",
        default=[],
        metavar="KEY",
        help="require Authorization: Bearer KEY on every /v1 call; repeatable; also FTPREFIX_API_KEY",
    )
    parser.add_argument(
        "--api-keys",
        type=Path,
        metavar="FILE",
        help=(
            'keys per tenant: a JSON object {"KEY": ["task", ...] or "*"}; a key sees and uses only its '
            "models; read again when the file changes"
        ),
    )
    parser.add_argument(
        "--chat-template",
        type=Path,
        metavar="FILE",
        help="Jinja chat template for /v1/chat/completions (default: the tokenizer's chat_template)",
    )
    parser.add_argument(
        "--no-metrics",
        action="store_true",
        help="do not count requests and tokens per task (default: Prometheus text at /metrics)",
    )


def gateway_keys(values: Sequence[str]) -> tuple[str, ...]:
    """`--api-key` values and FTPREFIX_API_KEY."""
    import os

    from ftprefix.gateway.auth import ENV_KEY

    env = os.environ.get(ENV_KEY)
    return (*values, *([env] if env else []))
