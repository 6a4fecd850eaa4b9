"""The python backend's stub processes of one embedded server: which are alive, and which model
each runs.

Every Triton model instance of the python backend (the engine's instances, the text models) runs
in a process of its own, a stub. A stub that dies (killed for memory, a crash) is not started
again by tritonserver 2.51, nor is its model marked unready: every request Triton hands that
instance fails ("Stub process '...' is not healthy") while `/v2/health/ready` says ready, so a
server with two engine instances went on failing half its requests for good. The python backend's
own restart of an unhealthy stub was removed upstream (triton-inference-server/python_backend,
`src/python_be.cc`, TRITONBACKEND_ModelInstanceExecute). Loading the model again starts all its
instances afresh, with requests in flight on the old ones finishing there; the server's watcher
(server.py) does that when an instance has no stub left.

A stub is told apart by its command line, which the python backend writes as: the stub binary,
the model's `model.py`, its shared-memory region (named after the server's prefix, tritonserver.py),
two sizes, the server's pid, the backend's directory, a handle, and the instance's name
(`fastertransformer_0_1`; python_backend `src/stub_launcher.cc`). An instance is alive while one of
its stubs is: a model loaded again starts new stubs for its instances before the old ones end, so
for a while an instance has two. Linux only (/proc), as the server is.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

STUB_BINARY = "triton_python_backend_stub"


@dataclass(frozen=True)
class Stub:
    pid: int
    model: str  # the model's directory name in the repository
    instance: str  # the model instance it runs, e.g. fastertransformer_0_1
    cmdline: bytes  # as /proc showed it: a pid used again by another process shows another

    def alive(self) -> bool:
        try:
            with open(f"/proc/{self.pid}/cmdline", "rb") as f:
                if f.read() != self.cmdline:
                    return False
            with open(f"/proc/{self.pid}/stat", "rb") as f:
                # the state follows the command name, in parentheses: Z is dead, not yet reaped
                return f.read().rpartition(b")")[2].split()[0] != b"Z"
        except (OSError, IndexError):
            return False


def find(server_pid: int, shm_prefix: str) -> list[Stub]:
    """The stubs of the tritonserver process `server_pid` whose regions carry `shm_prefix`."""
    stubs = []
    try:
        pids = [int(name) for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue  # gone meanwhile, or not ours to read
        args = cmdline.split(b"\0")
        if (
            len(args) > 8
            and os.path.basename(args[0]) == STUB_BINARY.encode()
            and args[2].startswith(shm_prefix.encode())
            and args[5] == str(server_pid).encode()
        ):
            # <repository>/<model>/<version>/model.py
            model = Path(os.fsdecode(args[1])).parent.parent.name
            stubs.append(Stub(pid, model, os.fsdecode(args[8]), cmdline))
    return stubs
