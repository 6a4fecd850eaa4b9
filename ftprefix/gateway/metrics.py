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
from prometheus_client.multiprocess import MultiProcessCollector

CONTENT_TYPE = CONTENT_TYPE_LATEST
# request durations: from a cached short answer to a long generation on a busy server
BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
# waits for a place at Triton: none at all, up to the queue timeout
WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class GatewayMetrics:
    """`shared_dir`: the directory of prometheus_client's multiprocess mode, where every worker of
    `ftprefix openai --workers N` writes its values (workers.py); /metrics then sums them all."""

    def __init__(self, enabled: bool = True, shared_dir: str | None = None) -> None:
        self.enabled = enabled
        self.shared_dir = shared_dir
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
        # each label set's series, looked up once: labels() validates and locks on every call,
        # which was a third of a request's bookkeeping (benchmarks/openai_gateway.py); keyed by the
        # registry's own label values, these hold no more series than the registry does
        self._per_model: dict[tuple[str, str], tuple] = {}
        self._per_tenant: dict[tuple[str, str], tuple] = {}
        self._waits: dict[str, Histogram] = {}
        # across workers, the sum of every live worker's value
        self.in_flight = Gauge(
            "ftprefix_in_flight_requests",
            "Places taken at Triton now: one per prompt row of the requests there",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.waiting = Gauge(
            "ftprefix_waiting_requests",
            "Requests waiting for a place at Triton",
            registry=r,
            multiprocess_mode="livesum",
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
        per_model = self._per_model.get((model, code))
        if per_model is None:
            per_model = self._per_model[(model, code)] = (
                self.requests.labels(model, code),
                self.duration.labels(model),
                self.prompt_tokens.labels(model),
                self.generation_tokens.labels(model),
            )
        per_tenant = self._per_tenant.get((tenant, code))
        if per_tenant is None:
            per_tenant = self._per_tenant[(tenant, code)] = (
                self.tenant_requests.labels(tenant, code),
                self.tenant_tokens.labels(tenant, "prompt"),
                self.tenant_tokens.labels(tenant, "completion"),
            )
        requests, duration, prompt, generated = per_model
        tenant_requests, tenant_prompt, tenant_generated = per_tenant
        requests.inc()
        duration.observe(seconds)
        tenant_requests.inc()
        if reason is not None:
            self.tenant_rejections.labels(tenant, reason).inc()
        if prompt_tokens:
            prompt.inc(prompt_tokens)
            tenant_prompt.inc(prompt_tokens)
        if generation_tokens:
            generated.inc(generation_tokens)
            tenant_generated.inc(generation_tokens)

    def waited(self, tenant: str, seconds: float) -> None:
        if self.enabled:
            wait = self._waits.get(tenant)
            if wait is None:
                wait = self._waits[tenant] = self.queue_wait.labels(tenant)
            wait.observe(seconds)

    def places(self, in_flight: int, waiting: int) -> None:
        """Admission's state, as it changes (with workers: each worker's own, summed at /metrics)."""
        self.in_flight.set(in_flight)
        self.waiting.set(waiting)

    def exposition(self, in_flight: int, waiting: int) -> bytes:
        if self.shared_dir is None:
            self.places(in_flight, waiting)
            return generate_latest(self.registry)
        every_worker = CollectorRegistry()
        MultiProcessCollector(every_worker, path=self.shared_dir)
        return generate_latest(every_worker)
