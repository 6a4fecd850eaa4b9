"""Run a real Triton Inference Server (pytriton's `tritonserver` binary) on a converted model, on CPU.

    with EmbeddedServer(converted_dir, tokenizer_dir=None, grpc_port=0, http_port=0) as srv:
        srv.grpc_url   # "127.0.0.1:PORT"

The server runs in its own process group; `stop()` terminates the whole group, an atexit hook
and (on Linux) PR_SET_PDEATHSIG make sure it never outlives this process. Hot reload: a watcher
thread notices when `config.ini` of the converted model changes (e.g. after `ftprefix tasks add`),
rewrites the task table in the generated configs and asks Triton to load the models again
(model control, explicit mode); `reload()` does the same on demand. The same thread loads a model
again when one of its processes has died (`heal()`, stubs.py), with or without watching config.ini.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from pathlib import Path
from types import TracebackType
from typing import Any

from ftprefix import layout, locking, protocol
from ftprefix.console import human_bytes, say
from ftprefix.engine import shared_weights
from ftprefix.errors import UserError
from ftprefix.serving import cpus, repository, stub_args, stubs, tritonserver
from ftprefix.serving.batching import DEFAULT_MAX_QUEUE_DELAY_US, check_max_queue_delay

# how often the watcher looks for engine processes that died when it does not watch config.ini,
# and how long it waits before loading the same model again for that
HEAL_INTERVAL_S = 0.5
RELOAD_RETRY_MAX_S = 60.0  # a reload that keeps failing is tried at least this often
HEAL_AGAIN_S = 5.0
# What a stopping Triton logs once no inference request is in flight (triton-inference-server/core
# src/server.cc, InferenceServer::Stop). All it does after that is unload the models, and the
# python backend's unload of an instance sleeps a second to look at the stub's health first
# (python_backend src/stub_launcher.cc, StubLauncher::UpdateHealth), then ends the stub: 2.5 s to
# stop one instance, 8.5 s four, instance after instance, for processes that hold nothing to
# save. `stop` kills Triton there instead, FLUSH_S after the line: the last answers are handed to
# Triton's HTTP and gRPC threads before their requests count as done, and are on their way. Not
# where the model streams: a stream's request counts as done from its start, and only the unload
# waits for its last token.
DRAINED = b"All models are stopped, unloading models"
SHARED_WEIGHTS_DIR = "weights"  # in the scratch directory: see engine/shared_weights.py
SHARED_WEIGHTS_SPARE_BYTES = 1 << 30  # left free on its disk beside the copy
FLUSH_S = 0.25
DRAIN_POLL_S = 0.05
# Triton's HTTP endpoint, asked directly: the server is this process's child on a loopback address,
# which a proxy named in the environment (HTTP_PROXY without a NO_PROXY for it, as corporate
# machines set them) cannot reach; urlopen would send the probes there and never see Triton ready
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))
TRITON_LAUNCH = Path(__file__).with_name("triton_launch.py")  # Triton starts through it (see there)


def triton_host(host: str) -> str:
    """The IPv4 address Triton is to listen on for `host`. Triton 2.51 takes the address as text
    and writes `address:port`: an IPv6 address, written without brackets, cannot listen, and
    given a name (localhost) it did not get ready within a minute."""
    try:
        return str(socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_STREAM)[0][4][0])
    except (socket.gaierror, UnicodeError) as exc:
        reason = getattr(exc, "strerror", None) or "not a host name"
        raise UserError(
            f"--host {host}: no IPv4 address ({reason}); Triton listens on IPv4 addresses: pass one, "
            "e.g. 127.0.0.1, or 0.0.0.0 for every interface"
        ) from None


def free_port(host: str = "127.0.0.1") -> int:
    return free_ports(1, host)[0]


def free_ports(count: int, host: str = "127.0.0.1", taken: Iterable[int] = ()) -> list[int]:
    """`count` distinct ports free now, none of them in `taken`. Every socket stays bound until
    all are picked: ports asked for one at a time may come back equal, since the kernel can
    hand a just-released port out again. Without SO_REUSEADDR, a pick shares its port with no
    socket bound anywhere, whatever that socket set (two sockets that both set it, neither
    listening, may share a port)."""
    ports: list[int] = []
    with contextlib.ExitStack() as held:
        while len(ports) < count:
            sock = held.enter_context(bind_port(host, 0, "--host", reuse_address=False))
            port = int(sock.getsockname()[1])
            if port not in taken:
                ports.append(port)
    return ports


def check_port_free(host: str, port: int, option: str) -> None:
    """Refuse a taken port up front: Triton would fail later with a page of start-up log."""
    bind_port(host, port, option).close()


def bind_port(host: str, port: int, option: str, *, reuse_address: bool = True) -> socket.socket:
    """A socket bound to host:port, for a server to listen on later (while it is held, no other
    listener and no free-port pick takes the port), or a one-line error naming `option`.
    `reuse_address`: SO_REUSEADDR, as Triton's and uvicorn's own listeners set it, so that a port
    in TIME_WAIT is not refused."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise UserError(f"cannot listen on {host}:{port} ({exc.strerror}); pass another --host") from None
    sock = socket.socket(family, kind, proto)
    if reuse_address:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise UserError(
            f"cannot listen on {host}:{port} ({exc.strerror}); pass another {option} (0 = any free port)"
        ) from None
    return sock


