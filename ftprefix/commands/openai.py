"""`ftprefix openai --url TRITON_GRPC --tokenizer HF_DIR`: an OpenAI-compatible API; tasks are models."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "openai",
        help="serve an OpenAI-compatible API (/v1/completions, /v1/models) in front of a Triton server",
        description=(
            'Every task of the server\'s task table is a model (model="smileface"), the base model one '
            "more under --base-model. Works in front of the FasterTransformer backend on GPUs and of "
            "`ftprefix serve`; requests go to Triton concurrently, so its dynamic batcher merges them."
        ),
    )
    p.add_argument("--url", default="localhost:8001", help="gRPC address of Triton (default: %(default)s)")
    p.add_argument(
        "--tokenizer", type=Path, required=True, metavar="HF_DIR", help="the model's tokenizer directory"
    )
    p.add_argument(
        "--base-model",
        metavar="NAME",
        help="model name of the base model, no task (default: the tokenizer directory's name, which is "
        "the model_name ftprefix convert writes)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s)")
    p.add_argument("--port", type=int, default=8080, help="HTTP port (default %(default)s)")
    p.set_defaults(func=run, extras=("openai",))


def run(args: argparse.Namespace) -> int:
    from ftprefix.client.tokenizer import ClientTokenizer
    from ftprefix.errors import UserError
    from ftprefix.gateway.run import make_server
    from ftprefix.serving.server import check_port_free

    if not 0 < args.port <= 65535:
        raise UserError(f"--port {args.port} is not a port number; use 1..65535")
    ClientTokenizer(args.tokenizer)  # one line now if the tokenizer is missing, not at the first request
    check_port_free(args.host, args.port, "--port")
    base = args.base_model or args.tokenizer.resolve().name
    print(
        f"ftprefix openai: http://{args.host}:{args.port}/v1 in front of {args.url}; base model {base!r}",
        flush=True,
    )
    make_server(args.url, args.tokenizer, base, args.host, args.port).run()
    return 0
