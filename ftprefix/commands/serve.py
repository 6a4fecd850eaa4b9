"""`ftprefix serve DIR`: a real Triton server (pytriton's tritonserver binary) on this machine's CPU."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from types import FrameType


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve",
        help="serve a converted model on a local Triton server (CPU, python backend twin of FT)",
        description=(
            "Generate a Triton model repository for DIR (FasterTransformer's tensor interface, run by "
            "ftprefix's engine) and start Triton Inference Server on it. Tasks added with `ftprefix tasks "
            "add` while it runs are picked up without a restart. Ctrl-C stops it."
        ),
    )
    p.add_argument("dir", type=Path, metavar="DIR", help="converted model (<tp>-gpu directory or its parent)")
    p.add_argument("--port-grpc", type=int, default=8001, help="gRPC port (default 8001; 0 = any free port)")
    p.add_argument("--port-http", type=int, default=8000, help="HTTP port (default 8000; 0 = any free port)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument(
        "--tokenizer",
        type=Path,
        metavar="HF_DIR",
        help="Hugging Face tokenizer directory: adds preprocessing, postprocessing, ensemble (text)",
    )
    p.add_argument(
        "--streaming",
        action="store_true",
        help="decoupled fastertransformer model: a response per generation step, as FT streams",
    )
    p.add_argument("--no-watch", action="store_true", help="do not reload when config.ini changes")
    p.set_defaults(func=run, extras=("serve",))


def _check_port(value: int, flag: str) -> None:
    from ftprefix.errors import UserError

    if not 0 <= value <= 65535:
        raise UserError(f"{flag} {value} is not a port number; use 0..65535")


def run(args: argparse.Namespace) -> int:
    from ftprefix.serving.server import EmbeddedServer, ServerError

    _check_port(args.port_grpc, "--port-grpc")
    _check_port(args.port_http, "--port-http")
    server = EmbeddedServer(
        args.dir,
        tokenizer_dir=args.tokenizer,
        grpc_port=args.port_grpc,
        http_port=args.port_http,
        streaming=args.streaming,
        host=args.host,
        watch_interval=None if args.no_watch else 0.5,
    )

    def _terminate(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)
    try:
        try:
            server.start()
        except ServerError as exc:
            print(f"ftprefix serve: error: {exc}", file=sys.stderr)
            return 1
        print(f"ftprefix serve: models {', '.join(server.models)} from {server.ft_dir}", flush=True)
        print(f"ftprefix serve: listening on grpc {server.grpc_url} and http {server.http_url}", flush=True)
        print("ftprefix serve: ready; Ctrl-C to stop", flush=True)
        code = server.wait()
        print(f"ftprefix serve: tritonserver exited with code {code}:\n{server.log_tail()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("ftprefix serve: stopping", file=sys.stderr, flush=True)
        return 0
    finally:
        server.stop()
