"""The test process runs ftprefix's commands in-process, after other tests have imported torch: it
takes the OpenMP wait policy the `ftprefix` command sets for itself (cli.main) from the start.

Tests marked `background` have their commands run beside the rest of the suite (background.py)."""

from __future__ import annotations

import errno
import fcntl
import os

# Before anything imports grpc, which reads it once. grpcio's fork support (on by default in recent
# releases) makes every fork() wait in its handler until this process's gRPC work is quiet: a
# server started with a preexec_fn (a fork, not a vfork) while earlier tests' gRPC streams were
# still open hung the suite for good, and its helpers still start commands so. The suite only ever
# forks to exec, which needs none of that support (grpc/grpc `doc/fork_support.md`).
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import pytest
from background import BackgroundRuns, Finished

from ftprefix.serving.cpus import wait_passively

wait_passively()
RUNS = pytest.StashKey[BackgroundRuns]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "background(*argv, cwd=None, env=None): the command the test checks, run beside the suite "
        "from its start (tests/background.py); the test runs last and reads it from `background_run`",
    )


def _marked(item: pytest.Item) -> bool:
    return item.get_closest_marker("background") is not None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=_marked)  # stable: the marked ones last, each part in its order


def pytest_collection_finish(session: pytest.Session) -> None:
    marked = [item for item in session.items if _marked(item)]
    if marked and not session.config.option.collectonly:
        session.config.stash[RUNS] = BackgroundRuns(marked)


def pytest_sessionfinish(session: pytest.Session) -> None:
    runs = session.config.stash.get(RUNS, None)
    if runs is not None:
        runs.stop()


@pytest.fixture
def background_run(request: pytest.FixtureRequest) -> Finished:
    """The marked test's command, once it has finished."""
    return request.config.stash[RUNS].result(request.node.nodeid)


@pytest.fixture
def file_system_without_locks(monkeypatch: pytest.MonkeyPatch) -> None:
    """flock answers every lock as an NFS client without its lock service (rpc.statd) does: ENOLCK.
    No file system here refuses locks, so flock itself is made to; the rest stays real."""

    def no_locks(_fd: int, _operation: int) -> None:
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks)
