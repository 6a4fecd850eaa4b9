"""Run the gateway with uvicorn, in the foreground or beside another server in this process."""

from __future__ import annotations

import logging
import sys
import threading

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


def make_server(
    settings: GatewaySettings, host: str, port: int, *, tokenizer: Tokenizer | None = None
) -> uvicorn.Server:
    app = create_app(settings, tokenizer=tokenizer)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on", access_log=False)
    return uvicorn.Server(config)


def start_in_thread(server: uvicorn.Server) -> threading.Thread:
    """Serve in a daemon thread; returns once the server listens (or raises if it could not start)."""
    started = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        try:
            server.run()
        except BaseException as exc:
            failure.append(exc)
        finally:
            started.set()

    original = server.startup

    async def startup(sockets: object = None) -> None:
        await original(sockets)  # type: ignore[arg-type]
        started.set()

    server.startup = startup  # type: ignore[method-assign]
    thread = threading.Thread(target=run, name="ftprefix-openai", daemon=True)
    thread.start()
    started.wait()
    if failure or not server.started:
        raise RuntimeError(
            f"the OpenAI-compatible server did not start: {failure[0] if failure else 'unknown'}"
        )
    return thread
