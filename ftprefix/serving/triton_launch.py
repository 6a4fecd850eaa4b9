"""How an embedded server's Triton starts: `python -I triton_launch.py STARTER TRITON ARG...` ties
this process to its starter, the process STARTER (it gets SIGTERM once the starter's thread that
started it ends, parent_process.end_with_parent), gives its session the niceness it runs at (under
`nice ftprefix serve`, a session at the default took as much CPU as all the rest of the caller's),
then becomes Triton (exec: the same process).

A program of its own rather than subprocess's preexec_fn: a child with a preexec_fn is started with
fork(), which runs the fork handlers of every library the starter has loaded, and grpcio's (its
fork support, on by default in recent releases) waits in the starter until that process's gRPC
work is quiet: a server started in the suite's process, where earlier tests' gRPC streams were
still open, once never started. Without a preexec_fn, subprocess starts the child with vfork(),
which runs none.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def main() -> None:
    # run by path under -I: the ftprefix this file belongs to, whatever the environment says
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from ftprefix import parent_process

    starter, argv = int(sys.argv[1]), sys.argv[2:]
    if not parent_process.end_with_parent(starter):
        sys.exit(f"ftprefix: the process that started Triton (pid {starter}) has ended")
    niceness = os.nice(0)
    if niceness:
        parent_process.give_session_niceness(niceness)
    os.execv(argv[0], argv)


if __name__ == "__main__":
    main()
