"""Triton's dynamic batching window for the `fastertransformer` model (no heavy imports: the CLI
reads the default when it builds its options)."""

from __future__ import annotations

from ftprefix.errors import UserError

# How long a request may wait for others to join its batch; the CPU twin runs one engine call per
# merged batch, and the FT backend does the same on the GPU. FT has no in-flight batching, so a
# request that misses a batch waits for that whole generation: behind a front end that forwards
# requests one after another (the OpenAI gateway), a window wider than their spread keeps batches
# full. Triton holds a lone request for the whole window, which adds that much latency at low load.
DEFAULT_MAX_QUEUE_DELAY_US = 5000
MAX_QUEUE_DELAY_LIMIT_US = 60_000_000  # a window beyond a minute is a typo


def check_max_queue_delay(us: int) -> None:
    if not 0 <= us <= MAX_QUEUE_DELAY_LIMIT_US:
        raise UserError(
            f"--max-queue-delay-us must be between 0 and {MAX_QUEUE_DELAY_LIMIT_US} (one minute), got {us}"
        )
