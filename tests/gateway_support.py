"""Shared helpers for the OpenAI gateway tests (no tests here): its Prometheus metrics, read back
with prometheus_client's own parser."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import httpx
import pytest
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


@contextlib.contextmanager
def gateway_log(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """caplog records the gateway's log at INFO inside this block, also once a command in this
    process has set that log up (log_to_stderr: a handler of its own and no propagation, where
    caplog's would see nothing)."""
    logger = logging.getLogger("ftprefix.gateway")
    separate = not logger.propagate
    if separate:
        logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger="ftprefix.gateway"):
            yield
    finally:
        if separate:
            logger.removeHandler(caplog.handler)