def check_repository_place(workdir: Path | None = None) -> None:
    """Refuse a Triton model repository under a path that is not ASCII (`workdir`, or else the
    temporary directory): the python backend's stub runs Python with an ASCII file system encoding
    (stub_args.py) and fails to import a model from there before any of ftprefix's code runs.
    Converted models and tokenizers may live anywhere."""
    place = workdir if workdir is not None else Path(tempfile.gettempdir())
    if not str(place.absolute()).isascii():
        where = "pass a working directory" if workdir is not None else "set TMPDIR to a directory"
        raise UserError(
            f"the server's model repository would be under {place}, and Triton's python backend "
            f"cannot load models from a path that is not ASCII: {where} whose path is ASCII"
        )


def _why_not_shared(cfg: layout.ModelConfig, place: Path) -> str | None:
    """Why each instance is to read the base weights itself: `place` has no room for the copy
    they would share; None where it has (or no copy is needed)."""
    if not shared_weights.needs_copy(cfg):
        return None
    needed = cpus.float32_bytes(cfg)
    try:
        free = shutil.disk_usage(place).free
    except OSError:
        return None  # tried, and said if it fails
    if free >= needed + SHARED_WEIGHTS_SPARE_BYTES:
        return None
    return (
        f"each instance reads its own: one copy to share needs {human_bytes(needed)}, and "
        f"{human_bytes(free)} is free in {place} (set TMPDIR to a place with room)"
    )


_GLOG_ERROR = re.compile(r"^E\d{4} [\d:.]+\s+\d+ [^\]]+\]\s*(.+)$")


class ServerError(RuntimeError):
    """The server failed to start or to load a model; carries the tail of its log."""


def _until(proc: subprocess.Popen[bytes], deadline: float, done: Callable[[], bool]) -> bool:
    """Ask `done` until it says so (True), or until Triton exits or `deadline` passes (False)."""
    while not done():
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        try:
            proc.wait(timeout=min(DRAIN_POLL_S, left))
            return False
        except subprocess.TimeoutExpired:
            pass
    return True


def _exit_by(proc: subprocess.Popen[bytes], deadline: float) -> None:
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=max(0.0, deadline - time.monotonic()))


def _free(lock: int) -> bool:
    """Whether no one holds `lock` now (taken and let go at once: a stream starting meanwhile
    waits for it no longer than that)."""
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    fcntl.flock(lock, fcntl.LOCK_UN)
    return True


