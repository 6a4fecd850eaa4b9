"""`ftprefix openai --workers N`: N gateway processes serving one port.

One process runs one event loop on one core; on a machine with many, N workers carry N times the
requests. Each worker is a whole gateway (its own event loop, tokenizer and connections to Triton)
listening on the same address with SO_REUSEPORT, so the kernel spreads new connections over them
by their addresses. What must agree across workers does:
- the keys file: every worker checks it on each request and reads it again when it changed
  (auth.py), so an edit reaches all of them at their next request;
- /metrics: whichever worker answers the scrape sums every worker's series (prometheus_client's
  multiprocess mode: each worker writes its values to files in a directory this supervisor
  creates empty and removes at the end; the in-flight and waiting gauges are the sum over live
  workers).
- the places at Triton (--max-in-flight, or the model's batches): split among the workers
  (GatewaySettings.share), so the whole gateway keeps Triton's queue as short as one process
  would; N workers each keeping the whole of it let N times that wait at Triton, first come
  first served, and fair admission lost its point.
Per-key limits and fair admission hold within each worker, as within each gateway replica: a key
allowed 600 requests a minute may make up to N x 600 through N workers (its requests reach a
worker by their connection, so a share of its limit could starve a client of one connection).

This process only supervises: it starts the workers, says when all of them listen, and stops them
all on SIGINT, SIGTERM or a hang-up (each finishes its requests within the stop timeout, a hang-up
reaching them too: GatewayServer.capture_signals; a second signal kills them at once), or when one
of them exits (which it reports; a container's restart policy then restarts the whole gateway).
Killed itself (SIGKILL, the out-of-memory killer), it can do none of that: each worker then gets
SIGTERM from the kernel (PR_SET_PDEATHSIG), stops as on the supervisor's, and removes its own files
from the metrics directory, the last one the directory. Before, the workers went on serving the
port with no supervisor, and the next gateway's start found it taken.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from contextlib import closing
from dataclasses import replace
from multiprocessing.connection import Connection, wait
from pathlib import Path

from ftprefix import parent_process
from ftprefix.gateway.app import GatewaySettings

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # read by prometheus_client when a worker imports it
# after SIGTERM, a worker ends what outlived its stop timeout (settings.stop_timeout) by itself;
# this much longer and it is killed
STOP_GRACE_S = 5.0


class _Stop(Exception):
    """SIGTERM reached the supervisor."""


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket on host:port that other processes may bind as well (SO_REUSEPORT)."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(address)
    sock.listen(2048)
    return sock


def _serve(settings: GatewaySettings, host: str, port: int, ready: Connection, supervisor: int) -> None:
    """One worker (`settings.worker`): a gateway on its own SO_REUSEPORT socket; tells `ready`
    once it listens. It stops when the `supervisor` process ends, however that ends."""
    from ftprefix.gateway.run import log_to_stderr, make_server

    if not parent_process.end_with_parent(supervisor):  # SIGTERM once the supervisor is gone
        return
    index = settings.worker
    log_to_stderr(f"ftprefix openai [worker {index}]")
    server = make_server(settings, host, port)

    def stopped() -> None:
        if os.getppid() != supervisor and settings.metrics_dir is not None:
            _remove_own_metrics(Path(settings.metrics_dir))  # no supervisor left to remove them

    server.on_shutdown = stopped

    def listening() -> None:
        if server.started:
            ready.send(index)

    server.on_startup = listening
    try:
        sock = listening_socket(host, port)
    except OSError as exc:  # the supervisor checked the port; another process took it since
        print(
            f"ftprefix openai [worker {index}]: error: cannot listen on {host}:{port}: {exc}", file=sys.stderr
        )
        sys.exit(2)
    server.run(sockets=[sock])


def _remove_own_metrics(directory: Path) -> None:
    """This worker's files of prometheus_client's multiprocess mode (`<kind>_<pid>.db`), then the
    directory if no other worker's are left in it."""
    for path in directory.glob(f"*_{os.getpid()}.db"):
        path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # another worker's files are still there
        directory.rmdir()


def run_workers(settings: GatewaySettings, host: str, port: int, count: int) -> int:
    """Serve with `count` workers until SIGINT, SIGTERM or a hang-up (0), or until a worker exits (1)."""
    directory = tempfile.mkdtemp(prefix="ftprefix-metrics-")
    previous_env = os.environ.get(MULTIPROC_ENV)
    os.environ[MULTIPROC_ENV] = directory  # the workers inherit it before they import anything
    settings = replace(settings, metrics_dir=directory)
    context = multiprocessing.get_context("spawn")  # fresh interpreters: no event loop or lock copied
    workers, waiting = [], {}
    previous_term = signal.signal(signal.SIGTERM, _raise_stop)
    try:
        for index in range(count):
            receive, send = context.Pipe(duplex=False)
            mine = replace(settings, workers=count, worker=index)
            worker = context.Process(
                target=_serve, args=(mine, host, port, send, os.getpid()), name=f"ftprefix-openai-{index}"
            )
            worker.start()
            send.close()
            workers.append(worker)
            waiting[receive] = index
        while waiting:  # every worker listens, or one failed to start
            for ready in wait([*waiting, *(w.sentinel for w in workers)]):
                if ready not in waiting:  # a worker's sentinel: it exited
                    return _one_exited(workers, ready, starting=True)
                index = waiting.pop(ready)
                with closing(ready):
                    try:
                        ready.recv()
                    except EOFError:  # it exited before it listened
                        return _one_exited(workers, workers[index].sentinel, starting=True)
        pids = ", ".join(str(w.pid) for w in workers)
        print(f"ftprefix openai: {count} workers listening on port {port} (pids {pids})", flush=True)
        ended = wait([w.sentinel for w in workers])
        return _one_exited(workers, ended[0], starting=False)
    except (KeyboardInterrupt, _Stop):
        return 0
    finally:
        try:
            _stop_all(workers, settings.stop_timeout + STOP_GRACE_S)
        except (KeyboardInterrupt, _Stop):  # asked again while they stop: stop them now
            _kill_all(workers)
        finally:
            signal.signal(signal.SIGTERM, previous_term)
        for receive in waiting:
            receive.close()
        shutil.rmtree(directory, ignore_errors=True)
        if previous_env is None:
            os.environ.pop(MULTIPROC_ENV, None)
        else:
            os.environ[MULTIPROC_ENV] = previous_env


def _raise_stop(signum: int, frame: object) -> None:
    raise _Stop


def _one_exited(workers: list, sentinel: object, *, starting: bool) -> int:
    worker = next(w for w in workers if w.sentinel == sentinel)
    worker.join()
    when = " while starting" if starting else ""
    print(
        f"ftprefix openai: error: worker {workers.index(worker)} exited{when} with code "
        f"{worker.exitcode}; stopping the others",
        file=sys.stderr,
        flush=True,
    )
    return 1


def _stop_all(workers: list, timeout: float) -> None:
    for worker in workers:
        if worker.is_alive():
            worker.terminate()  # SIGTERM: uvicorn finishes the requests in progress
    deadline = time.monotonic() + timeout
    for worker in workers:
        worker.join(max(0.0, deadline - time.monotonic()))
    _kill_all(workers)


def _kill_all(workers: list) -> None:
    for worker in workers:
        if worker.is_alive():
            worker.kill()
            worker.join()
