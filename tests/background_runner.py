"""Runs the suite's background commands one after another (see background.py), at nice 10:
`background_runner.py SUITE_PID`, SUITE_PID the pytest process that starts it.

Reads [{"id", "argv", "cwd", "env"}, ...] as JSON on stdin; writes one JSON line per finished
command on stdout, in order: {"id", "returncode", "stdout", "stderr"}, with "error" instead of a
return code where the command could not be started or ran past TIMEOUT_S (then it is killed).
Not a test module: pytest starts it, and the tests read what it writes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

from ftprefix import parent_process

NICENESS = 10  # CFS gives a process at nice 0 about ten times the CPU of one at 10
TIMEOUT_S = 600


def _end_with_the_suite(suite: int) -> None:
    """On SIGTERM (from pytest at the session's end, or from the kernel when the pytest process that
    started the runner ends without stopping it, killed, say), the runner ends, and every command
    of its process group gets SIGINT, as from a Ctrl-C in a terminal: the benchmark scripts and
    `ftprefix serve` stop their servers and remove their files on it (SIGTERM's default action
    left those behind). The commands get SIGINT's default action, also where pytest was started
    with SIGINT ignored (in the background of a shell)."""

    def end(signum: int, frame: object) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        os.killpg(0, signal.SIGINT)
        os._exit(128 + signum)

    signal.signal(signal.SIGINT, signal.default_int_handler)  # SIG_DFL in what it starts
    signal.signal(signal.SIGTERM, end)
    if not parent_process.end_with_parent(suite):  # it ended before the request was made
        end(signal.SIGTERM, None)


def run(job: dict) -> dict:
    done = {"id": job["id"]}
    try:
        proc = subprocess.run(
            job["argv"],
            cwd=job.get("cwd"),
            env={**os.environ, **job.get("env", {})},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {**done, "error": f"{type(exc).__name__}: {exc}"}
    return {**done, "returncode": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr}


def main() -> None:
    _end_with_the_suite(int(sys.argv[1]))
    jobs = json.load(sys.stdin)
    os.nice(NICENESS)  # inherited by every command and all that they start
    # Linux shares the CPU between sessions (autogroups, sched(7)) before the processes in them, and
    # the runner has a session of its own: at the session's default it took as much CPU as all the
    # suite's tests together, whatever its processes' niceness. The Tritons its commands start have
    # sessions of their own too, which `ftprefix serve` gives its niceness (server.py).
    parent_process.give_session_niceness(NICENESS)
    for job in jobs:
        print(json.dumps(run(job)), flush=True)


if __name__ == "__main__":
    main()
