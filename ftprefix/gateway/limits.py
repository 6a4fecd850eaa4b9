"""Per-key limits: concurrent requests, requests and tokens per minute, answered as OpenAI answers.

Rates are token buckets, as OpenAI describes its own limits: a bucket holds up to the per-minute
limit and refills continuously at limit/60 per second, so a key may burst to its limit and then
runs at its rate. A request takes 1 from the requests bucket and `prompt tokens + max_tokens` from
the tokens bucket when it is admitted (what it may use at most), and the completion tokens it did
not use are given back when it ends. Over a limit the request is refused at once with 429, a
`Retry-After` (and `retry-after-ms`, which the `openai` client reads first) for when it would fit,
and OpenAI's `x-ratelimit-*` headers; every admitted request carries those headers too.

All of it lives in one process (one event loop, no locks): with several gateway replicas each
enforces the limits on its own share of the traffic.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from ftprefix.gateway.auth import KeyPolicy
from ftprefix.gateway.errors import ApiError

MINUTE = 60.0


def duration(seconds: float) -> str:
    """OpenAI's reset times: "20ms", "1.5s", "6m0s"."""
    if seconds < 1:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    minutes, rest = divmod(seconds, 60)
    rest_text = f"{rest:.3f}".rstrip("0").rstrip(".") + "s"
    return f"{int(minutes)}m{rest_text}" if minutes else rest_text


class Bucket:
    """A token bucket of `limit` per minute, full at the start."""

    def __init__(self, limit: int, now: float) -> None:
        self.limit = limit
        self.rate = limit / MINUTE
        self.level = float(limit)
        self.at = now

    def refill(self, now: float) -> None:
        self.level = min(self.limit, self.level + (now - self.at) * self.rate)
        self.at = now

    def wait_for(self, amount: float) -> float:
        """Seconds until `amount` fits (0: it fits now)."""
        return max(0.0, (amount - self.level) / self.rate)

    def until_full(self) -> float:
        return (self.limit - self.level) / self.rate

    def headers(self, kind: str) -> list[tuple[str, str]]:
        limit, remaining, reset = header_names(kind)
        return [
            (limit, str(self.limit)),
            (remaining, str(max(0, math.floor(self.level)))),
            (reset, duration(self.until_full())),
        ]


def header_names(*kinds: str) -> list[str]:
    """OpenAI's rate-limit headers of `kinds` (default: both, requests and tokens), as answers carry them."""
    return [
        f"x-ratelimit-{part}-{kind}"
        for kind in kinds or ("requests", "tokens")
        for part in ("limit", "remaining", "reset")
    ]


@dataclass
class Grant:
    """What an admitted request took from its key's limits; `finish` gives back the unused part."""

    usage: KeyUsage | None  # None: a key without limits
    tokens: int  # taken from the tokens bucket
    headers: list[tuple[str, str]]
    done: bool = False

    def finish(self, tokens_used: int) -> None:
        """The request is over, having used `tokens_used` (prompt + completion; 0 if it failed
        before the model ran): the rest of what it took goes back."""
        if self.done:
            return
        self.done = True
        if self.usage is not None:
            self.usage.release(self.tokens, tokens_used)


def _bucket(old: Bucket | None, limit: int | None, now: float) -> Bucket | None:
    if not limit:
        return None
    return old if old is not None and old.limit == limit else Bucket(limit, now)


class KeyUsage:
    """One key's buckets and requests in progress."""

    def __init__(self, policy: KeyPolicy, now: float) -> None:
        self.in_progress = 0
        self.requests: Bucket | None = None
        self.tokens: Bucket | None = None
        self.renew(policy, now)

    def renew(self, policy: KeyPolicy, now: float) -> None:
        """The key's limits as the keys file says now. A bucket whose limit stays keeps its level;
        the requests in progress, admitted before, end here, on this usage, and so stay counted."""
        self.policy = policy
        self.requests = _bucket(self.requests, policy.requests_per_minute, now)
        self.tokens = _bucket(self.tokens, policy.tokens_per_minute, now)

    def release(self, reserved: int, used: int) -> None:
        self.in_progress -= 1
        if self.tokens is not None:
            self.tokens.level = min(self.tokens.limit, self.tokens.level + max(0, reserved - used))


class Limits:
    """Every key's usage, and the admission check. `clock` is replaceable for tests of the rates."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._usage: dict[str, KeyUsage] = {}

    def _usage_of(self, policy: KeyPolicy) -> KeyUsage:
        usage = self._usage.get(policy.ident)
        if usage is None:
            usage = self._usage[policy.ident] = KeyUsage(policy, self.clock())
        elif usage.policy != policy:  # its limits changed in the file
            usage.renew(policy, self.clock())
        return usage

    def admit(self, policy: KeyPolicy, tokens: int) -> Grant:
        """Take one request and `tokens` from the key's limits, or raise the 429 that explains why."""
        if not policy.limited:
            return Grant(None, 0, [])
        usage = self._usage_of(policy)
        now = self.clock()
        if policy.max_concurrent is not None and usage.in_progress >= policy.max_concurrent:
            raise _too_many(
                f"this key already has {usage.in_progress} requests in progress, its limit "
                f"(max_concurrent {policy.max_concurrent}); wait for one to finish",
                "requests",
                1.0,
                self._headers(usage),
                reason="concurrency",
            )
        for bucket, amount, kind in ((usage.requests, 1, "requests"), (usage.tokens, tokens, "tokens")):
            if bucket is None:
                continue
            bucket.refill(now)
            if amount > bucket.limit:
                raise ApiError(
                    400,
                    f"this request needs {amount} tokens (its prompts, and max_tokens for each prompt and "
                    f"choice), more than this key's tokens_per_minute, {bucket.limit}: ask for fewer "
                    "max_tokens or choices (n), or send shorter prompts",
                    param="max_tokens",
                    code="tokens_over_limit",
                )
            wait = bucket.wait_for(amount)
            if wait > 0:
                per = "requests" if kind == "requests" else "tokens"
                raise _too_many(
                    f"rate limit reached for {per} per minute: limit {bucket.limit}, remaining "
                    f"{math.floor(bucket.level)}, requested {amount}; try again in {duration(wait)}",
                    kind,
                    wait,
                    self._headers(usage),
                    reason=kind,
                )
        for bucket, amount in ((usage.requests, 1), (usage.tokens, tokens)):
            if bucket is not None:
                bucket.level -= amount
        usage.in_progress += 1
        return Grant(usage, tokens if usage.tokens is not None else 0, self._headers(usage))

    @staticmethod
    def _headers(usage: KeyUsage) -> list[tuple[str, str]]:
        headers = []
        if usage.requests is not None:
            headers += usage.requests.headers("requests")
        if usage.tokens is not None:
            headers += usage.tokens.headers("tokens")
        return headers


def _too_many(message: str, kind: str, wait: float, headers: list, *, reason: str) -> ApiError:
    retry = [("retry-after", str(max(1, math.ceil(wait)))), ("retry-after-ms", str(math.ceil(wait * 1000)))]
    return ApiError(
        429, message, kind=kind, code="rate_limit_exceeded", headers=[*headers, *retry], reason=reason
    )
