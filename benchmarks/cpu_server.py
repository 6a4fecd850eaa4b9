"""The CPU server on a busy machine: throughput and p99 latency of `ftprefix serve` at 1, 8 and 32
requests in flight, alone and with one busy neighbour process, for each way of spreading the engine
over the cores, side by side in one run: the layouts serve at once, measured in turn, and each
figure is the median of `--rounds` rounds (the order rotates).

Each layout runs as `ftprefix serve` (the CLI a user starts) on the same conversion (a random
GPT-NeoX with 4 prefix tasks); requests go straight to the `fastertransformer` model through
`AsyncClient` (token ids, 16 new tokens, greedy). The neighbour is a process that spins on one core
for as long as the measurement runs (started and stopped here). `--compare-src DIR` adds the
layouts of another checkout of ftprefix (the code before a change): its default, and its default
with OMP_NUM_THREADS=1. One layout, measured last on its own, lets a pool of threads spin while
they wait (OpenMP's ACTIVE policy), to show what the busy neighbour does to that.

    .venv/bin/python benchmarks/cpu_server.py [--requests 200] [--rounds 3] [--hidden 128 --layers 2]
        [--in-flight 1 8 32] [--compare-src ../ftprefix-before]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from client import PROMPT, TASKS, build, from_checkout

from ftprefix.client import AsyncClient
from ftprefix.serving import cpus
from ftprefix.serving.server import free_ports

CONCURRENCY = (1, 8, 32)
DEFAULT = "now: default (an instance per core, 1 thread each)"
BEFORE_ONE_THREAD = "before: OMP_NUM_THREADS=1"
SPIN = (
    "import sys, time\nend = time.monotonic() + float(sys.argv[1])\nwhile time.monotonic() < end:\n    pass\n"
)


def start_serve(
    ft_dir: Path, flags: list[str], env: dict[str, str] | None, src: Path | None = None
) -> tuple[subprocess.Popen, str]:
    """`ftprefix serve` in its own process (from the checkout `src` if given); returns it and its
    gRPC address once it is ready."""
    grpc_port, http_port = free_ports(2)
    argv = [sys.executable, "-m", "ftprefix.cli", "serve", str(ft_dir), "--grpc-port", str(grpc_port)]
    argv += ["--http-port", str(http_port), "--no-watch", *flags]
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, **from_checkout(src, env)
    )
    assert proc.stdout is not None
    for line in proc.stdout:  # ends at EOF if the server fails to start
        if "ready" in line:
            return proc, f"127.0.0.1:{grpc_port}"
    raise SystemExit(f"ftprefix serve {' '.join(flags)} did not start")


async def measure(
    url: str, hf_dir: Path, concurrency: int, total: int, max_seconds: float = 30.0
) -> dict[str, float]:
    """`total` requests, `concurrency` at a time; no new ones after `max_seconds` (a collapsed
    server would otherwise take many minutes)."""
    names = list(TASKS)
    latencies: list[float] = []
    async with AsyncClient(url, tokenizer=hf_dir) as client:
        ids = client.tokenizer.encode(PROMPT) if client.tokenizer else []
        await client.generate(ids, task=names[0], max_new_tokens=16)  # warm up
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(total):
            queue.put_nowait(i)

        async def worker() -> None:
            while not queue.empty() and time.perf_counter() - began < max_seconds:
                i = queue.get_nowait()
                sent = time.perf_counter()
                await client.generate(ids, task=names[i % len(names)], max_new_tokens=16)
                latencies.append(time.perf_counter() - sent)

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
    return {
        "requests_per_s": len(latencies) / elapsed,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": p99 * 1000,
    }


def median_figures(samples: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(s[key] for s in samples) for key in samples[0]}


def run_rounds(servers: dict[str, str], hf_dir: Path, args) -> dict[str, dict[str, dict[str, float]]]:
    """Every layout measured in turn, alone and then beside the spinner, in `args.rounds` rounds
    (the order rotates each round); per layout and load, the median of the rounds."""
    names = list(servers)
    samples: dict[str, dict[str, list[dict[str, float]]]] = {name: {} for name in names}
    for url in servers.values():
        for concurrency in args.in_flight:  # warm up at each load
            asyncio.run(measure(url, hf_dir, concurrency, min(50, args.requests)))
    for round_ in range(args.rounds):
        order = names[round_ % len(names) :] + names[: round_ % len(names)]
        for concurrency in args.in_flight:
            for name in order:
                figures = asyncio.run(
                    measure(servers[name], hf_dir, concurrency, args.requests, args.max_seconds)
                )
                samples[name].setdefault(f"alone-{concurrency}", []).append(figures)
            spinner = subprocess.Popen([sys.executable, "-c", SPIN, "600"])  # bounded: 10 minutes
            try:
                for name in order:
                    figures = asyncio.run(
                        measure(servers[name], hf_dir, concurrency, args.requests, args.max_seconds)
                    )
                    samples[name].setdefault(f"busy-{concurrency}", []).append(figures)
            finally:
                spinner.kill()
                spinner.wait()
    return {name: {key: median_figures(s) for key, s in by_key.items()} for name, by_key in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=200, help="requests per measurement")
    parser.add_argument(
        "--max-seconds", type=float, default=30.0, help="a measurement sends no requests after this"
    )
    parser.add_argument("--rounds", type=int, default=3, help="figures are the median of the rounds")
    parser.add_argument("--hidden", type=int, default=128, help="default 128: the demo's model")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--compare-src", type=Path, help="also the layouts of this checkout of ftprefix")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--in-flight", type=int, nargs="+", default=list(CONCURRENCY), help="default: 1 8 32")
    args = parser.parse_args()
    cores = cpus.usable_cores()
    # (name, flags, environment, checkout: None for this one)
    layouts: list[tuple[str, list[str], dict[str, str] | None, Path | None]] = [
        (DEFAULT, [], None, None),
        ("now: --instances 1 --threads 1", ["--instances", "1", "--threads", "1"], None, None),
        (
            f"now: --instances 1 --threads {cores.count}",
            ["--instances", "1", "--threads", str(cores.count)],
            None,
            None,
        ),
    ]
    if args.compare_src is not None:
        before = args.compare_src
        layouts += [
            ("before: default (one instance, OMP_NUM_THREADS=min(4, nproc))", [], None, before),
            (BEFORE_ONE_THREAD, [], {**os.environ, "OMP_NUM_THREADS": "1"}, before),
        ]
    # measured on its own afterwards: idle spinning threads would be the others' busy neighbour
    spinning = (
        f"now: --instances 1 --threads {cores.count}, OMP_WAIT_POLICY=ACTIVE (threads spin)",
        ["--instances", "1", "--threads", str(cores.count)],
        {**os.environ, "OMP_WAIT_POLICY": "ACTIVE"},
        None,
    )
    results: dict[str, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="ftprefix-bench-") as tmp:
        hf_dir, ft_dir = build(Path(tmp), hidden_size=args.hidden, num_layers=args.layers)
        for group in (layouts, [spinning]):
            procs: list[subprocess.Popen] = []
            servers: dict[str, str] = {}
            try:
                for name, flags, env, src in group:  # all of a group at once: idle ones take no CPU
                    proc, servers[name] = start_serve(ft_dir, flags, env, src)
                    procs.append(proc)
                results.update(run_rounds(servers, hf_dir, args))
            finally:
                for proc in procs:
                    proc.terminate()
                for proc in procs:
                    proc.wait()
    print(
        f"ftprefix serve on {cores.count} cores ({cores.seen}), random GPT-NeoX (hidden {args.hidden}, "
        f"{args.layers} layers), 16 new tokens per request, {args.requests} requests per measurement, "
        f"median of {args.rounds} rounds; busy: one process spinning on a core beside the server"
    )
    print()
    print("| layout | in flight | req/s alone | req/s busy | busy / alone | p99 ms alone | p99 ms busy |")
    print("|---|---|---|---|---|---|---|")
    for name, figures in results.items():
        for concurrency in args.in_flight:
            alone, busy = figures[f"alone-{concurrency}"], figures[f"busy-{concurrency}"]
            ratio = busy["requests_per_s"] / alone["requests_per_s"]
            print(
                f"| {name} | {concurrency} | {alone['requests_per_s']:.1f} | {busy['requests_per_s']:.1f} "
                f"| {ratio:.0%} | {alone['p99_ms']:.1f} | {busy['p99_ms']:.1f} |"
            )
    print()
    for concurrency in args.in_flight:
        now = results[DEFAULT]
        busy = now[f"busy-{concurrency}"]["requests_per_s"] / now[f"alone-{concurrency}"]["requests_per_s"]
        line = f"{concurrency} in flight, default: busy / alone {busy:.0%}"
        if BEFORE_ONE_THREAD in results:
            before = results[BEFORE_ONE_THREAD][f"alone-{concurrency}"]["requests_per_s"]
            alone = now[f"alone-{concurrency}"]["requests_per_s"]
            line += f"; alone, default / before with OMP_NUM_THREADS=1: {alone / before:.2f}"
        print(line)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
