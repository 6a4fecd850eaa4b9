"""Every error `ftprefix.client` raises: one hierarchy, each saying what went wrong and what to do.

Errors that come from the server keep its gRPC status in `status` (e.g. "StatusCode.INVALID_ARGUMENT")
and the tritonclient exception as `__cause__`; they are classified by that status where Triton
gives one. Standard bases are mixed in where they fit (ValueError, LookupError, ConnectionError,
TimeoutError), so generic handlers catch them too.
"""

from __future__ import annotations

from collections.abc import Sequence

START_HINT = "start one with `ftprefix serve CONVERTED_DIR` (CPU) or `docker compose up` (GPU)"


class FtprefixClientError(Exception):
    """Base class of every error raised by `ftprefix.client`."""

    def __init__(self, message: str, *, status: str | None = None) -> None:
        super().__init__(message)
        self.status = status


class InvalidRequestError(FtprefixClientError, ValueError):
    """A request that cannot be served as asked: refused by the client before sending (empty prompt,
    out-of-range sampling value, ...) or by the server (status INVALID_ARGUMENT)."""


class UnknownTaskError(InvalidRequestError, LookupError):
    """A task name the server does not serve; raised before any inference request is sent."""

    def __init__(self, task: str, known: Sequence[str]) -> None:
        from ftprefix.task_table import unknown_name_hint

        self.task = task
        self.known = list(known)
        hint = unknown_name_hint(task, self.known) if self.known else "the server serves only the base model"
        super().__init__(f"unknown task {task!r}; {hint} (`ftprefix tasks list --url` lists them)")


class TaskTableChangedError(InvalidRequestError):
    """The server's task ids moved (a task was removed) since the table was read; nothing ran.

    `Client` and `AsyncClient` read the table again and resend on their own; this reaches the caller
    only when the server did not publish a new table within the retry window."""


class ServerUnavailableError(FtprefixClientError, ConnectionError):
    """No Triton server answered at the URL."""

    def __init__(
        self, url: str, detail: str = "", *, status: str | None = None, option: str = "--url"
    ) -> None:
        self.url = url
        self.option = option
        why = f" ({detail})" if detail else ""
        super().__init__(
            f"no Triton server reachable at {url}{why}; {START_HINT}, or pass the right {option}",
            status=status,
        )


class ModelNotReadyError(FtprefixClientError):
    """The server is up but the model is missing or still loading."""

    def __init__(self, url: str, model: str, detail: str = "", *, status: str | None = None) -> None:
        self.url = url
        self.model = model
        why = f" ({detail})" if detail else ""
        super().__init__(
            f"model {model!r} is not ready on the server at {url}{why}; wait for it to finish loading, "
            "or check the server log for a load error",
            status=status,
        )


class RequestTimeoutError(FtprefixClientError, TimeoutError):
    """The server did not answer within the allowed time; the request may still have run.

    `asked`: where what went unanswered was one of the client's own checks (whether the model is
    ready, its configuration), what it asked: a working server answers those at once, so a larger
    timeout or fewer tokens would not help."""

    def __init__(
        self, url: str, seconds: float | None, *, status: str | None = None, asked: str | None = None
    ) -> None:
        self.url = url
        self.seconds = seconds
        limit = f"within {seconds:g} s" if seconds is not None else "in time"
        if asked is None:
            message = (
                f"the server at {url} did not answer {limit}; pass a larger timeout "
                "(Client(timeout=...), --timeout) or ask for fewer new tokens"
            )
        else:
            message = (
                f"the server at {url} did not answer {asked} {limit}, which a working server "
                "answers at once: it is stopped, hung or overloaded"
            )
        super().__init__(message, status=status)


class InferenceError(FtprefixClientError):
    """The server failed a request it accepted, and said why."""


class MalformedResponseError(InferenceError):
    """The server's output tensors do not follow FasterTransformer's layout, so they cannot be read
    safely (a server that is not FT's backend or ftprefix's twin, or a changed one)."""


class StreamingNotSupportedError(FtprefixClientError):
    """`stream()` needs a decoupled model; this server's model answers once per request."""
