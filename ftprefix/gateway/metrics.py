"""Per-task metrics at `/metrics` (Prometheus text): what a team bills and alerts on per tenant.

Counters and a histogram labelled by model (a task, or the base model's name): requests by HTTP
status, prompt and generated tokens, and request duration. Model labels are only names the server
serves; a request for an unknown model counts under "" so that callers cannot grow the label set.
Each app has its own registry (several gateways can share a process, as the tests do).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST
# request durations: from a cached short answer to a long generation on a busy server
BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class GatewayMetrics:
    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "ftprefix_requests",
            "Completion and chat requests, by model and HTTP status",
            ["model", "status"],
            registry=self.registry,
        )
        self.prompt_tokens = Counter(
            "ftprefix_prompt_tokens", "Prompt tokens sent to the model", ["model"], registry=self.registry
        )
        self.generation_tokens = Counter(
            "ftprefix_generation_tokens", "Tokens the model generated", ["model"], registry=self.registry
        )
        self.duration = Histogram(
            "ftprefix_request_duration_seconds",
            "Time from receiving a request to its last byte, by model",
            ["model"],
            buckets=BUCKETS,
            registry=self.registry,
        )

    def record(
        self, model: str, status: int, seconds: float, prompt_tokens: int = 0, generation_tokens: int = 0
    ) -> None:
        if not self.enabled:
            return
        self.requests.labels(model, str(status)).inc()
        self.duration.labels(model).observe(seconds)
        if prompt_tokens:
            self.prompt_tokens.labels(model).inc(prompt_tokens)
        if generation_tokens:
            self.generation_tokens.labels(model).inc(generation_tokens)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
