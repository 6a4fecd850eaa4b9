"""Options several commands share, parsed into the typed values the library takes, and the way the
long-running ones stop."""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ftprefix import model_dirs
from ftprefix.errors import UserError

if TYPE_CHECKING:
    from ftprefix.converter.checkpoints import PrefixSource

PREFIX_HELP = (
    "comma-separated checkpoints, each PATH or NAME=PATH, or @FILE (one PATH or NAME=PATH per line); "
    "repeatable; a PEFT adapter's PATH may be its Hugging Face id (ORG/NAME, from the local cache). "
    "Task names default to the file name (rinna: up to '_prefix_encoder' or '.task<N>.weight') or "
    "the adapter directory's name (NAME for an id)"
)
# what --prefix-dir takes from a directory: checkpoint files, and PEFT adapter directories
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".checkpoint", ".safetensors", ".npy", ".weight")


def add_prefix_option(
    parser: argparse.ArgumentParser, *, required: bool = False, help: str = PREFIX_HELP
) -> None:
    """`--prefix` and `--prefix-dir`; `required`: one of them must be given."""
    parser.add_argument("--prefix", action="append", default=[], metavar="CKPTS", help=help)
    parser.add_argument(
        "--prefix-dir",
        action="append",
        default=[],
        type=Path,
        metavar="DIR",
        help="every checkpoint in DIR (files ending in "
        + ", ".join(CHECKPOINT_SUFFIXES)
        + ", and PEFT adapter directories), named as --prefix names them; repeatable",
    )
    if required:  # checked by the command: argparse cannot require one of two options
        parser.epilog = "Give at least one --prefix or --prefix-dir."


def add_wait_option(parser: argparse.ArgumentParser, changing: str = "the same model") -> None:
    from ftprefix.locking import DEFAULT_WAIT_S

    parser.add_argument(
        "--wait",
        type=float,
        default=DEFAULT_WAIT_S,
        metavar="SECONDS",
        help=f"how long to wait for another ftprefix command changing {changing} (default %(default)g)",
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


def prefix_sources(values: Sequence[str], dirs: Sequence[Path] = ()) -> list[PrefixSource]:
    """`--prefix` values ("a.ckpt,b.ckpt", "name=path", "@list.txt") and `--prefix-dir` directories
    -> sources in the order given."""
    sources: list[PrefixSource] = []
    for value in values:
        for item in value.split(","):
            item = item.strip()
            if not item:
                raise UserError(f"empty entry in --prefix {value!r}; separate checkpoints with single commas")
            if item.startswith("@"):
                sources += _list_file(Path(item[1:]))
            else:
                sources.append(_source(item, f"--prefix {item!r}"))
    for directory in dirs:
        sources += _checkpoints_in(directory)
    return sources


def _source(item: str, where: str, base: Path | None = None) -> PrefixSource:
    from ftprefix.converter.checkpoints import PrefixSource

    name, sep, path = item.partition("=")
    if sep and not path:
        raise UserError(f"{where} names no path; use name=path")
    given = path.strip() if sep else item
    target = Path(given)
    if base is not None and not target.is_absolute():
        target = base / target
    if not target.exists() and model_dirs.looks_like_hub_id(given):  # a PEFT adapter on the Hub
        snapshot = model_dirs.cached_snapshot(given)
        if snapshot is not None:  # named ORG/NAME's NAME, not by its snapshot's commit hash
            return PrefixSource(name.strip() if sep else model_dirs.model_name(snapshot), snapshot)
    return PrefixSource.at(target, name.strip() if sep else None)


def _list_file(path: Path) -> list[PrefixSource]:
    """`@FILE`: one PATH or NAME=PATH per line (relative paths from the file's directory; blank lines
    and # comments skipped; a byte order mark, as Windows editors write one, is not part of the first)."""
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read the checkpoint list --prefix @{path}: {exc}") from None
    sources = []
    for number, line in enumerate(lines, start=1):
        line = line.strip()
        if line and not line.startswith("#"):
            sources.append(_source(line, f"{path}:{number}", base=path.parent))
    if not sources:
        raise UserError(f"--prefix @{path} lists no checkpoints (one PATH or NAME=PATH per line)")
    return sources


def _checkpoints_in(directory: Path) -> list[PrefixSource]:
    from ftprefix.converter.checkpoints import PEFT_CONFIG, PrefixSource

    if not directory.is_dir():
        raise UserError(f"--prefix-dir {directory} is not a directory")
    found = [
        PrefixSource.at(entry)
        for entry in sorted(directory.iterdir())
        if not entry.name.startswith(".")
        and (
            (entry.is_file() and entry.suffix.lower() in CHECKPOINT_SUFFIXES)
            or (entry.is_dir() and (entry / PEFT_CONFIG).is_file())
        )
    ]
    if not found:
        kinds = ", ".join(CHECKPOINT_SUFFIXES)
        raise UserError(f"--prefix-dir {directory} holds no checkpoint ({kinds} files, adapter directories)")
    return found


def add_queue_delay_option(parser: argparse.ArgumentParser, *, updates: bool = False) -> None:
    """--max-queue-delay-us; `updates`: not given is None (a deployment written again keeps its own)."""
    from ftprefix.serving.batching import DEFAULT_MAX_QUEUE_DELAY_US

    parser.add_argument(
        "--max-queue-delay-us",
        type=int,
        default=None if updates else DEFAULT_MAX_QUEUE_DELAY_US,
        metavar="US",
        help=(
            "how long Triton's dynamic batcher holds a request for others to join its batch, in "
            f"microseconds (default {DEFAULT_MAX_QUEUE_DELAY_US}{UPDATES_NOTE if updates else ''}); "
            "wider keeps batches full behind the OpenAI gateway, at the cost of that much latency for "
            "a lone request"
        ),
    )


def add_newline_token_option(parser: argparse.ArgumentParser, *, updates: bool = False) -> None:
    """--newline-token; `updates`: not given is None, given empty is "" (off, where a deployment
    written again would keep its own)."""
    parser.add_argument(
        "--newline-token",
        metavar="TOKEN",
        # empty = off, so deployments can pass an unset variable
        type=str if updates else (lambda value: value or None),
        help=(
            "write \\n in prompts, stop and bad words as TOKEN and turn TOKEN back into \\n in answers "
            "(rinna's instruction models: --newline-token '<NL>'); default: off"
            + (f"{UPDATES_NOTE}; '' turns it off" if updates else "")
        ),
    )


# the defaults of the options of `triton-repo`, where it writes a deployment again
UPDATES_NOTE = ", or as the deployment was written when --out is one"


def check_port(value: int, flag: str) -> None:
    if not 0 <= value <= 65535:
        raise UserError(f"{flag} {value} is not a port number; use 0..65535")


def add_gateway_options(parser: argparse.ArgumentParser) -> None:
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
            'keys per tenant: a JSON object {"KEY": ["task", ...] or "*"}, or per key an object with '
            '"tasks", "tenant" and the limits max_concurrent, requests_per_minute, tokens_per_minute, '
            "max_tokens, and the tenant's weight in admission (README: Limits per key); a key sees and "
            "uses only its models; read again when the file changes"
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
        help="do not count requests and tokens per task and tenant (default: Prometheus text at /metrics)",
    )
    parser.add_argument(
        "--access-log",
        action="store_true",
        help=(
            "a line per completion or chat request, and per refused /v1 call, on stderr: request id "
            "(as x-request-id), tenant, model, status, seconds, tokens (default: errors only)"
        ),
    )
    parser.add_argument(
        "--cors-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help=(
            "let web pages from ORIGIN (e.g. https://chat.example.com) call the API from a browser "
            "(CORS); repeatable; * for any origin (default: none)"
        ),
    )
    parser.add_argument(
        "--max-in-flight",
        type=int,
        metavar="N",
        help=(
            "prompt rows the gateway keeps at Triton at once (a request of N prompts takes N); the "
            "others wait, admitted round-robin by tenant (default: what fills the model's batches, "
            "its max_batch_size x instances; split among --workers)"
        ),
    )
    parser.add_argument(
        "--admission",
        choices=("fair", "fifo"),
        default="fair",
        help=(
            "fair: waiting requests are admitted round-robin by tenant, a turn admitting the tenant's "
            "weight of them (default); fifo: in arrival order, as Triton's own queue serves them"
        ),
    )
    parser.add_argument(
        "--queue-timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how long a request may wait for a place at Triton before a 503 (default %(default)g)",
    )
    parser.add_argument(
        "--request-timeout",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="how long one generation may take at Triton before a 504 (default %(default)g; its "
        "places stay taken until Triton ends it); raise it for long answers from a slow model",
    )
    parser.add_argument(
        "--max-model-len",
        type=int,
        default=2048,
        metavar="TOKENS",
        help="prompt + completion tokens a request may ask for (default %(default)d, GPT-NeoX's context)",
    )


