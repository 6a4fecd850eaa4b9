"""The access log (`--access-log`): one line per /v1 request in the gateway's log, once its answer
has ended (a stream at its last event), with what an operator looks for first: the request id the
caller was given (`x-request-id`), the tenant, the model, the status, the time and the tokens."""

from __future__ import annotations

import logging

log = logging.getLogger("ftprefix.gateway.access")


def write(
    request_id: str,
    tenant: str,
    model: str,
    status: int,
    seconds: float,
    prompt_tokens: int,
    completion_tokens: int,
    reason: str | None,
) -> None:
    # model and tenant names are the server's own (a 404's name is never echoed: it is "-"), so a
    # caller cannot write a line of its own into the log
    log.info(
        "access: request=%s tenant=%s model=%s status=%d seconds=%.3f prompt_tokens=%d "
        "completion_tokens=%d%s",
        request_id,
        tenant or "-",
        model or "-",
        status,
        seconds,
        prompt_tokens,
        completion_tokens,
        f" reason={reason}" if reason else "",
    )
