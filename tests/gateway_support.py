"""Shared helpers for the OpenAI gateway tests (no tests here): its Prometheus metrics, read back
with prometheus_client's own parser."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, tuple], float]


def metric_samples(root: str) -> Samples:
    """Every sample at `root`/metrics: (name, sorted labels) -> value."""
    text = httpx.get(root + "/metrics").text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def metric_delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)
