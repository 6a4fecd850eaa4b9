"""Lines for the person running ftprefix, where whoever reads them may go away.

A command's reader that stops reading (`ftprefix tasks list | head -1`) ends the command, as it
ends `cat` (cli.py). A server is different: it serves clients, and its lines are for its operator.
`ftprefix serve DIR | tee serve.log` whose `tee` ended turned each line into a BrokenPipeError,
and the one the watcher thread met ended that thread: the server went on answering but picked up
no new task and started no dead engine process again. `say` drops a line nobody can read instead.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import TextIO


def silence(stream: TextIO | None) -> None:
    """What is written to `stream` from now on goes nowhere, quietly: its reader went away for
    good. Nothing happens to a stream without a descriptor of its own (a test's capture)."""
    if stream is None:
        return
    with contextlib.suppress(OSError, ValueError):
        quiet = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(quiet, stream.fileno())
        finally:
            os.close(quiet)


def say(line: str, *, error: bool = False) -> None:
    """`line` on stdout (stderr where `error`), at once, or nowhere where it cannot be written:
    never an exception for the thread that has something to say."""
    stream = sys.stderr if error else sys.stdout
    if stream is None:  # started with that descriptor closed: Python has no stream for it
        return
    try:
        print(line, file=stream, flush=True)
    except BrokenPipeError:
        silence(stream)  # the buffered line goes to /dev/null on the next flush, not again here
    except (OSError, ValueError):  # a full disk that may clear, a stream closed in the process
        pass


def human_bytes(n: int) -> str:
    """A size as a person reads it: 512 B, 1.5 KiB ... 14.2 GiB."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
