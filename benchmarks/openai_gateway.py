"""The OpenAI-compatible API's cost: the same greedy completions through the gateway (`ftprefix
openai` in its own process, called with the official `openai` client over HTTP) and through
`ftprefix.client.AsyncClient` directly, side by side in one run against one embedded CPU server (a
random GPT-NeoX with 4 prefix tasks, tiny by default), with Triton's requests per batch for each.
On a small CPU machine the gateway's own CPU time is taken from the model's, which a GPU server
does not share.

Then what API keys and per-task metrics cost: two gateway processes side by side on the same
server, one bare (no keys, --no-metrics), one with a keys file of 1,000 tenants and metrics on,
in alternating rounds, each one's CPU ms per request; and the added code alone (a key lookup in
the 1,000-key table, a metrics update) timed in this process.

    .venv/bin/python benchmarks/openai_gateway.py [--requests 128] [--new-tokens 16] [--json out.json]
        [--hidden 64 --layers 2]     # a larger model: the gateway's share of the CPU shrinks
        [--max-queue-delay-us 5000]  # the server's batching window
        [--rounds 3]                 # alternating rounds of the keys/metrics comparison
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path

import openai
from client import PROMPT, TASKS, build

from ftprefix.client import AsyncClient
from ftprefix.serving.batching import DEFAULT_MAX_QUEUE_DELAY_US
from ftprefix.serving.server import EmbeddedServer, free_port

BASE = "base"


async def measure(call: Callable[[int], Awaitable[object]], concurrency: int, total: int) -> dict[str, float]:
    """`total` calls, `concurrency` in flight: requests/s and median latency."""
    latencies: list[float] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(total):
        queue.put_nowait(i)

    async def worker() -> None:
        while not queue.empty():
            i = queue.get_nowait()
            start = time.perf_counter()
            await call(i)
            latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    return {"requests_per_s": total / elapsed, "p50_ms": statistics.median(latencies) * 1000}


def executions(http_url: str) -> tuple[int, int]:
    """Requests and batch executions of the `fastertransformer` model so far (Triton's statistics)."""
    with urllib.request.urlopen(f"http://{http_url}/v2/models/fastertransformer/stats", timeout=10) as resp:
        stats = json.load(resp)["model_stats"][0]
    return int(stats.get("inference_count", 0)), int(stats.get("execution_count", 0))


async def measured(
    call: Callable[[int], Awaitable[object]], concurrency: int, total: int, http_url: str
) -> dict[str, float]:
    """`measure`, plus the mean number of requests Triton ran per execution meanwhile."""
    requests, runs = executions(http_url)
    result = await measure(call, concurrency, total)
    requests_after, runs_after = executions(http_url)
    result["mean_batch"] = (requests_after - requests) / max(1, runs_after - runs)
    return result


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    import psutil

    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


async def compare(
    server: EmbeddedServer, api_url: str, hf_dir: Path, total: int, new_tokens: int, gateway_pid: int
) -> list[dict]:
    names = list(TASKS)
    rows = []
    async with (
        AsyncClient(server.grpc_url, tokenizer=hf_dir) as direct,
        openai.AsyncOpenAI(base_url=api_url, api_key="unused", max_retries=0) as api,
    ):

        async def via_client(i: int) -> object:
            return await direct.generate(PROMPT, task=names[i % len(names)], max_new_tokens=new_tokens)

        async def via_openai(i: int) -> object:
            return await api.completions.create(
                model=names[i % len(names)], prompt=PROMPT, max_tokens=new_tokens, temperature=0
            )

        await via_client(0), await via_openai(0)  # warm up both paths
        for concurrency in (1, 8, 32):
            row: dict = {"concurrency": concurrency}
            row["client"] = await measured(via_client, concurrency, total, server.http_url)
            before = cpu_seconds(gateway_pid)
            row["openai"] = await measured(via_openai, concurrency, total, server.http_url)
            row["gateway_cpu_ms"] = (cpu_seconds(gateway_pid) - before) / total * 1000
            rows.append(row)
    return rows


def format_report(rows: list[dict], args: argparse.Namespace, tasks: int) -> str:
    lines = [
        f"CPU server, random GPT-NeoX (hidden {args.hidden}, {args.layers} layers) with {tasks} prefix "
        f"tasks, {args.new_tokens} new tokens per request, batching window {args.max_queue_delay_us} us",
        "",
        "| in flight | client req/s | OpenAI API req/s | throughput overhead | client p50 ms "
        "| OpenAI API p50 ms | gateway CPU ms/request | requests per batch: client / OpenAI API |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        c, o = row["client"], row["openai"]
        overhead = c["requests_per_s"] / o["requests_per_s"] - 1
        rates = f"{c['requests_per_s']:.0f} | {o['requests_per_s']:.0f} | {overhead:+.1%}"
        latency = f"{c['p50_ms']:.1f} | {o['p50_ms']:.1f} | {row['gateway_cpu_ms']:.2f}"
        batches = f"{c['mean_batch']:.1f} / {o['mean_batch']:.1f}"
        lines.append(f"| {row['concurrency']} | {rates} | {latency} | {batches} |")
    return "\n".join(lines)


def start_gateway(grpc_url: str, hf_dir: Path, port: int, *extra: str) -> subprocess.Popen:
    """`ftprefix openai` as a deployment runs it: its own process. Returns once /health answers 200."""
    argv = [
        "openai",
        "--url",
        grpc_url,
        "--tokenizer",
        str(hf_dir),
        "--base-model",
        BASE,
        "--port",
        str(port),
        *extra,
    ]
    proc = subprocess.Popen([sys.executable, "-m", "ftprefix.cli", *argv], stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return proc
        except OSError:
            if proc.poll() is not None:
                raise SystemExit("ftprefix openai did not start") from None
            time.sleep(0.1)  # polling a starting server
    proc.kill()
    raise SystemExit("ftprefix openai did not become healthy within 60 s")


TENANTS = 1000
TENANT_KEY = "tenant-0"


def keys_file(directory: Path) -> Path:
    """1,000 tenants, each with its own key; the one the benchmark uses may call every task."""
    keys = {f"tenant-{i}": [list(TASKS)[i % len(TASKS)]] for i in range(TENANTS)}
    keys[TENANT_KEY] = "*"
    path = directory / "keys.json"
    path.write_text(json.dumps(keys))
    return path


async def gateway_cpu(url: str, key: str, pid: int, total: int, new_tokens: int) -> float:
    """CPU ms of the gateway process per request, `total` requests at 8 in flight."""
    names = list(TASKS)
    async with openai.AsyncOpenAI(base_url=url, api_key=key, max_retries=0) as api:

        async def call(i: int) -> object:
            return await api.completions.create(
                model=names[i % len(names)], prompt=PROMPT, max_tokens=new_tokens, temperature=0
            )

        await call(0)
        before = cpu_seconds(pid)
        await measure(call, 8, total)
        return (cpu_seconds(pid) - before) / total * 1000


def added_code_us(path: Path) -> dict[str, float]:
    """The per-request work keys and metrics add, timed alone: microseconds per call."""
    import timeit

    from ftprefix.gateway.auth import KeyRing
    from ftprefix.gateway.metrics import GatewayMetrics

    ring, metrics = KeyRing([], path), GatewayMetrics()
    header = f"Bearer {TENANT_KEY}"
    assert ring.scope_of(header) is not None
    n = 20000
    return {
        "key lookup (1,000 keys, file checked for changes)": timeit.timeit(
            lambda: ring.scope_of(header), number=n
        )
        / n
        * 1e6,
        "metrics update (4 series)": timeit.timeit(
            lambda: metrics.record("smile", 200, 0.01, 12, 16), number=n
        )
        / n
        * 1e6,
    }


def additions(server: EmbeddedServer, hf_dir: Path, tmp: Path, args: argparse.Namespace) -> list[str]:
    """The keys + metrics comparison's report lines."""
    path = keys_file(tmp)
    bare_port, full_port = free_port(), free_port()
    bare = start_gateway(server.grpc_url, hf_dir, bare_port, "--no-metrics")
    full = start_gateway(server.grpc_url, hf_dir, full_port, "--api-keys", str(path))
    samples: dict[str, list[float]] = {"bare": [], "keys + metrics": []}
    try:
        for _ in range(args.rounds):
            for name, port, proc in (("bare", bare_port, bare), ("keys + metrics", full_port, full)):
                url = f"http://127.0.0.1:{port}/v1"
                ms = asyncio.run(gateway_cpu(url, TENANT_KEY, proc.pid, args.requests, args.new_tokens))
                samples[name].append(ms)
    finally:
        for proc in (bare, full):
            proc.terminate()
            proc.wait()
    median = {name: statistics.median(values) for name, values in samples.items()}
    lines = [
        "",
        f"API keys ({TENANTS:,} tenants in a keys file) and per-task metrics: gateway CPU ms per request, "
        f"8 in flight, median of {args.rounds} alternating rounds of {args.requests} requests",
        "",
        "| gateway | CPU ms/request | rounds |",
        "|---|---|---|",
    ]
    for name, values in samples.items():
        lines.append(f"| {name} | {median[name]:.3f} | {', '.join(f'{v:.3f}' for v in values)} |")
    lines.append(f"| difference | {median['keys + metrics'] - median['bare']:+.3f} | |")
    lines += ["", "| added work, timed alone | us per request |", "|---|---|"]
    lines += [f"| {name} | {us:.1f} |" for name, us in added_code_us(path).items()]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=128, help="requests per run")
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument(
        "--hidden", type=int, default=64, help="hidden size (default 64: the model costs almost nothing)"
    )
    parser.add_argument("--layers", type=int, default=2, help="layers (default 2)")
    parser.add_argument(
        "--max-queue-delay-us",
        type=int,
        default=DEFAULT_MAX_QUEUE_DELAY_US,
        help="the server's dynamic batching window, as `ftprefix serve --max-queue-delay-us`",
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the keys/metrics comparison")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ftprefix-bench-") as tmp:
        hf_dir, ft_dir = build(Path(tmp), hidden_size=args.hidden, num_layers=args.layers)
        with EmbeddedServer(ft_dir, max_queue_delay_us=args.max_queue_delay_us) as server:
            port = free_port()
            gateway = start_gateway(server.grpc_url, hf_dir, port)
            try:
                api_url = f"http://127.0.0.1:{port}/v1"
                rows = asyncio.run(
                    compare(server, api_url, hf_dir, args.requests, args.new_tokens, gateway.pid)
                )
            finally:
                gateway.terminate()
                gateway.wait()
            extra = additions(server, hf_dir, Path(tmp), args)
    print(format_report(rows, args, len(TASKS)))
    print("\n".join(extra))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
