"""Locate and prepare the `tritonserver` binary shipped in the PyPI package nvidia-pytriton.

Facts (checked with nvidia-pytriton 0.7 / tritonserver 2.51, and how pytriton itself starts it in
pytriton/triton.py `_prepare_triton_inference_server` and pytriton/server/triton_server.py):
- binary `pytriton/tritonserver/bin/tritonserver`; its shared libraries in `nvidia_pytriton.libs`
  next to the package, which must be on LD_LIBRARY_PATH for the python backend library;
- the python backend needs `triton_python_backend_stub` for the running Python version next to
  `libtriton_python.so`; pytriton ships stubs per version in `python_backend_stubs/<major.minor>/`.
  We assemble a private backend directory instead of writing into site-packages;
- the stub embeds the interpreter library it is linked with (found through LD_LIBRARY_PATH, so the
  running interpreter's LIBDIR goes first) and ignores PYTHONPATH: the virtualenv reaches the
  models through FTPREFIX_SITE_DIRS (read by templates/ftprefix_site.py).
- the python backend keeps each model instance's messages in a shared-memory region in /dev/shm
  (1 MiB and up) that only a server shutting down cleanly removes; a server killed with SIGKILL
  leaves them. Ours are named `ftprefix_<pid namespace>_<pid of the process that started it>_<token>_`
  (backend option shm-region-prefix-name), so the regions of a server whose starter is gone can be
  told from anyone else's and removed (`remove_orphaned_regions`); the namespace keeps containers
  that share /dev/shm (`--ipc=host`) from judging each other's pids.
- unloading takes about 2 s per python-backend model instance, one after another (seen with 2.51),
  which a stopping EmbeddedServer skips (server.py, DRAINED).
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import os
import secrets
import shutil
import site
import sys
import sysconfig
import time
from pathlib import Path

from ftprefix.errors import UserError

SITE_DIRS_ENV = "FTPREFIX_SITE_DIRS"
SHM_DIR = Path("/dev/shm")
SHM_PREFIX = "ftprefix_"


def pytriton_root() -> Path:
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the embedded server needs ftprefix's 'serve' extra: pip install 'ftprefix[serve]'")
    return Path(next(iter(spec.submodule_search_locations)))


def server_dist() -> Path:
    return pytriton_root() / "tritonserver"


def binary_path() -> Path:
    path = server_dist() / "bin" / "tritonserver"
    if not path.is_file():
        raise UserError(f"tritonserver binary not found at {path}; reinstall nvidia-pytriton")
    return path


def libs_path() -> Path:
    return pytriton_root().parent / "nvidia_pytriton.libs"


def prepare_backends(dest: Path) -> Path:
    """Create `dest/python/` with the python backend and the stub for this interpreter; return dest."""
    src = server_dist()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = src / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise UserError(f"nvidia-pytriton ships no python backend stub for Python {version}")
    python_dir = dest / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
        shutil.copy2(src / "backends" / "python" / name, python_dir / name)
    shutil.copy2(stub, python_dir / "triton_python_backend_stub")
    return dest


def site_dirs() -> list[str]:
    """Where the models' imports come from: this interpreter's site-packages (with their .pth files,
    which carry an editable install) and the directory holding the ftprefix package itself."""
    import ftprefix

    dirs = [p for p in site.getsitepackages() if Path(p).is_dir()]
    package_parent = str(Path(ftprefix.__file__).resolve().parent.parent)
    if package_parent not in dirs:
        dirs.append(package_parent)
    return dirs


def server_env(base: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    parts = [p for p in (libdir, str(libs_path()), env.get("LD_LIBRARY_PATH", "")) if p]
    env["LD_LIBRARY_PATH"] = os.pathsep.join(parts)
    env[SITE_DIRS_ENV] = os.pathsep.join(site_dirs())
    return env


def command(
    repository: Path,
    backends: Path,
    *,
    host: str,
    grpc_port: int,
    http_port: int,
    models: list[str] | tuple[str, ...],
    metrics_port: int | None = None,
    shm_prefix: str | None = None,
    exit_timeout_s: int = 10,
) -> list[str]:
    """`metrics_port`: serve Triton's Prometheus metrics there (None: no metrics endpoint).
    `shm_prefix`: the python backend's shared-memory region names start with it (`shm_prefix()`).
    `exit_timeout_s`: how long a stopping server waits for its models to unload."""
    cmd = [
        str(binary_path()),
        f"--model-repository={repository}",
        f"--backend-directory={backends}",
        f"--http-address={host}",
        f"--http-port={http_port}",
        f"--grpc-address={host}",
        f"--grpc-port={grpc_port}",
        *(
            [
                "--allow-metrics=true",
                "--allow-gpu-metrics=false",
                f"--metrics-address={host}",
                f"--metrics-port={metrics_port}",
            ]
            if metrics_port is not None
            else ["--allow-metrics=false"]
        ),
        "--allow-sagemaker=false",
        "--allow-vertex-ai=false",
        # explicit control: the server loads what we name and reloads a model on request (hot reload)
        "--model-control-mode=explicit",
        "--strict-readiness=true",
        # every config.pbtxt here is complete (repository.py writes it from the interface); left on,
        # auto-completion starts one more python stub per model only to ask it for additions it
        # does not make (triton-inference-server/python_backend src/python_be.cc,
        # ModelState::Create), about 3 s of every start and every hot reload
        "--disable-auto-complete-config",
        "--exit-on-error=true",
        f"--exit-timeout-secs={exit_timeout_s}",
        *([f"--backend-config=python,shm-region-prefix-name={shm_prefix}"] if shm_prefix else []),
    ]
    cmd += [f"--load-model={m}" for m in models]
    return cmd


def _pid_namespace() -> str:
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:  # no procfs (macOS): one namespace
        return "0"


def shm_prefix(owner_pid: int | None = None) -> str:
    """A prefix for one server's shared-memory regions, naming the process that starts it."""
    owner = os.getpid() if owner_pid is None else owner_pid
    return f"{SHM_PREFIX}{_pid_namespace()}_{owner}_{secrets.token_hex(4)}_"


