"""`ftprefix openai --url TRITON_GRPC --tokenizer HF_DIR`: an OpenAI-compatible API; tasks are models."""

from __future__ import annotations

import argparse
import signal
import sys
from typing import TYPE_CHECKING, Any

from ftprefix import model_dirs
from ftprefix.commands.open_files import open_files_note
from ftprefix.commands.options import (
    add_gateway_options,
    add_newline_token_option,
    check_port,
    cors_origins,
    gateway_keys,
    gateway_limits,
    stop_as_on_ctrl_c,
)

if TYPE_CHECKING:
    import socket

    from ftprefix.text import Tokenizer


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "openai",
        help="serve an OpenAI-compatible API (completions, chat, models) in front of a Triton server",
        description=(
            'Every task of the server\'s task table is a model (model="smileface"), the base model one '
            "more under --base-model. Works in front of the FasterTransformer backend on GPUs and of "
            "`ftprefix serve`; requests go to Triton concurrently, so its dynamic batcher merges them."
        ),
    )
    p.add_argument(
        "--url",
        default="localhost:8001",
        help="gRPC address of Triton (default: %(default)s; grpcs://HOST:PORT for TLS)",
    )
    p.add_argument(
        "--http-url",
        metavar="HOST:PORT",
        help="Triton's HTTP address too (e.g. localhost:8000): whole answers then go over HTTP/1.1, and "
        "streams too where Triton has the generate extension (2.51 and newer, as `ftprefix serve`), "
        "which costs this process less CPU per call than gRPC (benchmarks/client.py) (default: gRPC "
        "only)",
    )
    p.add_argument(
        "--tokenizer",
        type=model_dirs.hf_dir,
        required=True,
        metavar="HF_DIR",
        help="the model's tokenizer directory (or ORG/NAME of a model in the Hugging Face cache)",
    )
    p.add_argument(
        "--base-model",
        metavar="NAME",
        help="model name of the base model, no task (default: the tokenizer directory's name, which is "
        "the model_name ftprefix convert writes)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s)")
    p.add_argument(
        "--port", type=int, default=8080, help="HTTP port (default %(default)s; 0 = any free port, printed)"
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="gateway processes sharing the port, one core each; the keys file and /metrics hold "
        "across them, per-key limits and --max-in-flight per worker (default %(default)s)",
    )
    p.add_argument(
        "--stop-timeout",
        type=float,
        default=25.0,
        metavar="SECONDS",
        help="on Ctrl-C / SIGTERM, how long requests in flight may finish; then a stream ends with an "
        "error event and [DONE], an answer not yet sent is a 503 (default %(default)g, within "
        "Kubernetes' default grace period of 30 s)",
    )
    add_newline_token_option(p)
    add_gateway_options(p)
    p.set_defaults(func=run, extras=("openai",))


MAX_WORKERS = 256


def run(args: argparse.Namespace) -> int:
    from ftprefix.errors import UserError
    from ftprefix.serving.server import bind_port
    from ftprefix.text import load_tokenizer

    check_port(args.port, "--port")
    args.cors_origin = cors_origins(args.cors_origin)  # one line now, before anything starts
    if not 0 <= args.stop_timeout < float("inf"):
        raise UserError(f"--stop-timeout must be 0 or more seconds (and finite), got {args.stop_timeout:g}")
    if not 1 <= args.workers <= MAX_WORKERS:
        raise UserError(f"--workers {args.workers}: use 1 to {MAX_WORKERS} (about one per core)")
    if args.max_in_flight is not None and 0 < args.max_in_flight < args.workers:
        raise UserError(
            f"--max-in-flight {args.max_in_flight} is fewer places than --workers {args.workers}, which "
            "split them and need one each: give at least as many places as workers, or fewer workers"
        )
    from ftprefix.client import FtprefixClientError
    from ftprefix.client.base import normalize_http_url, normalize_url

    try:  # one line now; the gateway's start met it, and uvicorn printed a traceback and exited 3
        normalize_url(args.url)
    except FtprefixClientError as exc:
        raise UserError(f"--url: {exc}") from None
    http_url = None
    if args.http_url is not None:
        try:
            http_url = normalize_http_url(args.http_url)
        except FtprefixClientError as exc:
            raise UserError(f"--http-url: {exc}") from None
    # one line now if the tokenizer cannot be read, not at the first request
    tokenizer = load_tokenizer(args.tokenizer, newline_token=args.newline_token)
    if (note := open_files_note("ftprefix openai")) is not None:  # before the workers start
        print(note, file=sys.stderr, flush=True)
    # held from here: a port taken meanwhile would be uvicorn's error and exit code 3, not ours
    sock = bind_port(args.host, args.port, "--port")
    args.port = sock.getsockname()[1]  # the one a 0 picked; --workers bind it again
    try:
        return _serve(args, tokenizer, http_url, sock)
    finally:
        sock.close()


def _serve(args: argparse.Namespace, tokenizer: Tokenizer, http_url: str | None, sock: socket.socket) -> int:
    from ftprefix.gateway.app import GatewaySettings
    from ftprefix.gateway.run import log_to_stderr, make_server

    settings = GatewaySettings(
        triton_url=args.url,
        triton_http_url=http_url,
        tokenizer_dir=args.tokenizer,
        base_model=args.base_model or model_dirs.model_name(args.tokenizer),
        newline_token=args.newline_token,
        api_keys=gateway_keys(args.api_key),
        api_keys_file=args.api_keys,
        chat_template=args.chat_template,
        metrics=not args.no_metrics,
        access_log=args.access_log,
        cors_origins=args.cors_origin,
        stop_timeout=args.stop_timeout,
        workers=args.workers,
        **gateway_limits(args),
    )
    server = make_server(settings, args.host, args.port, tokenizer=tokenizer)  # bad keys file: one line
    app = server.config.app
    print(
        f"ftprefix openai: http://{_url_host(args.host)}:{args.port}/v1 in front of {args.url}"
        f"{f' (and over HTTP at {http_url})' if http_url else ''}; base model "
        f"{settings.base_model!r}; tokenizer {tokenizer.description}",
        flush=True,
    )
    print(f"ftprefix openai: {app.state.keys.describe()}", flush=True)
    print(f"ftprefix openai: {app.state.describe_limits()}", flush=True)
    if args.workers > 1:
        from ftprefix.gateway.workers import run_workers

        print(
            f"ftprefix openai: {args.workers} workers; per-key limits hold per worker, the places at "
            "Triton are split among them",
            flush=True,
        )
        sock.close()  # each worker binds a socket of its own (SO_REUSEPORT), where this one would refuse them
        return run_workers(settings, args.host, args.port, args.workers)
    log_to_stderr("ftprefix openai")

    def listening() -> None:
        if server.started:
            print("ftprefix openai: ready; Ctrl-C to stop", flush=True)

    server.on_startup = listening
    # uvicorn takes SIGINT and SIGTERM while it serves, stops gracefully, then raises the signal
    # again under the handler it found: here, one that ends the command as a clean stop (exit 0,
    # as `serve` and --workers), not a death by SIGTERM (143) or an interruption (130)
    previous = signal.signal(signal.SIGTERM, stop_as_on_ctrl_c)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


def _url_host(host: str) -> str:
    """`host` as a URL writes it: an IPv6 address in brackets."""
    return f"[{host}]" if ":" in host else host
