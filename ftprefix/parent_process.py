"""What ties a process ftprefix starts to the process that started it, on Linux (elsewhere these do
nothing): it ends when its parent ends, and a session of its own keeps its parent's CPU priority.

Each is called first thing by the process it ties (serving/triton_launch.py before it becomes
Triton, a gateway worker as it starts), not in a preexec_fn: a fork with one runs the starter's
fork handlers, and grpcio's can wait there for good (see triton_launch.py).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def end_with_parent(parent: int | None = None, signum: int = signal.SIGTERM) -> bool:
    """This process gets `signum` from the kernel once its parent ends. The kernel sends it when
    the *thread* that started this process ends, not its process (prctl(2), PR_SET_PDEATHSIG): a
    parent that starts children from a thread keeps that thread alive as long as they are to run.
    False if the parent, pid `parent` where given, has ended already: then nothing will be sent."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signum)
    return parent is None or os.getppid() == parent


def give_session_niceness(niceness: int) -> None:
    """This process's session at `niceness`. Linux shares the CPU between sessions before the
    processes in them (autogroups, sched(7)): a process at nice 10 in a session of its own at the
    default takes as much CPU as any other session, whatever its niceness. Nothing where the kernel
    has no autogroups, or where a niceness below 0 would need privilege."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError):
        fd = os.open("/proc/self/autogroup", os.O_WRONLY)
        try:
            os.write(fd, str(niceness).encode())
        finally:
            os.close(fd)
