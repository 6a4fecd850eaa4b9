"""Metrics at `/metrics` (Prometheus text): per task (model) and per tenant, what a team bills,
alerts and plans capacity on.

Per model: requests by HTTP status, prompt and generated tokens, request duration. Per tenant:
requests by status, 429s by reason (`requests`, `tokens`, `concurrency`), the time requests waited
for a place at Triton, tokens. Label values are only names the gateway itself chose: a model it
serves (a request for an unknown model counts under model=""), a tenant's name from the keys file
(never a key; a request without a valid key counts under tenant=""), so callers cannot grow the
label set. Admission's in-flight and waiting requests are gauges. Each app has its own registry
(several gateways can share a process, as the tests do).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST
# request durations: from a cached short answer to a long generation on a busy server
BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
# waits for a place at Triton: none at all, up to the queue timeout
WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class GatewayMetrics:
    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "ftprefix_requests",
            "Completion and chat requests, by model and HTTP status",
            ["model", "status"],
            registry=r,
        )
        self.prompt_tokens = Counter(
            "ftprefix_prompt_tokens", "Prompt tokens sent to the model", ["model"], registry=r
        )
        self.generation_tokens = Counter(
            "ftprefix_generation_tokens", "Tokens the model generated", ["model"], registry=r
        )
        self.duration = Histogram(
            "ftprefix_request_duration_seconds",
            "Time from receiving a request to its last byte, by model",
            ["model"],
            buckets=BUCKETS,
            registry=r,
        )
        self.tenant_requests = Counter(
            "ftprefix_tenant_requests",
            "Completion and chat requests, by tenant and HTTP status",
            ["tenant", "status"],
            registry=r,
        )
        self.tenant_rejections = Counter(
            "ftprefix_tenant_rate_limited",
            "Requests refused with 429 by a limit of the tenant's key, by tenant and limit",
            ["tenant", "reason"],
            registry=r,
        )
        self.tenant_tokens = Counter(
            "ftprefix_tenant_tokens",
            "Prompt and completion tokens, by tenant",
            ["tenant", "kind"],
            registry=r,
        )
        self.queue_wait = Histogram(
            "ftprefix_tenant_queue_wait_seconds",
            "Time a request waited for a place at Triton (fair admission), by tenant",
            ["tenant"],
            buckets=WAIT_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge("ftprefix_in_flight_requests", "Requests at Triton now", registry=r)
        self.waiting = Gauge(
            "ftprefix_waiting_requests", "Requests waiting for a place at Triton", registry=r
        )

    def record(
        self,
        model: str,
        tenant: str,
        status: int,
        seconds: float,
        prompt_tokens: int = 0,
        generation_tokens: int = 0,
        reason: str | None = None,
    ) -> None:
        if not self.enabled:
            return
        code = str(status)
        self.requests.labels(model, code).inc()
        self.duration.labels(model).observe(seconds)
        self.tenant_requests.labels(tenant, code).inc()
        if reason is not None:
            self.tenant_rejections.labels(tenant, reason).inc()
        if prompt_tokens:
            self.prompt_tokens.labels(model).inc(prompt_tokens)
            self.tenant_tokens.labels(tenant, "prompt").inc(prompt_tokens)
        if generation_tokens:
            self.generation_tokens.labels(model).inc(generation_tokens)
            self.tenant_tokens.labels(tenant, "completion").inc(generation_tokens)

    def waited(self, tenant: str, seconds: float) -> None:
        if self.enabled:
            self.queue_wait.labels(tenant).observe(seconds)

    def exposition(self, in_flight: int, waiting: int) -> bytes:
        self.in_flight.set(in_flight)
        self.waiting.set(waiting)
        return generate_latest(self.registry)
