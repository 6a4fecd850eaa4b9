"""Run the gateway with uvicorn, in the foreground or beside another server in this process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator

import uvicorn

from ftprefix.gateway.app import GatewaySettings, create_app
from ftprefix.text import Tokenizer


def log_to_stderr(prefix: str) -> None:
    """The gateway's log (errors with their request ids, keys reloads) on stderr, one line each."""
    logger = logging.getLogger("ftprefix.gateway")
    if not any(getattr(h, "ftprefix", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(f"{prefix}: %(levelname)s: %(message)s"))
        handler.ftprefix = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


class GatewayServer(uvicorn.Server):
    """uvicorn's server, whose main loop wakes once a second (the Date header's pace) or when it is
    told to stop, where uvicorn's wakes 10 times a second to look at `should_exit`. An idle event
    loop's every wake-up costs CPU: on the 2-core machine of the README's benchmarks, 2.64 ms a
    second for uvicorn's loop against 0.58 ms for this one (benchmarks/wakeups.py), which a gateway
    at a few requests a second paid as about 0.3 ms per request."""

    def __init__(self, config: uvicorn.Config) -> None:
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._should_exit = False
        # called once start-up is over, whether it listens (`started`) or failed
        self.on_startup: Callable[[], None] | None = None
        # called once it has stopped serving: uvicorn raises the signal that stopped it again after
        # that, so the process may end before any code after run() does
        self.on_shutdown: Callable[[], None] | None = None
        super().__init__(config)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.on_startup is not None:
            self.on_startup()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await super().shutdown(sockets)
        finally:
            if self.on_shutdown is not None:
                self.on_shutdown()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """uvicorn's (SIGINT and SIGTERM stop it gracefully), and a hang-up taken the same way: a
        closing terminal or ssh session sends SIGHUP to its whole process group, every worker of
        `--workers` included, and by SIGHUP's default action each request was cut off. Under nohup,
        which ignores SIGHUP, the gateway serves on."""
        hangup = None
        if threading.current_thread() is threading.main_thread():  # where signals can be taken
            current = signal.getsignal(signal.SIGHUP)
            if current is not None and current is not signal.SIG_IGN:
                hangup = signal.signal(signal.SIGHUP, self.handle_exit)
        try:
            with super().capture_signals():
                yield
        finally:
            if hangup is not None:
                signal.signal(signal.SIGHUP, hangup)

    @property  # type: ignore[override]
    def should_exit(self) -> bool:
        return self._should_exit

    @should_exit.setter
    def should_exit(self, value: bool) -> None:
        # set by uvicorn's signal handler, or by whoever stops an embedded gateway from its thread
        self._should_exit = value
        if value and self._stop is not None and self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop.set)

    async def main_loop(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        while not await self.on_tick(0):  # tick 0: on_tick's once-a-second work, every time
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=1.0)


def make_server(
    settings: GatewaySettings, host: str, port: int, *, tokenizer: Tokenizer | None = None
) -> GatewayServer:
    app = create_app(settings, tokenizer=tokenizer)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        lifespan="on",
        access_log=False,
        timeout_graceful_shutdown=settings.stop_timeout,
    )
    return GatewayServer(config)


def start_in_thread(server: GatewayServer, sock: socket.socket | None = None) -> threading.Thread:
    """Serve in a daemon thread, on `sock` if given (a bound socket: its port cannot be taken
    meanwhile); returns once the server listens (or raises if it could not start)."""
    started = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        try:
            server.run(sockets=None if sock is None else [sock])
        except BaseException as exc:
            failure.append(exc)
        finally:
            started.set()

    server.on_startup = started.set
    thread = threading.Thread(target=run, name="ftprefix-openai", daemon=True)
    thread.start()
    started.wait()
    if failure or not server.started:
        raise RuntimeError(
            f"the OpenAI-compatible server did not start: {failure[0] if failure else 'unknown'}"
        )
    return thread
