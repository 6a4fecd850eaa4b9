"""Noisy neighbour: what one tenant's flood does to another tenant's latency, by admission policy.

Tenant A floods the gateway with `--flood` concurrent short requests (closed loop: each answer is
followed by the next request), while tenant B sends long requests one at a time. B's median latency
alone and under A's flood are measured in the same run, against one CPU server, for:

- `--max-in-flight 1`, fair admission: B waits for at most the one request of A at Triton;
- `--max-in-flight 1`, first come first served (`--admission fifo`): B waits behind A's queue;
- the default `--max-in-flight` (the model's max_batch_size x instances): every request goes to
  Triton at once, whose batcher puts B's row into a batch with A's; FT runs a batch to its longest
  row, and on a CPU a batch costs about what its rows cost together, so B pays for A's rows.

Then both tenants flood at once, `--flood` / 2 concurrent short requests each, for
`--share-seconds`, with `--max-in-flight 1`: each tenant's share of the answers with weights 1 and
1, and with B's keys given `"weight": --weight` (its requests admitted per turn), against FIFO.

    .venv/bin/python benchmarks/noisy_neighbour.py [--flood 64] [--samples 8] [--hidden 256 --layers 4]
        [--share-seconds 5] [--weight 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import httpx
from client import PROMPT, build
from openai_gateway import start_gateway

from ftprefix.serving.server import EmbeddedServer, free_port

Measurement = Callable[[str, argparse.Namespace], Coroutine[Any, Any, dict[str, float]]]
KEYS = {"key-a": {"tenant": "A", "tasks": "*"}, "key-b": {"tenant": "B", "tasks": "*"}}


async def _complete(client: httpx.AsyncClient, url: str, key: str, tokens: int) -> float:
    body = {"model": "base", "prompt": PROMPT, "max_tokens": tokens, "temperature": 0, "ignore_eos": True}
    start = time.perf_counter()
    answer = await client.post(url + "/v1/completions", json=body, headers={"Authorization": f"Bearer {key}"})
    if answer.status_code != 200:
        raise SystemExit(f"the gateway answered {answer.status_code}: {answer.text}")
    return time.perf_counter() - start


async def run(url: str, args: argparse.Namespace) -> dict[str, float]:
    limits = httpx.Limits(max_connections=args.flood + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        await _complete(client, url, "key-b", args.long)  # warm up
        alone = [await _complete(client, url, "key-b", args.long) for _ in range(args.samples)]
        stop = asyncio.Event()
        done = [0]

        async def flood_worker() -> None:
            while not stop.is_set():
                await _complete(client, url, "key-a", args.short)
                done[0] += 1

        workers = [asyncio.ensure_future(flood_worker()) for _ in range(args.flood)]
        await asyncio.sleep(args.settle)  # let the flood fill the queue before B measures
        started, before = time.perf_counter(), done[0]
        under = [await _complete(client, url, "key-b", args.long) for _ in range(args.samples)]
        flood_rate = (done[0] - before) / (time.perf_counter() - started)
        stop.set()
        await asyncio.gather(*workers)
    return {
        "alone_p50_ms": statistics.median(alone) * 1000,
        "under_p50_ms": statistics.median(under) * 1000,
        "flood_requests_per_s": flood_rate,
    }


async def shares(url: str, args: argparse.Namespace) -> dict[str, float]:
    """Both tenants flood with short requests: the answers per second each got."""
    limits = httpx.Limits(max_connections=args.flood + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        counting = asyncio.Event()
        stop = asyncio.Event()
        done = {"key-a": 0, "key-b": 0}

        async def flood_worker(key: str) -> None:
            while not stop.is_set():
                await _complete(client, url, key, args.short)
                if counting.is_set() and not stop.is_set():
                    done[key] += 1

        workers = [
            asyncio.ensure_future(flood_worker(key)) for key in done for _ in range(max(1, args.flood // 2))
        ]
        await asyncio.sleep(args.settle)  # both queues filled before the count starts
        counting.set()
        started = time.perf_counter()
        await asyncio.sleep(args.share_seconds)
        stop.set()
        elapsed = time.perf_counter() - started
        await asyncio.gather(*workers)
    return {"A_per_s": done["key-a"] / elapsed, "B_per_s": done["key-b"] / elapsed}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--flood", type=int, default=64, help="tenant A's concurrent requests")
    parser.add_argument(
        "--samples", type=int, default=8, help="tenant B's requests, alone and under the flood"
    )
    parser.add_argument("--short", type=int, default=4, help="tokens of each of A's answers")
    parser.add_argument("--long", type=int, default=64, help="tokens of each of B's answers")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--settle", type=float, default=2.0, help="seconds the flood runs before B measures")
    parser.add_argument("--share-seconds", type=float, default=5.0, help="how long both tenants flood")
    parser.add_argument("--weight", type=int, default=3, help="B's weight in the weighted run")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    setups = [
        ("--max-in-flight 1, fair", ["--max-in-flight", "1"]),
        ("--max-in-flight 1, fifo", ["--max-in-flight", "1", "--admission", "fifo"]),
        ("default --max-in-flight (max_batch_size x instances), fair", []),
    ]
    weighted = {**KEYS, "key-b": {**KEYS["key-b"], "weight": args.weight}}
    share_setups = [
        ("fair, weights 1 and 1", KEYS, []),
        (f"fair, B of weight {args.weight}", weighted, []),
        ("fifo", KEYS, ["--admission", "fifo"]),
    ]
    figures: dict[str, dict[str, float]] = {}
    share_figures: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="ftprefix-bench-") as tmp:
        hf_dir, ft_dir = build(Path(tmp), hidden_size=args.hidden, num_layers=args.layers)

        def measure(grpc_url: str, keys: dict, flags: list[str], how: Measurement) -> dict[str, float]:
            path = Path(tmp) / "keys.json"
            path.write_text(json.dumps(keys))
            port = free_port()
            gateway = start_gateway(grpc_url, hf_dir, port, "--api-keys", str(path), *flags)
            try:
                return asyncio.run(how(f"http://127.0.0.1:{port}", args))
            finally:
                gateway.terminate()
                gateway.wait()

        with EmbeddedServer(ft_dir, stop_timeout=0) as server:
            for name, flags in setups:
                figures[name] = measure(server.grpc_url, KEYS, flags, run)
            for name, keys, flags in share_setups:
                share_figures[name] = measure(server.grpc_url, keys, ["--max-in-flight", "1", *flags], shares)
    print(
        f"CPU server, random GPT-NeoX (hidden {args.hidden}, {args.layers} layers); tenant A: {args.flood} "
        f"concurrent requests of {args.short} tokens; tenant B: requests of {args.long} tokens one at a "
        f"time, {args.samples} alone then {args.samples} under A's flood"
    )
    print()
    print("| admission | B p50 alone ms | B p50 under the flood ms | ratio | A's requests/s meanwhile |")
    print("|---|---|---|---|---|")
    for name, f in figures.items():
        ratio = f["under_p50_ms"] / f["alone_p50_ms"]
        print(
            f"| {name} | {f['alone_p50_ms']:.0f} | {f['under_p50_ms']:.0f} | {ratio:.2f}x "
            f"| {f['flood_requests_per_s']:.1f} |"
        )
    print()
    print(
        f"Both tenants flood, {max(1, args.flood // 2)} concurrent requests of {args.short} tokens each, "
        f"for {args.share_seconds:g} s, --max-in-flight 1"
    )
    print()
    print("| admission | A's answers/s | B's answers/s | B's share |")
    print("|---|---|---|---|")
    for name, f in share_figures.items():
        total = f["A_per_s"] + f["B_per_s"]
        share = f["B_per_s"] / total if total else 0.0
        print(f"| {name} | {f['A_per_s']:.1f} | {f['B_per_s']:.1f} | {share:.0%} |")
    if args.json:
        args.json.write_text(
            json.dumps({**figures, **{f"both flood, {k}": v for k, v in share_figures.items()}}, indent=1)
        )


if __name__ == "__main__":
    main()
