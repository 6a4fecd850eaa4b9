"""`ftprefix generate --url HOST:PORT --task NAME "text"`: generate with a running server."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from typing import Any

from ftprefix import model_dirs
from ftprefix.commands.options import add_newline_token_option
from ftprefix.errors import UserError

# the options that are the client's sampling parameters, under the same names
SAMPLING = ("max_new_tokens", "min_new_tokens", "temperature", "top_k", "top_p", "repetition_penalty", "seed")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "generate",
        help="generate text with a running server, choosing the task by name",
        description="Send prompts to a running ftprefix/Triton server and print the continuations.",
    )
    p.add_argument("prompts", nargs="+", metavar="PROMPT", help="prompt text (several make one batch)")
    p.add_argument(
        "--url",
        default="localhost:8001",
        help="gRPC address of the server (default: %(default)s; grpcs://HOST:PORT for TLS)",
    )
    p.add_argument(
        "--task",
        action="append",
        default=[],
        metavar="NAME",
        help="task for every prompt, or repeat once per prompt; leave out for the base model",
    )
    p.add_argument(
        "--tokenizer",
        type=model_dirs.hf_dir,
        metavar="HF_DIR",
        help="tokenise here with the model's tokenizer (default: send text to the server's ensemble)",
    )
    add_newline_token_option(p)
    p.add_argument(
        "--token-ids", action="store_true", help="each PROMPT is token ids separated by commas or spaces"
    )
    p.add_argument("--max-new-tokens", type=int, default=32, metavar="N", help="(default: %(default)s)")
    p.add_argument(
        "--min-new-tokens",
        type=int,
        default=0,
        metavar="N",
        help="the end token cannot come before N new tokens (FT's min_length; default: %(default)s)",
    )
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0, help="0 with --top-p 0 decodes greedily (default)")
    p.add_argument("--top-p", type=float, default=0.0)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--stop", action="append", default=[], metavar="TEXT", help="stop after this text; repeatable"
    )
    p.add_argument(
        "--stream",
        action="store_true",
        help="print tokens as they arrive, prompt after prompt (server started with streaming)",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object per prompt (with --stream, per chunk; its index is its prompt's)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="per request (default: %(default)s; inf: wait as long as it takes)",
    )
    p.set_defaults(func=run)


def _token_ids(text: str) -> list[int]:
    try:
        return [int(t) for t in text.replace(",", " ").split()]
    except ValueError:
        raise UserError(f"--token-ids: {text!r} is not a list of integers like '12,7,99'") from None


def _tasks(names: list[str], count: int) -> str | list[str | None] | None:
    if not names:
        return None
    if len(names) == 1:
        return names[0]
    if len(names) != count:
        raise UserError(f"got {len(names)} --task options for {count} prompts; give one, or one per prompt")
    return list(names)


def run(args: argparse.Namespace) -> int:
    from ftprefix.client import InvalidRequestError

    try:
        return _generate(args)
    except InvalidRequestError as exc:
        raise UserError(_as_options(str(exc))) from None


def _as_options(message: str) -> str:
    """The client's words for its settings (`max_new_tokens must be ...`, `use top_k=0`) as this
    command's options."""
    for name in SAMPLING:
        option = f"--{name.replace('_', '-')}"
        if message.startswith(f"{name} "):
            message = option + message[len(name) :]
        message = message.replace(f" {name}=", f" {option} ")
    return message


def _generate(args: argparse.Namespace) -> int:
    from ftprefix.client import Client

    if not args.timeout > 0:
        raise UserError(
            f"--timeout must be more than 0 seconds (inf: wait as long as it takes), got {args.timeout}"
        )
    prompts: list[Any] = [_token_ids(p) for p in args.prompts] if args.token_ids else list(args.prompts)
    tasks = _tasks(args.task, len(prompts))
    sampling = {name: getattr(args, name) for name in SAMPLING}
    if args.stream and args.tokenizer is None and not args.token_ids:
        raise UserError(
            "--stream needs --tokenizer HF_DIR (or --token-ids): a stream comes from the "
            "fastertransformer model, which takes and gives token ids"
        )
    with Client(
        args.url, tokenizer=args.tokenizer, newline_token=args.newline_token, timeout=args.timeout
    ) as client:
        if args.stream:
            if not client.model_info().decoupled:
                raise UserError(
                    f"--stream: the server at {args.url} answers once per request; leave out --stream, "
                    "or serve the model with `ftprefix serve --streaming` (`triton-repo --streaming` on GPUs)"
                )
            # one prompt after another, each on its line as the batch's answers are; a JSON
            # chunk's index is its prompt's place, as in a batch
            for index, prompt in enumerate(prompts):
                task = tasks if tasks is None or isinstance(tasks, str) else tasks[index]
                for chunk in client.stream(prompt, task=task, stop=args.stop or None, **sampling):
                    if args.json:
                        print(json.dumps({**asdict(chunk), "index": index}), flush=True)
                    else:
                        print(
                            chunk.text if chunk.text is not None else _ids(chunk.token_ids) + " ",
                            end="",
                            flush=True,
                        )
                if not args.json:
                    print()
            return 0
        completions = client.generate_batch(prompts, tasks=tasks, stop=args.stop or None, **sampling)
    for completion in completions:
        if args.json:
            print(json.dumps(asdict(completion)))
        else:
            print(completion.text if completion.text is not None else _ids(completion.token_ids))
    return 0


def _ids(ids: list[int]) -> str:
    return " ".join(str(t) for t in ids)