def remove_regions(prefix: str, shm_dir: Path = SHM_DIR) -> None:
    """Remove the shared-memory regions a stopped server left (it was killed, or its stubs were)."""
    if not (prefix.startswith(SHM_PREFIX) and prefix.endswith("_") and prefix.count("_") >= 4):
        raise ValueError(f"not a prefix shm_prefix() made: {prefix!r}")
    for path in shm_dir.glob(f"{prefix}*"):
        with contextlib.suppress(OSError):
            path.unlink()


# The python backend makes a directory for the execution environments it may unpack when it starts,
# mkdtemp("/tmp/python_env_XXXXXX") whatever TMPDIR says, and removes it when Triton unloads the
# backend at its exit (triton-inference-server/python_backend `src/pb_env.cc`, EnvironmentManager).
# A Triton killed, as stop() kills one once its requests are done, leaves it: an empty directory
# in /tmp per server started. Which one a server's Triton made is known only by elimination: the
# one directory of this name that appeared while it started. So ftprefix's servers start one at a
# time up to that point (StartLock): two started at once made two, and neither was known.
PYTHON_ENV_DIR = Path("/tmp")
PYTHON_ENV_PREFIX = "python_env_"
PYTHON_ENV_NOTE = "python-backend-env"  # in the server's scratch directory: the reaper's to remove
START_LOCK = PYTHON_ENV_DIR / "ftprefix-tritonserver-start.lock"
START_LOCK_POLL_S = 0.02


class StartLock:
    """Held by an ftprefix server from just before its Triton starts until the python backend's
    directory of that Triton appeared (or it was ready, or failed): across processes and users,
    as an OS file lock, which the kernel lets go of when its holder dies. Where the lock file
    cannot be opened (another user's, where /tmp refuses that) or locked (a file system without
    locks), or is held past `wait` seconds, the server starts without it, and its directory may
    stay unknown, as before."""

    def __init__(self, wait: float, path: Path = START_LOCK) -> None:
        self._fd: int | None = None
        try:
            # read-only: the first user's file is 0644, and flock needs no write access
            fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)
        except OSError:
            return
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self._fd = fd
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    return
                time.sleep(START_LOCK_POLL_S)  # flock has no timeout of its own
            except OSError:  # a /tmp that takes no locks (NFS without its lock service)
                os.close(fd)
                return

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor lets go of the lock
            self._fd = None


def python_env_dirs(parent: Path = PYTHON_ENV_DIR) -> set[str]:
    """The names of the python backend's environment directories in `parent` now."""
    try:
        with os.scandir(parent) as entries:
            return {e.name for e in entries if e.name.startswith(PYTHON_ENV_PREFIX)}
    except OSError:
        return set()


def new_python_env(before: set[str], parent: Path = PYTHON_ENV_DIR) -> Path | None:
    """The directory a Triton started since `before` was taken made, where exactly one appeared
    (two Tritons starting at once: neither is known, and neither is removed)."""
    new = python_env_dirs(parent) - before
    return parent / new.pop() if len(new) == 1 else None


def remove_python_env(path: Path) -> None:
    """Remove the directory, only while it is empty (as the python backend leaves it unless it
    unpacked an environment, which ftprefix's models never ask it to)."""
    with contextlib.suppress(OSError):
        path.rmdir()


def process_alive(pid: int) -> bool:
    """Whether process `pid` exists (another user's included)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_orphaned_regions(shm_dir: Path = SHM_DIR) -> int:
    """Remove the regions of ftprefix servers whose starting process no longer runs (killed with
    SIGKILL, so nothing could clean up); returns how many. Regions of running servers, of another
    pid namespace, and any region not named by ftprefix are left alone."""
    removed = 0
    namespace = _pid_namespace()
    for path in shm_dir.glob(f"{SHM_PREFIX}{namespace}_*_*"):
        owner = path.name[len(SHM_PREFIX) + len(namespace) + 1 :].split("_", 1)[0]
        if owner.isdigit() and not process_alive(int(owner)):
            with contextlib.suppress(OSError):
                path.unlink()
                removed += 1
    return removed
