"""What to say when no gRPC server answered where a command looked: a port that answers HTTP/1.1
instead (Triton's HTTP endpoint, 8000 by default, or the OpenAI API) is the usual mistake, and
gRPC's own error says so only sometimes (Triton's HTTP server just closes the connection)."""

from __future__ import annotations

import re
import socket

_HOST_PORT = re.compile(r"^\[?([A-Za-z0-9_.:-]+?)\]?:(\d{1,5})$")
PROBE_S = 1.0


def answers_http1(url: str, timeout: float = PROBE_S) -> bool:
    """Whether `url` (host:port) answers a plain HTTP/1.1 request with an HTTP/1.x status line."""
    match = _HOST_PORT.match(url)
    if match is None:
        return False  # grpcs://, dns:///, several targets: not guessed at
    host, port = match.group(1), int(match.group(2))
    try:
        with socket.create_connection((host, port), timeout=timeout) as conn:
            conn.sendall(
                f"GET /v2/health/ready HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
            )
            return conn.recv(16).startswith(b"HTTP/1.")
    except (OSError, UnicodeError):
        return False


def http_port_message(url: str, option: str) -> str | None:
    """The error to print instead of "no Triton server reachable" where `url` is an HTTP port."""
    if not answers_http1(url):
        return None
    return (
        f"{url} answers HTTP/1.1, not gRPC: it is an HTTP port (Triton's HTTP endpoint, 8000 by default, "
        f"or the OpenAI API); pass Triton's gRPC port (8001 by default) as {option}"
    )
