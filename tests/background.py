"""Commands that some tests check, run beside the rest of the suite from its start.

The benchmark scripts' tiny runs, the demo and the oldest supported stack's short job are whole
programs that spend most of their time starting processes and servers or training on one thread,
and the tests that check them assert no figure that other work beside them could change. A test
marked `background(argv, cwd=, env=)` has its command run by one process (background_runner.py)
from the moment the session's tests are collected, one command after another at a lower CPU
priority, so that they take the time the suite's own tests leave idle rather than hold those up;
the marked tests run last and read the command's output through the `background_run` fixture
(conftest.py). Run two at a time in the middle of the suite, these commands held it up for about
two minutes.

The runner's processes are the suite's children but belong to no test: `runner_pids` is what
`serving_support.descendants` leaves out when a test looks for processes that it started.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import pytest

RUNNER = Path(__file__).with_name("background_runner.py")
SCRATCH = "{scratch}"  # in a command's argv: a directory of its own, removed at the session's end
_runner_pids: set[int] = set()


def runner_pids() -> frozenset[int]:
    return frozenset(_runner_pids)


@dataclass(frozen=True)
class Finished:
    """A background command's run, as a test reads it."""

    returncode: int
    stdout: str
    stderr: str
    scratch: Path | None  # the directory SCRATCH named in its argv


class BackgroundRuns:
    """The marked items' commands, running in one runner process; `result` waits for one."""

    def __init__(self, items: list[pytest.Item]) -> None:
        self._scratch_root = Path(tempfile.mkdtemp(prefix="ftprefix-test-background-"))
        self._scratch: dict[str, Path] = {}
        jobs = []
        for item in items:
            mark = item.get_closest_marker("background")
            assert mark is not None
            argv = [str(a) for a in mark.args]
            if SCRATCH in argv:
                self._scratch[item.nodeid] = self._scratch_root / f"{len(self._scratch)}"
                self._scratch[item.nodeid].mkdir()
                argv = [str(self._scratch[item.nodeid]) if a == SCRATCH else a for a in argv]
            cwd = mark.kwargs.get("cwd")
            jobs.append(
                {"id": item.nodeid, "argv": argv, "cwd": cwd and str(cwd), "env": mark.kwargs.get("env", {})}
            )
        self._results: dict[str, Future[dict]] = {job["id"]: Future() for job in jobs}
        # its own session, not the terminal's: a Ctrl-C reaches pytest, whose stop() ends it
        self._proc = subprocess.Popen(
            [sys.executable, str(RUNNER), str(os.getpid())],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        _runner_pids.add(self._proc.pid)
        assert self._proc.stdin is not None
        self._proc.stdin.write(json.dumps(jobs))
        self._proc.stdin.close()
        self._reader = threading.Thread(target=self._read, name="background-runs", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._proc.stdout is not None and self._proc.stderr is not None
        for line in self._proc.stdout:
            done = json.loads(line)
            self._results[done["id"]].set_result(done)
        why = self._proc.stderr.read()[-2000:]
        for result in self._results.values():
            if not result.done():
                result.set_exception(
                    RuntimeError(f"the background runner ended before this command did:\n{why}")
                )

    def result(self, nodeid: str) -> Finished:
        done = self._results[nodeid].result()
        if "error" in done:
            raise AssertionError(f"the background command could not run: {done['error']}")
        return Finished(done["returncode"], done["stdout"], done["stderr"], self._scratch.get(nodeid))

    def stop(self) -> None:
        """Ends whatever still runs (a session stopped early by -x or Ctrl-C) and removes the
        commands' scratch directories."""
        if self._proc.poll() is None:
            self._proc.terminate()  # it ends its commands (background_runner.py)
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self._proc.pid, signal.SIGKILL)
        self._proc.wait()
        self._reader.join()
        _runner_pids.discard(self._proc.pid)
        shutil.rmtree(self._scratch_root)