class EmbeddedServer:
    def __init__(
        self,
        converted_dir: str | os.PathLike[str],
        tokenizer_dir: str | os.PathLike[str] | None = None,
        grpc_port: int = 0,
        http_port: int = 0,
        streaming: bool = False,
        *,
        host: str = "127.0.0.1",
        workdir: str | os.PathLike[str] | None = None,
        start_timeout: float = 180.0,
        watch_interval: float | None = 0.5,
        log_to: str | os.PathLike[str] | None = None,
        metrics_port: int | None = None,
        max_queue_delay_us: int = DEFAULT_MAX_QUEUE_DELAY_US,
        newline_token: str | None = None,
        instances: int | None = None,
        threads: int | None = None,
        stop_timeout: float | None = None,
        share_weights: bool = True,
    ) -> None:
        """`instances` x `threads`: engine processes and the threads of each (cpus.py); by default
        one single-threaded instance per core this process may use, as many as memory holds.
        `share_weights`: the instances map the base weights from one copy (engine/shared_weights.py);
        False reads them into each instance, as before (benchmarks/serve_memory.py compares).
        `stop_timeout`: seconds `stop()` lets Triton finish requests in flight before killing it;
        None waits as long as Triton's own exit timeout, 0 kills at once (a throwaway server, such
        as a test's)."""
        self.ft_dir = layout.find_ft_dir(converted_dir).resolve()
        cfg = layout.read_config(self.ft_dir)
        self.cores = cpus.usable_cores()
        # the instances map the base weights from one copy where the scratch directory has room
        # for it (engine/shared_weights.py), or from the conversion itself where it needs none
        place = Path(workdir or tempfile.gettempdir())
        unshared = _why_not_shared(cfg, place) if share_weights else "read by each instance"
        self.weights_note = unshared or ""  # what the start-up says of the weights
        share = unshared is None
        self.layout = cpus.choose_layout(
            self.cores,
            instances=instances,
            threads=threads,
            bytes_per_instance=cpus.instance_bytes(cfg, shared=share),
            memory=cpus.available_memory(),
            shared_bytes=cpus.float32_bytes(cfg) if share else 0,
        )
        self.tokenizer_dir = Path(tokenizer_dir) if tokenizer_dir is not None else None
        self.newline_token = newline_token
        self.host = host = triton_host(host)
        missing = sum(not port for port in (grpc_port, http_port))
        picked = iter(free_ports(missing, host, taken={grpc_port, http_port, metrics_port}))
        self.grpc_port = grpc_port or next(picked)
        self.http_port = http_port or next(picked)
        check_port_free(host, self.grpc_port, "--grpc-port")  # before any temporary directory exists
        check_port_free(host, self.http_port, "--http-port")
        self.metrics_port = metrics_port
        if metrics_port:
            check_port_free(host, metrics_port, "--metrics-port")
        self.streaming = streaming
        check_max_queue_delay(max_queue_delay_us)  # before any temporary directory exists
        self.max_queue_delay_us = max_queue_delay_us
        self.start_timeout = start_timeout
        if stop_timeout is not None and not 0 <= stop_timeout < float("inf"):
            raise UserError(f"--stop-timeout must be 0 or more seconds (and finite), got {stop_timeout:g}")
        self.stop_timeout = stop_timeout
        self.watch_interval = watch_interval
        self._own_workdir = workdir is None
        check_repository_place(Path(workdir) if workdir is not None else None)
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="ftprefix-serve-"))
        # where a copy goes, if the conversion (now or after a `convert --force`) needs one
        self._shared_weights = self.workdir / SHARED_WEIGHTS_DIR if share else None
        self.repository = self.workdir / "model_repository"
        self.log_path = Path(log_to) if log_to is not None else self.workdir / "tritonserver.log"
        self.models: tuple[str, ...] = ()
        self._shm_prefix: str | None = None  # this server's shared-memory regions (tritonserver.py)
        # the python backend's directory in /tmp, which a killed Triton leaves (tritonserver.py)
        self._python_env: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._reaper: subprocess.Popen[bytes] | None = None  # see reaper.py
        self._config_digest = ""
        # the watcher's last failed reload: its message, config.ini's digest then, when to try again
        self._failure: str | None = None
        self._failed_digest: str | None = None
        self._retry_at = 0.0
        self._retry_gap = 0.0
        self._tasks: list[str] = []  # the task names served, as config.ini had them when last loaded
        self._lock = threading.Lock()
        self._stop_watch = threading.Event()
        self._watcher: threading.Thread | None = None
        # the python backend's processes, and the model instances the watcher keeps alive
        self._stubs: list[stubs.Stub] = []
        self._release_triton_parent = threading.Event()  # ends the thread that started Triton
        self._instances: dict[str, str] = {}  # instance -> model
        self._healed_at: dict[str, float] = {}

    # -- addresses -----------------------------------------------------------------------------

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> EmbeddedServer:
        if self._proc is not None:
            return self
        # no `tasks add/remove` between reading the table here and the model loading its files
        with locking.shared(self.ft_dir.parent):
            self._start()
        self._watch_stubs(self._find_stubs())
        if self.watch_interval or self._instances:
            self._watcher = threading.Thread(target=self._watch, name="ftprefix-reload", daemon=True)
            self._watcher.start()
        return self

    def _start(self) -> None:
        self._config_digest = self._digest()
        self._share_weights(layout.read_config(self.ft_dir))
        info = repository.write_repository(
            self.ft_dir,
            self.repository,
            target=repository.CPU,
            tokenizer_dir=self.tokenizer_dir,
            streaming=self.streaming,
            max_queue_delay_us=self.max_queue_delay_us,
            newline_token=self.newline_token,
            instances=self.layout.instances,
            engine_threads=self.layout.threads,
            shared_weights=str(self._shared_weights) if self._shared_weights is not None else None,
        )
        self.models = info.models
        self._tasks = info.config.tasks.names
        backends = tritonserver.prepare_backends(self.workdir / "backends")
        tritonserver.remove_orphaned_regions()
        self._shm_prefix = tritonserver.shm_prefix()
        cmd = tritonserver.command(
            self.repository,
            backends,
            host=self.host,
            grpc_port=self.grpc_port,
            http_port=self.http_port,
            models=self.models,
            metrics_port=self.metrics_port,
            shm_prefix=self._shm_prefix,
            exit_timeout_s=self.exit_timeout_s,
        )
        start_lock = tritonserver.StartLock(self.start_timeout)
        try:
            self._launch(cmd, start_lock)
        finally:
            start_lock.release()

    def _start_from_a_lasting_thread(self, cmd: list[str], **popen: Any) -> subprocess.Popen[bytes]:
        """Popen, on a thread of this server's that lives until stop() has ended Triton. The kernel
        sends a child its parent-death signal (PR_SET_PDEATHSIG, triton_launch.py) when the
        thread that started it ends, not its process: a server started from a thread that then
        ended (a pool's, a request handler's) had its Triton stopped with that thread. A daemon
        thread, which ends only with the process where stop() never comes."""
        started: Future[subprocess.Popen[bytes]] = Future()
        release = self._release_triton_parent = threading.Event()

        def parent() -> None:
            try:
                started.set_result(subprocess.Popen(cmd, **popen))
            except BaseException as exc:
                started.set_exception(exc)
                return
            release.wait()

        threading.Thread(target=parent, name="ftprefix-triton-parent", daemon=True).start()
        return started.result()

    def _launch(self, cmd: list[str], start_lock: tritonserver.StartLock) -> None:
        python_envs_before = tritonserver.python_env_dirs()
        log = open(self.log_path, "ab")  # noqa: SIM115 (handed to the child, closed below)
        try:
            self._proc = self._start_from_a_lasting_thread(
                [sys.executable, "-I", str(TRITON_LAUNCH), str(os.getpid()), *cmd],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**tritonserver.server_env(), **cpus.thread_env(self.layout.threads)},
                start_new_session=True,  # own process group: stop() signals the stubs too
            )
            # what stops Triton's stubs and removes its files if this process dies without stop()
            self._reaper = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "ftprefix.serving.reaper",
                    str(self._proc.pid),
                    str(os.getpid()),
                    str(self._exit_wait_s(self.stop_timeout)),  # as stop() waits for Triton
                    self._shm_prefix,
                    *([str(self.workdir)] if self._own_workdir else []),
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                start_new_session=True,
            )
        finally:
            log.close()
        atexit.register(self.stop)

        def note_python_env() -> None:
            """Find the python backend's directory this Triton made (the one that appeared since
            it started) once it is there, for stop() (or the reaper, told through the scratch
            directory) to remove once Triton is gone; then let the next server start."""
            if self._python_env is None:
                self._python_env = tritonserver.new_python_env(python_envs_before)
                if self._python_env is not None and self._own_workdir:
                    with contextlib.suppress(OSError):
                        (self.workdir / tritonserver.PYTHON_ENV_NOTE).write_text(str(self._python_env))
            if self._python_env is not None:
                start_lock.release()

        try:
            # without the lock another server's directory may appear first: judged once ready
            self._wait_ready(note_python_env if start_lock.held else None)
        except BaseException:
            self.stop()
            raise
        note_python_env()

    def _wait_ready(self, on_poll: Callable[[], None] | None = None) -> None:
        deadline = time.monotonic() + self.start_timeout
        url = f"http://{self.http_url}/v2/health/ready"
        while time.monotonic() < deadline:
            assert self._proc is not None
            if on_poll is not None:
                on_poll()
            if self._proc.poll() is not None:
                reason = self.last_error()
                raise ServerError(
                    f"tritonserver exited with code {self._proc.returncode} while starting"
                    + (f": {reason}" if reason else "")
                    + f"\n{self.log_tail()}"
                )
            try:
                with _DIRECT.open(url, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            # bounded poll interval while the server loads the models
            self._stop_watch.wait(0.1)
        raise ServerError(f"tritonserver not ready after {self.start_timeout:.0f} s:\n{self.log_tail()}")

    @property
    def exit_timeout_s(self) -> int:
        """Triton's wait for its models to unload: python-backend instances unload one after
        another, about 1.5 s each (tritonserver.py)."""
        return 10 + 2 * (self.layout.instances + len(self.models))

    def _exit_wait_s(self, timeout: float | None) -> float:
        """How long Triton is given to exit once told to: `timeout`, or its own exit timeout."""
        return self.exit_timeout_s + 5 if timeout is None else timeout

    def stop(self, timeout: float | None = None) -> None:
        """Stop the server: Triton finishes the requests in flight within `timeout` seconds (by
        default the server's stop_timeout) and is killed then, or once they are done; its shared
        memory is removed either way."""
        timeout = self.stop_timeout if timeout is None else timeout
        self._stop_watch.set()
        if self._watcher is not None and self._watcher is not threading.current_thread():
            self._watcher.join(timeout=5)
        self._watcher = None
        proc, self._proc = self._proc, None
        if proc is not None:
            offset = self._log_size()
            # the server alone: it finishes the requests in flight itself; it and its stubs are
            # killed once it has (DRAINED), or once it has had its time
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM if timeout != 0 else signal.SIGKILL)
            if timeout != 0:
                deadline = time.monotonic() + self._exit_wait_s(timeout)
                # a stream's request counts as done at Triton from its start (python backend,
                # decoupled), so DRAINED comes at once: the streams lock says when they are over
                # (Triton's own unload would wait for them too, a second and more per instance)
                if self._drained(proc, offset, deadline):
                    if self.streaming:
                        self._wait_for_streams(proc, deadline)
                    else:
                        time.sleep(FLUSH_S)
            # Triton still unloading, or the stubs it left
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            self._release_triton_parent.set()
            if self._shm_prefix:  # what a killed server or stub left
                tritonserver.remove_regions(self._shm_prefix)
            if self._python_env is not None:  # known once Triton was ready (a failed start: not guessed)
                tritonserver.remove_python_env(self._python_env)
            self._python_env = None
        reaper, self._reaper = self._reaper, None
        if reaper is not None:  # it ends as soon as it sees Triton's end
            try:
                reaper.wait(timeout=5)
            except subprocess.TimeoutExpired:
                reaper.kill()
                reaper.wait()
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)
        if self._own_workdir and self.workdir.exists():
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def _drained(self, proc: subprocess.Popen[bytes], offset: int, deadline: float) -> bool:
        """Whether Triton, told to stop, said by `deadline` (time.monotonic) that no request is in
        flight any more (its log past `offset`); False where it exited or its time ran out first."""
        try:
            log = open(self.log_path, "rb")  # noqa: SIM115 (closed by the with below)
        except OSError:  # no log to read: Triton's own exit is waited for
            _exit_by(proc, deadline)
            return False
        with log:
            log.seek(offset)
            seen = b""

            def said() -> bool:
                nonlocal seen
                seen = seen[-len(DRAINED) :] + log.read()
                return DRAINED in seen

            return _until(proc, deadline, said)

    def _wait_for_streams(self, proc: subprocess.Popen[bytes], deadline: float) -> None:
        """Wait until no stream is left, Triton exited, or `deadline` passed. The twin's instances
        hold the streams lock (shared) while they stream; it is taken for free when it is free at
        two looks FLUSH_S apart: by the second, the answers of a stream that ended before the first
        are with Triton's threads, and a stream Triton handed an instance just before the first
        (released at Triton when handed over) holds the lock. No lock to ask: Triton's own exit."""
        try:
            lock = os.open(self.repository / protocol.FT_MODEL / stub_args.STREAMS_LOCK, os.O_RDWR)
        except OSError:
            _exit_by(proc, deadline)
            return
        try:
            while _until(proc, deadline, lambda: _free(lock)):
                time.sleep(FLUSH_S)
                if _free(lock):
                    return
        finally:
            os.close(lock)

    def __enter__(self) -> EmbeddedServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def wait(self) -> int:
        """Block until the server exits (used by `ftprefix serve`)."""
        assert self._proc is not None
        return self._proc.wait()

    def last_error(self) -> str:
        """The message of the last error line of Triton's log (glog's `E<date> <time> <thread>
        <file>:<line>] message`: the one it exits on), which its start-up options and its usage
        text can bury."""
        reason = ""
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as log:
                for line in log:
                    found = _GLOG_ERROR.match(line)
                    if found:
                        reason = found.group(1).strip().strip('"').strip()
        except OSError:
            pass
        return reason

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    # -- model control / hot reload ------------------------------------------------------------

    def _digest(self) -> str:
        """config.ini as it is now: its bytes, and which file it is. Every command that changes the
        model writes a new config.ini and renames it into place, and `convert --force` replaces
        the whole directory, weights included, with one that may hold the same config.ini byte for
        byte (a model trained again, converted again): its file is another all the same."""
        path = self.ft_dir / layout.CONFIG_FILE
        try:
            with open(path, "rb") as f:
                stat = os.fstat(f.fileno())
                data = f.read()
        except OSError:
            return ""
        identity = f"{stat.st_dev}:{stat.st_ino}:{stat.st_mtime_ns}".encode()
        return hashlib.sha256(identity + b"\0" + data).hexdigest()

    def load_model(self, name: str) -> None:
        """Ask Triton to (re)load one model; returns once it is loaded."""
        with self._lock:
            self._load_again([name])

    def _post_load(self, name: str) -> None:
        # Triton loads a model again only if its files changed since it last loaded it (a load
        # request for an unchanged one returns at once, keeping every instance as it is, a dead
        # one included; a changed config.pbtxt whose instances alone differ only adds or removes
        # instances): the times of its version's files say they did
        for path in (self.repository / name).glob("*/*"):
            with contextlib.suppress(OSError):
                os.utime(path)
        req = urllib.request.Request(
            f"http://{self.http_url}/v2/repository/models/{name}/load", data=b"{}", method="POST"
        )
        try:
            with _DIRECT.open(req, timeout=300):
                pass
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", errors="replace")
            raise ServerError(f"loading model {name!r} failed: {detail}\n{self.log_tail()}") from None

    def reload(self) -> str | None:
        """Pick up a changed converted model (new tasks): refresh the task table and load again.

        Returns what changed and what was loaded again, in a line for the operator, or None where
        nothing changed. Holds the model lock shared, so config.ini and the prefix files it names
        are read as one consistent state."""
        with self._lock, locking.shared(self.ft_dir.parent):
            digest = self._digest()
            if digest == self._config_digest:
                return None
            cfg = layout.read_config(self.ft_dir)
            self._share_weights(cfg)  # the base weights as well, where a conversion replaced them
            changed = repository.refresh_task_table(self.repository, cfg)
            # fastertransformer always: config.ini changed, so tasks or prefixes did
            names = list(dict.fromkeys(n for n in [protocol.FT_MODEL, *changed] if n in self.models))
            seconds = self._load_again(names)
            self._config_digest = digest
            tasks, self._tasks = self._tasks, cfg.tasks.names
            return f"{_task_changes(tasks, self._tasks)}; {', '.join(names)} loaded again in {seconds:.1f} s"

    def _share_weights(self, cfg: layout.ModelConfig) -> None:
        """Write the base weights' copy the instances map, unless the one there is current.
        Where it cannot be written (the disk filled meanwhile), each instance reads its own."""
        where = self._shared_weights
        if where is None:
            return
        if not shared_weights.needs_copy(cfg):
            # a copy of the weights a `convert --force --dtype fp32` replaced: not left taking the
            # model's size on disk (instances that still map it keep their pages until they end)
            shutil.rmtree(where, ignore_errors=True)
            self.weights_note = "mapped by every instance from the conversion's files"
            return
        if shared_weights.current(where, self.ft_dir, cfg):
            return
        started = time.monotonic()
        try:
            written = shared_weights.write(self.ft_dir, cfg, where)
        except OSError as exc:
            self._shared_weights = None
            self.weights_note = f"each instance reads its own: no copy to share ({exc})"
            return
        self.weights_note = (
            f"{human_bytes(written)} in float32, mapped by every instance from one copy "
            f"(written in {time.monotonic() - started:.1f} s)"
        )

    def _watch(self) -> None:
        while not self._stop_watch.wait(self.watch_interval or HEAL_INTERVAL_S):
            if self.watch_interval:
                self._follow_config()
            try:
                self.heal()
            except (ServerError, OSError) as exc:
                if not self._stop_watch.is_set():  # a server stopping under the load
                    say(f"ftprefix serve: loading a model again failed: {exc}", error=True)

    def _follow_config(self) -> None:
        """One look at config.ini for the watcher. A reload that fails (the model directory moved
        away, a load Triton refuses) keeps the old models and is said once: while config.ini stays
        as it was at the failure, it is tried again ever more rarely (a failed load costs new
        engine processes each time), and said again only if it fails otherwise. A change tries it
        at once. config.ini is read once a look, by reload(), and again only while a failure
        waits for its next try."""
        waiting = self._failed_digest is not None and time.monotonic() < self._retry_at
        if waiting and self._digest() == self._failed_digest:
            return
        try:
            done = self.reload()
        except (UserError, ServerError, OSError) as exc:
            digest = self._digest()  # config.ini as the failure found it
            failure = str(exc).partition("\n")[0]  # a failed load's message goes on with Triton's log
            if failure != self._failure:
                say(f"ftprefix serve: reload failed, still serving what was loaded: {exc}", error=True)
            first_gap = self.watch_interval or HEAL_INTERVAL_S
            again = digest == self._failed_digest
            self._retry_gap = min(2 * self._retry_gap, RELOAD_RETRY_MAX_S) if again else first_gap
            self._failure, self._failed_digest = failure, digest
            self._retry_at = time.monotonic() + self._retry_gap
            return
        if done is not None:
            say(f"ftprefix serve: {done}")
        elif self._failure is not None:
            say(f"ftprefix serve: {self.ft_dir} is back as it was loaded; nothing to reload")
        self._failure = self._failed_digest = None

    # -- engine processes that died ------------------------------------------------------------

    def _find_stubs(self) -> list[stubs.Stub]:
        if self._proc is None or self._shm_prefix is None:
            return []
        return stubs.find(self._proc.pid, self._shm_prefix)

    def _load_again(self, names: list[str]) -> float:
        """Load models again (under self._lock); returns the seconds it took. Their instances get
        new processes, and Triton may load others with them (an ensemble's steps); the old
        processes end once their requests in flight have."""
        started = time.monotonic()
        try:
            for name in names:
                self._post_load(name)
        finally:
            self._watch_stubs(self._find_stubs())
        return time.monotonic() - started

    def _watch_stubs(self, found: list[stubs.Stub]) -> None:
        self._stubs = found
        # every instance seen once is one to keep alive: a model keeps its instances when loaded again
        self._instances.update({stub.instance: stub.model for stub in found})

    def heal(self) -> list[str]:
        """Load again every model an instance of which has lost its process (stubs.py says why
        Triton does not); returns their names. A model is loaded again at most once every
        HEAL_AGAIN_S."""
        if not self.running or not self._instances:
            return []
        with self._lock:
            if (
                all(stub.alive() for stub in self._stubs)
                and {stub.instance for stub in self._stubs} >= self._instances.keys()
            ):  # the cheap check, every time
                return []
            self._watch_stubs(self._find_stubs())  # a load may have replaced the processes gone
            alive = {stub.instance for stub in self._stubs if stub.alive()}
            dead = sorted(instance for instance in self._instances if instance not in alive)
            now = time.monotonic()
            due = now - HEAL_AGAIN_S
            models = sorted(
                {self._instances[i] for i in dead if self._healed_at.get(self._instances[i], due) <= due}
            )
            if not models or self._stop_watch.is_set():
                return []
            for model in models:
                lost = ", ".join(i for i in dead if self._instances[i] == model)
                say(
                    f"ftprefix serve: the process of {lost} ended (killed for memory?), and Triton "
                    f"sends that instance its share of the requests still: loading {model!r} again",
                    error=True,
                )
                self._healed_at[model] = now
            seconds = self._load_again(models)
            say(f"ftprefix serve: {', '.join(models)} loaded again in {seconds:.1f} s", error=True)
            return models


def _task_changes(before: list[str], after: list[str]) -> str:
    """What a change of config.ini did to the tasks served, e.g. "tasks: +fresh -old (3 in all)"."""
    added = [f"+{name}" for name in after if name not in before]
    removed = [f"-{name}" for name in before if name not in after]
    if not added and not removed:  # a prefix written again, or the same tasks otherwise changed
        return f"config.ini written again, the same {len(after)} task(s)"
    return f"tasks: {' '.join(added + removed)} ({len(after)} in all)"
