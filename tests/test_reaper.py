"""reaper.py with real processes: what it does when the process that started a Triton dies, and
that it does nothing while that process lives.

Triton's part is played by a process leading its own session, as the embedded Triton does, with a
child in its group that neither exits when its parent does nor on SIGTERM or SIGHUP: what a
python backend stub caught in a command when its Triton died is (reaper.py says why). The owner is
a process standing for `ftprefix serve`, which starts the reaper and is then killed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from serving_support import alive, wait_gone

from ftprefix.serving import tritonserver

# the stub: deaf to SIGTERM and SIGHUP, it prints its pid and waits for ever
STUB = """
import os, signal
for deaf_to in (signal.SIGTERM, signal.SIGHUP):
    signal.signal(deaf_to, signal.SIG_IGN)
print(os.getpid(), flush=True)
signal.pause()
"""

# Triton: starts the stub in its group, and exits on SIGTERM (or is deaf to it too: argv[2])
TRITON = """
import signal, subprocess, sys
if sys.argv[2] == "deaf":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
subprocess.Popen([sys.executable, "-c", sys.argv[1]])
signal.pause()
"""

# the owner: starts Triton in a session of its own, then the reaper, as EmbeddedServer does;
# prints both pids, then waits to be killed
OWNER = """
import os, signal, subprocess, sys
stub, triton_code, deaf, grace, shm_prefix, workdir = sys.argv[1:]
triton = subprocess.Popen([sys.executable, "-c", triton_code, stub, deaf], start_new_session=True)
reaper = [sys.executable, "-m", "ftprefix.serving.reaper", str(triton.pid), str(os.getpid())]
reaper = subprocess.Popen([*reaper, grace, shm_prefix, workdir], start_new_session=True)
print(triton.pid, reaper.pid, flush=True)
signal.pause()
"""


def _start(
    tmp_path: Path, *, deaf: bool, grace: float
) -> tuple[subprocess.Popen, dict[str, int], Path, Path]:
    """The owner, the pids {"triton", "stub", "reaper"}, the server's scratch directory and one of its
    shared-memory regions."""
    workdir = tmp_path / "ftprefix-serve-x"
    workdir.mkdir()
    (workdir / "tritonserver.log").write_text("")
    prefix = tritonserver.shm_prefix()
    region = tritonserver.SHM_DIR / f"{prefix}region"
    region.write_bytes(b"")
    owner = subprocess.Popen(
        [
            sys.executable,
            "-c",
            OWNER,
            STUB,
            TRITON,
            "deaf" if deaf else "plain",
            str(grace),
            prefix,
            str(workdir),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert owner.stdout is not None
    first, second = owner.stdout.readline().split(), owner.stdout.readline().split()
    # the two lines come in either order: "triton reaper", and the stub's "pid"
    pair, single = (first, second) if len(first) == 2 else (second, first)
    pids = {"triton": int(pair[0]), "reaper": int(pair[1]), "stub": int(single[0])}
    return owner, pids, workdir, region


def _end(owner: subprocess.Popen, pids: dict[str, int], region: Path) -> None:
    owner.kill()
    owner.wait()
    for pid in wait_gone(set(pids.values()), seconds=0):
        os.kill(pid, signal.SIGKILL)
    region.unlink(missing_ok=True)


@pytest.mark.parametrize("deaf", [False, True], ids=["triton-exits", "triton-deaf-to-sigterm"])
def test_when_the_owner_dies_everything_of_triton_ends_and_its_files_go(tmp_path, deaf):
    owner, pids, workdir, region = _start(tmp_path, deaf=deaf, grace=0.5)
    try:
        assert all(alive(pid) for pid in pids.values())
        owner.kill()
        owner.wait()
        os.kill(pids["triton"], signal.SIGTERM)  # what the owner's death sends Triton (PDEATHSIG)
        assert wait_gone(set(pids.values())) == set()
        assert not workdir.exists() and not region.exists()
    finally:
        _end(owner, pids, region)


def test_a_triton_that_ends_before_its_owner_takes_the_stubs_left_and_leaves_the_files(tmp_path):
    """A Triton that ends while its owner lives: the stubs left in its group serve nothing, and the
    owner's stop, which kills them too, may never come to them (an owner killed while it stops,
    after its Triton ended: the stubs of a model still loading stayed for good). The files are the
    owner's to remove (EmbeddedServer.stop)."""
    owner, pids, workdir, region = _start(tmp_path, deaf=False, grace=0.5)
    try:
        os.kill(pids["triton"], signal.SIGTERM)
        assert wait_gone({pids["triton"], pids["reaper"], pids["stub"]}) == set()
        assert alive(owner.pid)
        assert workdir.exists() and region.exists()
    finally:
        _end(owner, pids, region)
