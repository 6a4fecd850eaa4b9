"""`ftprefix serve DIR`: a real Triton server (pytriton's tritonserver binary) on this machine's CPU."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from ftprefix import model_dirs
from ftprefix.commands.open_files import open_files_note
from ftprefix.commands.options import (
    add_gateway_options,
    add_newline_token_option,
    add_queue_delay_option,
    check_port,
    cors_origins,
    gateway_keys,
    gateway_limits,
    stop_as_on_ctrl_c,
)
from ftprefix.console import say

if TYPE_CHECKING:
    import socket

    from ftprefix.gateway.run import GatewayServer
    from ftprefix.serving.server import EmbeddedServer
    from ftprefix.text import Tokenizer


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
    p.add_argument(
        "dir",
        type=Path,
        metavar="DIR",
        help=(
            "converted model (<tp>-gpu directory or its parent), or a deployment directory "
            "`ftprefix triton-repo --out` wrote: its conversion (.env) served with its settings"
        ),
    )
    # Triton's own spellings (tritonserver --grpc-port ...); the --port-X ones stay as aliases
    p.add_argument(
        "--grpc-port",
        "--port-grpc",
        type=int,
        default=8001,
        metavar="PORT",
        help="gRPC port (default 8001; 0 = any free port)",
    )
    p.add_argument(
        "--http-port",
        "--port-http",
        type=int,
        default=8000,
        metavar="PORT",
        help="HTTP port (default 8000; 0 = any free port)",
    )
    p.add_argument(
        "--host", default="127.0.0.1", help="IPv4 address (or name of one) to listen on (default 127.0.0.1)"
    )
    p.add_argument(
        "--metrics-port",
        "--port-metrics",
        type=int,
        metavar="PORT",
        help="serve Triton's Prometheus metrics on this port (default: off)",
    )
    p.add_argument(
        "--tokenizer",
        type=model_dirs.hf_dir,
        metavar="HF_DIR",
        help="Hugging Face tokenizer directory: adds preprocessing, postprocessing, ensemble (text)",
    )
    add_newline_token_option(p)
    p.add_argument(
        "--streaming",
        action="store_true",
        help="decoupled fastertransformer model: a response per generation step, as FT streams",
    )
    p.add_argument(
        "--no-watch", action="store_true", help="do not load the model again when config.ini is written"
    )
    p.add_argument(
        "--instances",
        type=int,
        metavar="N",
        help=(
            "engine processes (Triton model instances), each running batches on its own; default: "
            "one per core this process may use (nproc and the cgroup CPU quota), at most 8 and as "
            "many as memory holds"
        ),
    )
    p.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help=(
            "threads of each instance (default 1: a busy neighbour process cannot stall a thread pool, "
            "and the answers do not depend on the machine's cores)"
        ),
    )
    p.add_argument(
        "--deployment",
        type=Path,
        metavar="DIR",
        help=(
            "serve as the deployment directory `ftprefix triton-repo --out DIR` wrote: its streaming, "
            "batching window, newline token and tokenizer (what its compose.cpu.yaml runs)"
        ),
    )
    p.add_argument(
        "--openai-port",
        type=int,
        metavar="PORT",
        help="also serve the OpenAI-compatible API (ftprefix openai) on this port; needs --tokenizer",
    )
    p.add_argument(
        "--stop-timeout",
        type=float,
        metavar="SECONDS",
        help=(
            "on Ctrl-C / SIGTERM, how long requests in flight may finish (the OpenAI API's first, then "
            "Triton's) before Triton is killed (default: Triton's exit timeout, about 10 s + 2 s per "
            "model and instance; 0 = at once)"
        ),
    )
    add_gateway_options(p)
    add_queue_delay_option(p)
    p.set_defaults(func=run, extras=("serve",))


def _gateway(args: argparse.Namespace, server: EmbeddedServer, tokenizer: Tokenizer) -> GatewayServer:
    """The gateway beside the Triton server, in this process; its base model is named like the
    conversion (config.ini's model_name). Built before Triton starts: a bad keys file or chat
    template stops `serve` in one line before anything runs. Serving a deployment, the key and
    the base model's name are its .env's where it sets them, as its compose files' gateway takes
    them (FTPREFIX_API_KEY from the environment first, as compose's interpolation does)."""
    from ftprefix import layout
    from ftprefix.gateway.app import GatewaySettings
    from ftprefix.gateway.run import log_to_stderr, make_server

    log_to_stderr("ftprefix serve")
    env = args.deployment_env
    settings = GatewaySettings(
        triton_url=server.grpc_url,
        triton_http_url=server.http_url,
        tokenizer_dir=args.tokenizer,
        base_model=env.get("FTPREFIX_BASE_MODEL") or layout.read_config(server.ft_dir).model_name,
        newline_token=args.newline_token,
        api_keys=gateway_keys(args.api_key, env),
        api_keys_file=args.api_keys,
        chat_template=args.chat_template,
        metrics=not args.no_metrics,
        access_log=args.access_log,
        cors_origins=args.cors_origin,
        # the gateway's requests get the stop timeout Triton's get: they are the same requests
        stop_timeout=server.exit_timeout_s if server.stop_timeout is None else server.stop_timeout,
        **gateway_limits(args),
    )
    return make_server(settings, args.host, args.openai_port, tokenizer=tokenizer)


def _ended(code: int, log_tail: str) -> str:
    """What to say when tritonserver ended by itself (the command exits 1 for a supervisor to
    start it again)."""
    if code >= 0:
        return f"tritonserver exited with code {code}:\n{log_tail}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    if -code == signal.SIGKILL:  # nothing of it is in Triton's own log
        return (
            "tritonserver was killed (SIGKILL; the kernel's out-of-memory killer sends it when memory "
            "runs out: see `dmesg`)"
        )
    return f"tritonserver was ended by {name}:\n{log_tail}"


def _reserve_ports(args: argparse.Namespace) -> socket.socket | None:
    """Refuse one port given for two listeners (Triton would print a page of start-up log), and
    bind the OpenAI API's socket, held from here on: no other process, and none of the server's
    own free-port picks (the kernel hands out no bound port), takes its port meanwhile."""
    from ftprefix.errors import UserError
    from ftprefix.serving.server import bind_port

    given: dict[int, str] = {}
    for flag, port in (
        ("--grpc-port", args.grpc_port),
        ("--http-port", args.http_port),
        ("--metrics-port", args.metrics_port),
        ("--openai-port", args.openai_port),
    ):
        if port:
            if port in given:
                raise UserError(f"{given[port]} and {flag} are both {port}: give each its own port")
            given[port] = flag
    return None if args.openai_port is None else bind_port(args.host, args.openai_port, "--openai-port")


def _apply_deployment(args: argparse.Namespace) -> None:
    """Take the settings of `--deployment DIR`; giving them again on the command line is an error."""
    from ftprefix import layout
    from ftprefix.errors import UserError
    from ftprefix.serving import deployment
    from ftprefix.serving.batching import DEFAULT_MAX_QUEUE_DELAY_US

    given = [
        flag
        for flag, value in (
            ("--tokenizer", args.tokenizer),
            ("--newline-token", args.newline_token),
            ("--streaming", args.streaming or None),
            ("--max-queue-delay-us", None if args.max_queue_delay_us == DEFAULT_MAX_QUEUE_DELAY_US else 1),
        )
        if value is not None
    ]
    if given:
        raise UserError(
            f"{given[0]} comes from the deployment {args.deployment}: leave it out, or write the "
            "deployment again with it (ftprefix triton-repo)"
        )
    settings = deployment.read_settings(args.deployment)
    args.deployment_env = deployment.env_values(args.deployment)
    if args.dir is None:  # `ftprefix serve DEPLOYMENT`: the conversion its .env names
        args.dir = deployment.model_dir(args.deployment, args.deployment_env)
    args.tokenizer = args.deployment / deployment.TOKENIZER_DIR if settings.tokenizer else None
    args.newline_token = settings.newline_token
    args.streaming = settings.streaming
    args.max_queue_delay_us = settings.max_queue_delay_us
    conversion = layout.ft_dir(args.dir, settings.tensor_para_size)
    if (conversion / layout.CONFIG_FILE).is_file():
        args.dir = conversion  # the one the deployment serves, where the directory holds several


def _check_context(max_model_len: int, ft_dir: Path) -> None:
    """The OpenAI API's context must fit the CPU engine's rows with the longest prefix: a request
    between the two limits would pass the API and be refused by the engine, which the API's caller
    sees only as a refusal, without the reason (that is the operator's, in the log)."""
    from ftprefix import layout
    from ftprefix.engine.api import MAX_TOTAL_LEN
    from ftprefix.errors import UserError

    tasks = layout.read_config(ft_dir).tasks
    longest = max((task.prompt_length for task in tasks.live), default=0)
    if max_model_len + longest > MAX_TOTAL_LEN:
        raise UserError(
            f"--max-model-len {max_model_len} does not fit the CPU server, whose rows hold "
            f"{MAX_TOTAL_LEN} tokens with the prefix, {longest} for the longest task here: give "
            f"--max-model-len {MAX_TOTAL_LEN - longest} or less"
        )


def run(args: argparse.Namespace) -> int:
    from ftprefix import layout
    from ftprefix.errors import UserError
    from ftprefix.extras import require
    from ftprefix.serving import deployment
    from ftprefix.serving.repository import check_text_ensemble, check_tokenizer_fits
    from ftprefix.serving.server import triton_host
    from ftprefix.text import load_tokenizer

    args.deployment_env = {}
    if args.deployment is None and (args.dir / deployment.MANIFEST).is_file():
        # `ftprefix serve DEPLOYMENT`: what its compose.cpu.yaml runs, without Docker
        args.deployment, args.dir = args.dir, None
    if args.deployment is not None:
        _apply_deployment(args)
    args.host = triton_host(args.host)
    check_port(args.grpc_port, "--grpc-port")
    check_port(args.http_port, "--http-port")
    if args.metrics_port is not None:
        check_port(args.metrics_port, "--metrics-port")
    ensemble_tokenizer = args.tokenizer
    if args.openai_port is None and args.deployment is None:  # else the tokenizer is the gateway's
        check_text_ensemble(args.tokenizer is not None, args.streaming)  # before a port is taken
    if args.newline_token is not None and args.tokenizer is None:
        raise UserError("--newline-token is for text: give --tokenizer HF_DIR too")
    # one line now for a tokenizer ftprefix cannot read exactly, before Triton starts
    tokenizer = load_tokenizer(args.tokenizer, newline_token=args.newline_token) if args.tokenizer else None
    if tokenizer is not None:  # the gateway's too, where Triton has no text models (streaming)
        ft_dir = layout.find_ft_dir(args.dir)
        check_tokenizer_fits(tokenizer, layout.read_config(ft_dir), ft_dir)
    if args.openai_port is not None:
        require("openai")
        check_port(args.openai_port, "--openai-port")
        args.cors_origin = cors_origins(args.cors_origin)  # one line now, before Triton starts
        if args.tokenizer is None and args.deployment is not None:
            raise UserError(
                f"--openai-port needs a tokenizer, and the deployment {args.deployment} has none: write it "
                "again with --tokenizer HF_DIR (ftprefix triton-repo)"
            )
        if args.tokenizer is None:
            raise UserError("--openai-port needs --tokenizer HF_DIR: the OpenAI API takes and returns text")
        _check_context(args.max_model_len, layout.find_ft_dir(args.dir))
    if (note := open_files_note("ftprefix serve")) is not None:  # before Triton starts
        print(note, file=sys.stderr, flush=True)
    openai_socket = _reserve_ports(args)
    try:
        return _serve(args, tokenizer, ensemble_tokenizer, openai_socket)
    finally:
        if openai_socket is not None:
            openai_socket.close()


def _serve(
    args: argparse.Namespace,
    tokenizer: Tokenizer | None,
    ensemble_tokenizer: Path | None,
    openai_socket: socket.socket | None,
) -> int:
    from ftprefix.serving.server import EmbeddedServer, ServerError

    if args.streaming and (args.openai_port is not None or args.deployment is not None):
        # Triton has no text ensemble on a streaming model: the tokenizer is the OpenAI API's
        ensemble_tokenizer = None
    server = EmbeddedServer(
        args.dir,
        tokenizer_dir=ensemble_tokenizer,
        grpc_port=args.grpc_port,
        http_port=args.http_port,
        streaming=args.streaming,
        host=args.host,
        watch_interval=None if args.no_watch else 0.5,
        metrics_port=args.metrics_port,
        max_queue_delay_us=args.max_queue_delay_us,
        newline_token=args.newline_token if ensemble_tokenizer is not None else None,
        instances=args.instances,
        threads=args.threads,
        stop_timeout=args.stop_timeout,
    )
    gateway = _gateway(args, server, tokenizer) if args.openai_port is not None and tokenizer else None

    signal.signal(signal.SIGTERM, stop_as_on_ctrl_c)
    gateway_thread: threading.Thread | None = None
    try:
        # a reader of these lines that goes away stops nothing (console.say); this one comes before
        # the start, which with a model of billions of parameters takes a while (the copy of the
        # weights the instances share, then Triton loading each instance)
        layout = server.layout
        say(
            f"ftprefix serve: starting {layout.instances} engine instance(s) x {layout.threads} "
            f"thread(s); cores: {server.cores.count} ({server.cores.seen})"
            + (f"; {layout.note}" if layout.note else "")
        )
        try:
            server.start()
        except ServerError as exc:
            print(f"ftprefix serve: error: {exc}", file=sys.stderr)
            return 1
        say(f"ftprefix serve: models {', '.join(server.models)} from {server.ft_dir}")
        say(f"ftprefix serve: listening on grpc {server.grpc_url} and http {server.http_url}")
        if server.weights_note:
            say(f"ftprefix serve: weights {server.weights_note}")
        if tokenizer is not None:
            newline = f"; newline token {args.newline_token!r}" if args.newline_token else ""
            say(f"ftprefix serve: tokenizer {tokenizer.description}{newline}")
        if gateway is not None:
            # imported here: the web stack adds about 0.3 s to every start that serves no API
            from ftprefix.gateway.run import start_in_thread

            assert openai_socket is not None
            gateway_thread = start_in_thread(gateway, openai_socket)
            port = int(openai_socket.getsockname()[1])
            say(f"ftprefix serve: OpenAI-compatible API on http://{args.host}:{port}/v1")
            say(f"ftprefix serve: {gateway.config.app.state.keys.describe()}")
            say(f"ftprefix serve: {gateway.config.app.state.describe_limits()}")
        say("ftprefix serve: ready; Ctrl-C to stop")
        code = server.wait()
        say(f"ftprefix serve: {_ended(code, server.log_tail())}", error=True)
        return 1
    except KeyboardInterrupt:
        say("ftprefix serve: stopping", error=True)
        return 0
    finally:
        try:
            if gateway is not None and gateway_thread is not None:
                # the gateway first: it ends its requests (within the stop timeout) and closes its
                # connections to Triton, which would otherwise hold Triton's exit for all of its own
                gateway.should_exit = True
                gateway_thread.join()
        except KeyboardInterrupt:  # a second Ctrl-C: stop waiting
            pass
        finally:
            server.stop()