def gateway_limits(args: argparse.Namespace) -> dict[str, float | int | bool | None]:
    """The GatewaySettings fields of the options add_gateway_options adds, checked."""
    if args.max_in_flight is not None and args.max_in_flight < 1:
        raise UserError(f"--max-in-flight must be at least 1, got {args.max_in_flight}")
    if not args.queue_timeout > 0:
        raise UserError(f"--queue-timeout must be more than 0 seconds, got {args.queue_timeout:g}")
    if not 0 < args.request_timeout < float("inf"):
        raise UserError(
            f"--request-timeout must be more than 0 seconds (and finite), got {args.request_timeout:g}"
        )
    if not 2 <= args.max_model_len < 2**31:  # FT counts a sequence's tokens in int
        raise UserError(f"--max-model-len must be within 2 to 2**31 - 1 tokens, got {args.max_model_len}")
    return {
        "max_in_flight": args.max_in_flight,
        "fair": args.admission == "fair",
        "queue_timeout": args.queue_timeout,
        "timeout": args.request_timeout,
        "max_model_len": args.max_model_len,
    }


def cors_origins(values: Sequence[str]) -> tuple[str, ...]:
    """--cors-origin values, each checked to be an origin as browsers send it, or *."""
    for value in values:
        if value != "*" and not _ORIGIN.fullmatch(value):
            raise UserError(
                f"--cors-origin {value!r} is not an origin as a browser sends it: give scheme and host "
                "(and port), no path or trailing slash, e.g. https://chat.example.com; or * for any"
            )
    return tuple(dict.fromkeys(values))


_ORIGIN = re.compile(r"https?://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)(:\d{1,5})?")


def gateway_keys(values: Sequence[str], dotenv: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """`--api-key` values and FTPREFIX_API_KEY: the environment's, else a deployment's `.env`'s
    (`dotenv`), as compose's interpolation takes it."""
    import os

    from ftprefix.gateway.auth import ENV_KEY

    env = os.environ.get(ENV_KEY) or (dotenv or {}).get(ENV_KEY)
    return (*values, *([env] if env else []))


def stop_as_on_ctrl_c(signum: int, frame: object) -> None:
    """A SIGTERM handler (Docker and Kubernetes stop with SIGTERM): the command stops as on Ctrl-C,
    through KeyboardInterrupt, with its clean-up and exit 0."""
    raise KeyboardInterrupt
