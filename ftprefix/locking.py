"""One writer at a time per converted model: an OS file lock in the conversion's output directory.

`convert` into an existing output, `tasks add` and `tasks remove` hold it exclusively for their
whole read-modify-write; `ftprefix serve` holds it shared while it loads a changed task table, so
it never reads a config.ini naming a prefix file that is not written yet. `fcntl.flock` is
released by the kernel when the process dies, so a crash never leaves a stale lock.

The lock file (`layout.LOCK_FILE` in the directory that holds `<tp>-gpu`) is removed by the
exclusive holder when it is done, so a command leaves no trace; a waiter that finds it has locked
a removed file opens the current one and waits again. `triton-repo` takes the same kind of lock
for its deployment directory (`exclusive_making`, with a lock file beside it).

A file system that takes no locks (an NFS client without rpc.statd answers ENOLCK) is refused for
writing, in one line, rather than written unguarded; readers (`shared`) read it unlocked.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

from ftprefix import layout
from ftprefix.errors import UserError

DEFAULT_WAIT_S = 300.0


class LockTimeoutError(UserError):
    """Another ftprefix command kept the model locked for longer than we were allowed to wait."""

    exit_code = 1


class LocksUnavailableError(UserError):
    """The file system refuses file locks: an NFS client without its lock service, typically."""

    exit_code = 1


# what flock raises where the file system takes no locks (NFS without rpc.statd: ENOLCK)
_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS}


def _acquire(path: Path, mode: int, wait: float, subject: Path) -> int:
    deadline = time.monotonic() + wait
    delay = 0.01
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            while True:
                try:
                    fcntl.flock(fd, mode | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise LockTimeoutError(
                            f"another ftprefix command is changing {subject} and did not finish within "
                            f"{wait:g} s; wait for it, or pass a larger --wait"
                        ) from None
                    time.sleep(delay)  # poll: flock has no timeout of its own
                    delay = min(delay * 2, 0.2)
                except OSError as exc:
                    if exc.errno not in _NO_LOCKS:
                        raise
                    with contextlib.suppress(OSError):  # no command can hold a lock here: ours to remove
                        path.unlink()
                    raise LocksUnavailableError(
                        f"cannot lock {path} ({exc.strerror}): ftprefix locks what it changes, so that "
                        "two commands never write it at once; on NFS, run the client's lock service "
                        "(rpc.statd), or write to a local disk"
                    ) from None
            try:
                if os.stat(path).st_ino == os.fstat(fd).st_ino:
                    return fd
            except FileNotFoundError:
                pass
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # the holder removed the file we locked: lock the current one


@contextlib.contextmanager
def exclusive(directory: str | os.PathLike[str], wait: float = DEFAULT_WAIT_S) -> Iterator[None]:
    """Hold the model lock of `directory` (the one holding `<tp>-gpu`) alone."""
    with exclusive_file(Path(directory) / layout.LOCK_FILE, Path(directory), wait):
        yield


@contextlib.contextmanager
def exclusive_file(path: Path, subject: Path, wait: float = DEFAULT_WAIT_S) -> Iterator[None]:
    """Hold the lock file `path`, which guards `subject`, alone; the file is gone afterwards."""
    fd = _acquire(path, fcntl.LOCK_EX, wait, subject)
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        os.close(fd)


@contextlib.contextmanager
def exclusive_making(
    directory: Path, lock_name: str, subject: Path, wait: float = DEFAULT_WAIT_S
) -> Iterator[None]:
    """Hold the lock file `directory/lock_name` alone, making `directory` and its missing parents
    for it. If the block fails, or the lock is not had (a timeout, a file system without locks),
    the directories made here are removed again where empty, the lock file first; a command that
    waited in a directory removed so makes it again and goes on (it raised FileNotFoundError).
    Removing only what is empty leaves the files of a command that took the lock in between alone."""
    lock_file = directory / lock_name
    with contextlib.ExitStack() as held:
        while True:
            made = _make_directories(directory)
            try:
                held.enter_context(exclusive_file(lock_file, subject, wait))
                break
            except FileNotFoundError:
                if directory.is_dir():
                    raise
            except BaseException:
                _remove_empty(made)
                raise
        try:
            yield
        except BaseException:
            held.close()
            _remove_empty(made)
            raise


def _remove_empty(made: list[Path]) -> None:
    """Remove the directories `made` (outermost first) where they are empty, innermost first."""
    for path in reversed(made):
        with contextlib.suppress(OSError):  # not empty: another command's now
            path.rmdir()


def _make_directories(directory: Path) -> list[Path]:
    """Make `directory` and its missing parents; return those this call made, outermost first."""
    missing = []
    directory = directory.absolute()
    while not directory.exists():
        missing.append(directory)
        directory = directory.parent
    made = []
    for path in reversed(missing):
        try:
            path.mkdir()
        except FileExistsError:  # another command made it: theirs to keep
            continue
        made.append(path)
    return made


@contextlib.contextmanager
def shared(directory: str | os.PathLike[str], wait: float = DEFAULT_WAIT_S) -> Iterator[None]:
    """Hold the model lock of `directory` with other readers; a read-only directory, or one that
    takes no locks, is read unlocked."""
    path = Path(directory) / layout.LOCK_FILE
    try:
        fd: int | None = _acquire(path, fcntl.LOCK_SH, wait, Path(directory))
    except (OSError, LocksUnavailableError):
        fd = None  # a read-only volume has no writers to fear, one without locks no ftprefix writer
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)
