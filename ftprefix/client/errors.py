"""Errors the client raises: each says what went wrong and what the user can do about it.

They derive from `UserError`, so the `ftprefix` command line prints them on one line and exits 2.
"""

from __future__ import annotations

from collections.abc import Sequence

from ftprefix.errors import UserError

START_HINT = "start one with `ftprefix serve CONVERTED_DIR` (CPU) or `docker compose up` (GPU)"


class FtprefixClientError(UserError):
    """Base class of every error raised by `ftprefix.client`."""


class UnknownTaskError(FtprefixClientError):
    """A task name the server does not serve; raised before any inference request is sent."""

    def __init__(self, task: str, known: Sequence[str]) -> None:
        self.task = task
        self.known = list(known)
        listed = ", ".join(self.known) if self.known else "none: the server serves only the base model"
        super().__init__(f"unknown task {task!r}; the server's tasks are: {listed}")


class ServerUnavailableError(FtprefixClientError):
    """No Triton server answered at the URL."""

    def __init__(self, url: str, detail: str = "") -> None:
        self.url = url
        why = f" ({detail})" if detail else ""
        super().__init__(f"no Triton server reachable at {url}{why}; {START_HINT}, or pass the right --url")


class ModelNotReadyError(FtprefixClientError):
    """The server is up but the model is missing or still loading."""

    def __init__(self, url: str, model: str, detail: str = "") -> None:
        self.url = url
        self.model = model
        why = f" ({detail})" if detail else ""
        super().__init__(
            f"model {model!r} is not ready on the server at {url}{why}; wait for it to finish loading, "
            "or check the server log for a load error"
        )


class RequestTimeoutError(FtprefixClientError):
    """The server did not answer within the allowed time; the request may still have run."""

    def __init__(self, url: str, seconds: float | None) -> None:
        self.url = url
        self.seconds = seconds
        limit = f"within {seconds:g} s" if seconds is not None else "in time"
        super().__init__(
            f"the server at {url} did not answer {limit}; pass a larger timeout "
            "(Client(timeout=...), --timeout) or ask for fewer new tokens"
        )


class InvalidRequestError(FtprefixClientError, ValueError):
    """A request the client refuses to send (empty prompt, out-of-range sampling value, ...)."""


class InferenceError(FtprefixClientError):
    """The server rejected or failed a request and said why."""


class StreamingNotSupportedError(FtprefixClientError):
    """`stream()` needs a decoupled model; this server's model answers once per request."""


class TaskTableChangedError(InferenceError):
    """The server's task ids moved (a task was removed) since the table was read; nothing ran.

    `Client` and `AsyncClient` read the table again and resend once on their own."""
