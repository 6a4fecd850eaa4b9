"""`ftprefix` command line: each subcommand lives in its own module under ftprefix.commands."""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import signal
import sys
import threading
from collections.abc import Iterator, Sequence

from ftprefix import __version__
from ftprefix.console import say, silence
from ftprefix.errors import UserError
from ftprefix.extras import require

# name -> module under ftprefix.commands providing `register(subparsers)`; each module imports its
# heavy dependencies (torch, tritonclient) lazily so `ftprefix --help` stays fast.
COMMANDS = ("convert", "tasks", "verify", "serve", "triton_repo", "generate", "openai", "demo", "assets")


def version_text() -> str:
    """ftprefix's version and what the GPU image it deploys is built from."""
    from ftprefix.assets import image_pins

    return f"ftprefix {__version__}\n{image_pins().describe()}"


class _PrintVersion(argparse.Action):
    """argparse's own version action rewraps the text; the commits must stay whole."""

    def __call__(self, parser: argparse.ArgumentParser, *_args: object) -> None:
        print(version_text())
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ftprefix",
        description="Serve one GPT-NeoX base model with many prefix-tuned tasks on FasterTransformer/Triton.",
    )
    parser.add_argument(
        "--version",
        action=_PrintVersion,
        nargs=0,
        help="print the version and the GPU image's pins, and exit",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"ftprefix.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"ftprefix.commands.{name}":
                continue  # command not built yet
            raise
        module.register(sub)
    _name_each_command_parser(parser)
    return parser


def _name_each_command_parser(parser: argparse.ArgumentParser) -> None:
    """Let every (sub)command's parser find itself in the parsed arguments, so that an argument no
    command takes is refused with that command's usage rather than the top level's."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command in action.choices.values():
                command.set_defaults(command_parser=command)
                _name_each_command_parser(command)


def main(argv: Sequence[str] | None = None) -> int:
    from ftprefix.serving.cpus import wait_passively

    wait_passively()  # before any command imports torch
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # argparse's own words, from the parser of the command they were given to
        getattr(args, "command_parser", parser).error(f"unrecognized arguments: {' '.join(unknown)}")
    with _terminated_as_interrupted():
        try:
            code = _run(args)
            sys.stdout.flush()  # what is still buffered meets a reader gone here, not at exit
            return code
        except BrokenPipeError:
            return _reader_gone()


def _reader_gone() -> int:
    """What stdout fed has stopped reading (`ftprefix tasks list | head -1`): end at once without a
    word and with the status a command killed by SIGPIPE has, as `cat` does. Left to Python, it
    printed a traceback, and another one at exit, flushing stdout into the closed pipe again."""
    silence(sys.stdout)
    return 128 + signal.SIGPIPE


def _run(args: argparse.Namespace) -> int:
    try:
        require(*getattr(args, "extras", ()))
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"ftprefix {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except Terminated as exc:
        # say(): after a hang-up the terminal may take no more lines
        say(f"ftprefix {args.command}: {_STOPPING_SIGNALS[exc.signum]}", error=True)
        return 128 + exc.signum
    except KeyboardInterrupt:
        print(f"ftprefix {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        # the client's errors, where the command used the client: importing it (tritonclient,
        # grpc) for every command only to name its errors took a third of `tasks list`'s time
        client_errors = sys.modules.get("ftprefix.client.errors")
        if client_errors is not None and isinstance(exc, client_errors.FtprefixClientError):
            return _client_error(args.command, exc)
        if not isinstance(exc, OSError):
            raise
        message = path_error(exc)
        if message is not None:
            print(f"ftprefix {args.command}: error: {message}", file=sys.stderr)
            return 2
        message = storage_error(exc)
        if message is None:
            raise  # not the machine's storage: a bug, with its traceback
        print(f"ftprefix {args.command}: error: {message}", file=sys.stderr)
        return 1


def _client_error(command: str, exc: Exception) -> int:
    from ftprefix.client.errors import InferenceError, ServerUnavailableError
    from ftprefix.client.wrong_port import http_port_message

    # the server failing a request is not the user's mistake (1); the rest is bad input (2)
    message = str(exc)
    if isinstance(exc, ServerUnavailableError):
        message = http_port_message(exc.url, exc.option) or message
    print(f"ftprefix {command}: error: {message}", file=sys.stderr)
    return 1 if isinstance(exc, InferenceError) else 2


# the signals that end a command as Ctrl-C does, and what it says as it ends: SIGTERM (`timeout`,
# `kill`, a closing session's supervisor) and SIGHUP (the terminal or ssh session it ran in closed)
_STOPPING_SIGNALS = {signal.SIGTERM: "terminated", signal.SIGHUP: "hung up"}


class Terminated(KeyboardInterrupt):
    """One of _STOPPING_SIGNALS, raised where the command runs."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@contextlib.contextmanager
def _terminated_as_interrupted() -> Iterator[None]:
    """SIGTERM and SIGHUP end a command as Ctrl-C does: its `finally` and `except BaseException`
    blocks run, so a conversion's staging directory, the demo's scratch directory and a server it
    started are removed, as they are on Ctrl-C (killed by the signals' default action, they were
    left behind). Only for a signal that would otherwise kill the process (not one that `nohup`
    ignores), and as it was again after the command (the tests run commands in-process). serve
    stops on them gracefully, as on Ctrl-C; the gateway takes a hang-up as uvicorn's graceful stop
    (GatewayServer.capture_signals)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminated(signum: int, _frame: object) -> None:
        raise Terminated(signum)

    before = {signum: signal.getsignal(signum) for signum in _STOPPING_SIGNALS}
    for signum, handler in before.items():
        if handler is signal.SIG_DFL:
            signal.signal(signum, terminated)
    try:
        yield
    finally:
        for signum, handler in before.items():
            if handler is signal.SIG_DFL:
                signal.signal(signum, handler)


# what the machine's storage refuses: the user's to fix, in one line (staged writes leave nothing)
_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


# paths no file can be at: the user's to give again, whichever option named them
_IMPOSSIBLE_PATH = {
    errno.ENOTDIR: "a part of it is a file, not a directory",
    errno.ENAMETOOLONG: "a name in it is longer than the file system allows",
    errno.ELOOP: "its symbolic links lead round in a loop",
}


def path_error(exc: OSError) -> str | None:
    """The one line for an OSError that says a path given cannot be, or None for any other."""
    if exc.errno not in _IMPOSSIBLE_PATH:
        return None
    where = f" ({exc.filename})" if exc.filename else ""
    return f"{exc.strerror}{where}: {_IMPOSSIBLE_PATH[exc.errno]}; give another path"


def storage_error(exc: OSError) -> str | None:
    """The one line for an OSError the disk raised (full, over quota, read-only, not allowed), or
    None for any other."""
    where = f" ({exc.filename})" if exc.filename else ""
    if exc.errno in _FULL:
        return f"{exc.strerror}{where}: free some space, or write somewhere else, and run it again"
    if exc.errno == errno.EROFS:
        return f"{exc.strerror}{where}: choose a directory you may write to"
    if exc.errno == errno.EACCES:  # a read as well as a write: this user may not do one of them
        return (
            f"{exc.strerror}{where}: run as a user who may read and write it, or give this one the "
            "permissions (a converted model must be readable by whoever serves it)"
        )
    return None


if __name__ == "__main__":
    sys.exit(main())
