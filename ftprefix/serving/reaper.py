"""Nothing of an embedded Triton outlives the process that started it, however that process ends.

`EmbeddedServer.stop` stops Triton and kills what is left of its process group (Triton leads its
own group; the python backend's stubs are in it). When the process that started it dies without
stopping it (SIGKILL, a SIGTERM it does not handle, the OOM killer), Triton gets SIGTERM
(PR_SET_PDEATHSIG) and exits, but a stub whose Triton dies while the stub runs a command (a model
instance still loading, as when the process is killed during the start) never exits: the thread
that notices the dead parent waits for Python's GIL, which the stub's main thread holds while it
waits for that parent's answer (triton-inference-server/python_backend `src/pb_stub.cc`: the
parent-watch thread destroys the Stub under `gil_scoped_acquire`). Each such stub keeps its
memory, hundreds of MB with a model loaded, until someone kills it. A Triton can also stay up
after that SIGTERM, its main thread waiting forever.

This process is that someone: started beside Triton, in a session of its own (a terminal's Ctrl-C
is not for it), it waits for the process that started Triton to end, gives Triton its exit timeout,
kills Triton's process group, then removes the server's shared memory and scratch directory (and
the python backend's directory in /tmp, where the starter noted which it is: tritonserver.py). While
that process lives it does nothing: it is blocked on two pidfds, and it exits as soon as Triton
does, which `stop` waits for, killing what is left of Triton's group then too (the files are then
`stop`'s to remove). Linux only, as the embedded server is.

    python -m ftprefix.serving.reaper TRITON_PID OWNER_PID GRACE_S SHM_PREFIX [WORKDIR]
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import sys
import time
from pathlib import Path

from ftprefix.serving import tritonserver
from ftprefix.serving.tritonserver import process_alive

POLL_S = 0.5  # where pidfds are missing (Linux before 5.3): how often a process is looked at


def _pidfd(pid: int) -> int | None:
    """A pidfd of `pid` (readable once it has ended); None where pidfds are missing; -1 if `pid`
    has already ended."""
    try:
        return os.pidfd_open(pid)
    except ProcessLookupError:
        return -1
    except (AttributeError, OSError):
        return None


def _wait_any(pids: dict[int, int | None], timeout: float | None) -> set[int]:
    """The pids of `pids` (pid -> its pidfd) that have ended, waiting up to `timeout` seconds
    (None: for ever) for one to."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        ended = {pid for pid, fd in pids.items() if fd == -1 or (fd is None and not process_alive(pid))}
        if ended:
            return ended
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        fds = {fd: pid for pid, fd in pids.items() if fd is not None}
        if len(fds) < len(pids):  # some can only be polled
            left = POLL_S if left is None else min(left, POLL_S)
        poller = select.poll()
        for fd in fds:
            poller.register(fd, select.POLLIN)
        ready = poller.poll(None if left is None else left * 1000)
        ended = {fds[fd] for fd, _ in ready}
        if ended or (deadline is not None and time.monotonic() >= deadline):
            return ended


def reap(triton: int, owner: int, grace: float, shm_prefix: str, workdir: str | None) -> None:
    pids = {triton: _pidfd(triton), owner: _pidfd(owner)}
    if os.getppid() != owner:  # the owner died before this process could watch it
        pids[owner] = -1
    ended = _wait_any(pids, None)
    if owner in ended and triton not in ended:  # its exit on the signal its owner's death sent it
        _wait_any({triton: pids[triton]}, grace)
    # The stubs left in Triton's group, at once also where Triton ended while its owner lives:
    # they serve nothing any more, and the owner's stop, which killed them too, may never come to
    # them (an owner killed while it stops, once its Triton has ended: the stubs of a model still
    # loading then stayed for good)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(triton, signal.SIGKILL)
    if owner not in ended:
        return  # the files are the owner's, which may yet start another Triton beside them
    tritonserver.remove_regions(shm_prefix)
    if workdir is not None:
        with contextlib.suppress(OSError):  # the python backend's directory, where the owner noted it
            note = os.path.join(workdir, tritonserver.PYTHON_ENV_NOTE)
            with open(note, encoding="utf-8") as f:
                tritonserver.remove_python_env(Path(f.read()))
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str]) -> int:
    triton, owner, grace, shm_prefix, *rest = argv
    reap(int(triton), int(owner), float(grace), shm_prefix, rest[0] if rest else None)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
