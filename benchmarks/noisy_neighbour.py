"""Noisy neighbour: what one tenant's flood does to another tenant's latency, by admission policy.

Tenant A floods the gateway with `--flood` concurrent short requests (closed loop: each answer is
followed by the next request), while tenant B sends long requests one at a time. B's median latency
alone and under A's flood are measured in the same run, against one CPU server, for:

- `--max-in-flight 1`, fair admission: B waits for at most the one request of A at Triton;
- `--max-in-flight 1`, first come first served (`--admission fifo`): B waits behind A's queue;
- the default `--max-in-flight` (the model's max_batch_size x instances): every request goes to
  Triton at once, whose batcher puts B's row into a batch with A's; FT runs a batch to its longest
  row, and on a CPU a batch costs about what its rows cost together, so B pays for A's rows.

    .venv/bin/python benchmarks/noisy_neighbour.py [--flood 64] [--samples 8] [--hidden 256 --layers 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

import httpx
from client import PROMPT, build
from openai_gateway import start_gateway

from ftprefix.serving.server import EmbeddedServer, free_port

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
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    setups = [
        ("--max-in-flight 1, fair", ["--max-in-flight", "1"]),
        ("--max-in-flight 1, fifo", ["--max-in-flight", "1", "--admission", "fifo"]),
        ("default --max-in-flight (max_batch_size x instances), fair", []),
    ]
    figures = {}
    with tempfile.TemporaryDirectory(prefix="ftprefix-bench-") as tmp:
        hf_dir, ft_dir = build(Path(tmp), hidden_size=args.hidden, num_layers=args.layers)
        keys = Path(tmp) / "keys.json"
        keys.write_text(json.dumps(KEYS))
        with EmbeddedServer(ft_dir, stop_timeout=0) as server:
            for name, flags in setups:
                port = free_port()
                gateway = start_gateway(server.grpc_url, hf_dir, port, "--api-keys", str(keys), *flags)
                try:
                    figures[name] = asyncio.run(run(f"http://127.0.0.1:{port}", args))
                finally:
                    gateway.terminate()
                    gateway.wait()
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
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
