"""The OpenAI-compatible API's cost, side by side in one run against embedded CPU servers (a random
GPT-NeoX with 4 prefix tasks; tiny by default, `--hidden/--layers` make it cost something):

1. Whole answers: the same greedy completions through the gateway (`ftprefix openai` in its own
   process, called with the official `openai` client) and through `ftprefix.client.AsyncClient`
   directly, at 1, 8 and 32 in flight: requests/s, the gateway's throughput overhead, p50s, the
   gateway's CPU per request (its workers' included), and Triton's requests per batch for each
   path. This checkout's gateway runs twice: with `--http-url` (answers and streams over Triton's
   HTTP endpoint) and without; `--workers N` adds it over HTTP with N worker processes.
2. Streams: answers of a fixed length (`ignore_eos`), short and long, streamed through the gateway
   and through `AsyncClient.stream`: throughput overhead, and the gateway's CPU per stream at both
   lengths, whose difference over the extra tokens is its CPU per streamed token.
3. Bookkeeping: what keys (1,000 tenants with limits), limits, fair admission and per-tenant
   metrics add to a request, timed alone in this process.

`--compare-src DIR` runs the gateway of another checkout of ftprefix (the code before a change)
beside this one's, on the same servers, over HTTP and gRPC as this one (gRPC only for a checkout
without `--http-url`): every measurement alternates between them for `--rounds` rounds and reports
each one's median, so all rows come from the same minutes.

    .venv/bin/python benchmarks/openai_gateway.py [--requests 128] [--new-tokens 16] [--json out.json]
        [--hidden 64 --layers 2]       # a larger model: the gateway's share of the CPU shrinks
        [--max-queue-delay-us 5000]    # the server's batching window
        [--stream-tokens 8 64]         # the short and long streams
        [--compare-src ../ftprefix-before --rounds 3]
        [--workers 2]                  # also the gateway with 2 worker processes
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

import httpx
import openai
from client import PROMPT, TASKS, build, from_checkout

from ftprefix.client import AsyncClient
from ftprefix.serving.batching import DEFAULT_MAX_QUEUE_DELAY_US
from ftprefix.serving.server import EmbeddedServer, free_port

BASE = "base"
CONCURRENCY = (1, 8, 32)


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
    """User + system CPU time so far of a process and its children (a gateway's workers).

    Read from each thread's scheduler statistics (nanoseconds) where Linux keeps them: the user
    and system times of /proc/PID/stat count in ticks of 10 ms, a tenth of what a run of a hundred
    requests costs. The threads of a gateway live as long as it does."""
    import psutil

    process = psutil.Process(pid)
    total = 0.0
    for each in (process, *process.children(recursive=True)):
        try:
            total += _scheduled_seconds(each.pid)
        except OSError:
            try:
                times = each.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += times.user + times.system
    return total


def _scheduled_seconds(pid: int) -> float:
    """The time every live thread of `pid` spent on a CPU (/proc/PID/task/TID/schedstat)."""
    tasks = Path(f"/proc/{pid}/task")
    nanoseconds = 0
    for task in tasks.iterdir():
        try:
            nanoseconds += int((task / "schedstat").read_text().split()[0])
        except FileNotFoundError:  # a thread that ended meanwhile
            continue
    return nanoseconds / 1e9


def speaks_http(src: Path) -> bool:
    """Whether the gateway of the checkout `src` takes `--http-url`."""
    help_text = subprocess.run(
        [sys.executable, "-m", "ftprefix.cli", "openai", "--help"],
        capture_output=True,
        text=True,
        check=True,
        **from_checkout(src),
    ).stdout
    return "--http-url" in help_text


def start_gateway(
    grpc_url: str, hf_dir: Path, port: int, *extra: str, src: Path | None = None
) -> subprocess.Popen:
    """`ftprefix openai` as a deployment runs it: its own process (from `src` if given). Returns once
    /health answers 200."""
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
    proc = subprocess.Popen(
        [sys.executable, "-m", "ftprefix.cli", *argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        **from_checkout(src),
    )
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


class Gateway:
    """One gateway process under test: its label, its API's URL, its pid."""

    def __init__(self, label: str, url: str, pid: int) -> None:
        self.label, self.url, self.pid = label, url, pid


def _median_of(results: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(r[key] for r in results) for key in results[0]}


async def whole_answers(
    server: EmbeddedServer, gateways: list[Gateway], hf_dir: Path, args: argparse.Namespace
) -> list[dict]:
    """Per concurrency: the client alone and every gateway, in alternating rounds; medians."""
    names = list(TASKS)
    rows = []
    apis = {g.label: openai.AsyncOpenAI(base_url=g.url, api_key="unused", max_retries=0) for g in gateways}
    async with AsyncClient(server.grpc_url, tokenizer=hf_dir) as direct:

        async def via_client(i: int) -> object:
            return await direct.generate(PROMPT, task=names[i % len(names)], max_new_tokens=args.new_tokens)

        def via(api: openai.AsyncOpenAI) -> Callable[[int], Awaitable[object]]:
            async def call(i: int) -> object:
                return await api.completions.create(
                    model=names[i % len(names)], prompt=PROMPT, max_tokens=args.new_tokens, temperature=0
                )

            return call

        await via_client(0)
        for api in apis.values():
            await via(api)(0)  # warm up every path
        for concurrency in CONCURRENCY:
            samples: dict[str, list[dict[str, float]]] = {"client": [], **{g.label: [] for g in gateways}}
            for _ in range(args.rounds):
                samples["client"].append(
                    await measured(via_client, concurrency, args.requests, server.http_url)
                )
                for g in gateways:
                    before = cpu_seconds(g.pid)
                    result = await measured(via(apis[g.label]), concurrency, args.requests, server.http_url)
                    result["gateway_cpu_ms"] = (cpu_seconds(g.pid) - before) / args.requests * 1000
                    samples[g.label].append(result)
            rows.append({"concurrency": concurrency, **{k: _median_of(v) for k, v in samples.items()}})
    for api in apis.values():
        await api.close()
    return rows


async def streams(
    server: EmbeddedServer, gateways: list[Gateway], hf_dir: Path, args: argparse.Namespace
) -> list[dict]:
    """Fixed-length streams, short and long, through the client alone and every gateway, in
    alternating rounds; medians. A gateway's CPU per streamed token is the difference of its CPU
    per stream at the two lengths over the difference of their tokens."""
    names = list(TASKS)
    short, long = args.stream_tokens
    rows = []
    async with (
        AsyncClient(server.grpc_url, tokenizer=hf_dir) as direct,
        httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=64)) as http,
    ):

        def via_client(tokens: int) -> Callable[[int], Awaitable[int]]:
            async def call(i: int) -> int:
                count = 0
                stream = direct.stream(
                    PROMPT, task=names[i % len(names)], max_new_tokens=tokens, min_new_tokens=tokens
                )
                async for chunk in stream:
                    count += len(chunk.token_ids)
                return count

            return call

        def via(url: str, tokens: int, counted: list[int]) -> Callable[[int], Awaitable[int]]:
            async def call(i: int) -> int:
                body = {
                    "model": names[i % len(names)],
                    "prompt": PROMPT,
                    "max_tokens": tokens,
                    "temperature": 0,
                    "stream": True,
                    "stream_options": {"include_usage": True},
                    "ignore_eos": True,
                }
                async with http.stream("POST", url + "/completions", json=body) as response:
                    async for line in response.aiter_lines():
                        if line.startswith("data: {") and '"usage"' in line:
                            counted.append(json.loads(line[6:])["usage"]["completion_tokens"])
                return 0

            return call

        await via_client(short)(0)
        for g in gateways:
            await via(g.url, short, [])(0)
        for concurrency in CONCURRENCY:
            samples: dict[str, list[dict[str, float]]] = {"client": [], **{g.label: [] for g in gateways}}
            for _ in range(args.rounds):
                samples["client"].append(await measure(via_client(long), concurrency, args.requests))
                for g in gateways:
                    cpu, tokens, result = {}, {}, {}
                    for length in (short, long):
                        counted: list[int] = []
                        before = cpu_seconds(g.pid)
                        timing = await measure(via(g.url, length, counted), concurrency, args.requests)
                        cpu[length] = (cpu_seconds(g.pid) - before) / args.requests * 1000
                        tokens[length] = statistics.mean(counted) if counted else float(length)
                        if length == long:
                            result = timing
                    per_token = (cpu[long] - cpu[short]) / max(1e-9, tokens[long] - tokens[short]) * 1000
                    samples[g.label].append(
                        {**result, "cpu_short": cpu[short], "cpu_long": cpu[long], "us_per_token": per_token}
                    )
            rows.append({"concurrency": concurrency, **{k: _median_of(v) for k, v in samples.items()}})
    return rows


def format_whole(rows: list[dict], labels: list[str], args: argparse.Namespace) -> list[str]:
    lines = [
        f"Whole answers: CPU server, random GPT-NeoX (hidden {args.hidden}, {args.layers} layers) with "
        f"{len(TASKS)} prefix tasks, {args.new_tokens} new tokens per request, batching window "
        f"{args.max_queue_delay_us} us, {args.requests} requests per run, median of {args.rounds} rounds",
        "",
        "| in flight | gateway | client req/s | OpenAI API req/s | throughput overhead | client p50 ms "
        "| OpenAI API p50 ms | gateway CPU ms/request | requests per batch: client / OpenAI API |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        c = row["client"]
        for label in labels:
            o = row[label]
            overhead = c["requests_per_s"] / o["requests_per_s"] - 1
            rates = f"{c['requests_per_s']:.0f} | {o['requests_per_s']:.0f} | {overhead:+.1%}"
            latency = f"{c['p50_ms']:.1f} | {o['p50_ms']:.1f} | {o['gateway_cpu_ms']:.2f}"
            batches = f"{c['mean_batch']:.1f} / {o['mean_batch']:.1f}"
            lines.append(f"| {row['concurrency']} | {label} | {rates} | {latency} | {batches} |")
    return lines


def format_streams(rows: list[dict], labels: list[str], args: argparse.Namespace) -> list[str]:
    short, long = args.stream_tokens
    lines = [
        "",
        f"Streams of a fixed length (ignore_eos), {short} and {long} tokens, on a streaming server, "
        f"median of {args.rounds} rounds",
        "",
        "| in flight | gateway | client streams/s | OpenAI API streams/s | throughput overhead "
        f"| gateway CPU ms/stream, {short} tokens | gateway CPU ms/stream, {long} tokens "
        "| gateway CPU per streamed token |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        c = row["client"]
        for label in labels:
            o = row[label]
            overhead = c["requests_per_s"] / o["requests_per_s"] - 1
            rates = f"{c['requests_per_s']:.1f} | {o['requests_per_s']:.1f} | {overhead:+.1%}"
            cpu = f"{o['cpu_short']:.2f} | {o['cpu_long']:.2f} | {o['us_per_token']:.0f} us"
            lines.append(f"| {row['concurrency']} | {label} | {rates} | {cpu} |")
    return lines


TENANTS = 1000


def bookkeeping_us() -> list[str]:
    """What a request adds with 1,000 keys that carry limits: key lookup, limits, admission, metrics,
    timed alone in this process."""
    import timeit

    from ftprefix.gateway.admission import Admission
    from ftprefix.gateway.auth import KeyRing
    from ftprefix.gateway.limits import Limits
    from ftprefix.gateway.metrics import GatewayMetrics

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "keys.json"
        keys = {
            f"tenant-{i}": {
                "tenant": f"t{i}",
                "tasks": [list(TASKS)[i % len(TASKS)]],
                "max_concurrent": 64,
                "requests_per_minute": 10**9,
                "tokens_per_minute": 10**12,
            }
            for i in range(TENANTS)
        }
        path.write_text(json.dumps(keys))
        ring, limits, metrics, admission = KeyRing([], path), Limits(), GatewayMetrics(), Admission(1024)
        header = "Bearer tenant-7"
        policy = ring.policy_of(header)
        assert policy is not None

        def one_request() -> None:
            p = ring.policy_of(header)
            grant = limits.admit(p, 48)
            admission.in_flight += 1  # enter() without waiting, as a request finding a free place
            admission.leave()
            grant.finish(32)
            metrics.waited(p.tenant, 0.0)
            metrics.record("taskA", p.tenant, 200, 0.01, 12, 16)

        n = 20000
        parts = {
            "key lookup (1,000 keys, the keys file checked for changes)": lambda: ring.policy_of(header),
            "limits: concurrency, requests and tokens per minute, admit and finish": lambda: limits.admit(
                policy, 48
            ).finish(32),
            "per-model and per-tenant metrics (7 series)": lambda: (
                metrics.waited(policy.tenant, 0.0),
                metrics.record("taskA", policy.tenant, 200, 0.01, 12, 16),
            ),
            "all of it, one request": one_request,
        }
        lines = [
            "",
            f"Bookkeeping per request with {TENANTS:,} keys carrying limits, timed alone ({n:,} calls each)",
            "",
            "| work | us per request |",
            "|---|---|",
        ]
        for name, fn in parts.items():
            lines.append(f"| {name} | {timeit.timeit(fn, number=n) / n * 1e6:.1f} |")
        return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=128, help="requests per run")
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--stream-tokens", type=int, nargs=2, default=[8, 64], metavar=("SHORT", "LONG"))
    parser.add_argument(
        "--hidden", type=int, default=64, help="hidden size (default 64: the model costs almost nothing)"
    )
    parser.add_argument("--layers", type=int, default=2, help="layers (default 2)")
    parser.add_argument(
        "--max-queue-delay-us",
        type=int,
        default=DEFAULT_MAX_QUEUE_DELAY_US,
        help="the servers' dynamic batching window, as `ftprefix serve --max-queue-delay-us`",
    )
    parser.add_argument("--rounds", type=int, default=1, help="alternating rounds per measurement (medians)")
    parser.add_argument("--compare-src", type=Path, help="also run a gateway from this checkout of ftprefix")
    parser.add_argument("--no-streams", action="store_true", help="skip the streaming part")
    parser.add_argument(
        "--workers", type=int, default=1, help="also run this gateway over HTTP with N workers (N > 1)"
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    sources: list[tuple[str, Path | None]] = [("this", None)]
    if args.compare_src is not None:
        sources.append((args.compare_src.name, args.compare_src))
    labels: dict[str, list[str]] = {}
    figures: dict = {}
    with tempfile.TemporaryDirectory(prefix="ftprefix-bench-") as tmp:
        hf_dir, ft_dir = build(Path(tmp), hidden_size=args.hidden, num_layers=args.layers)
        parts = [(False, "whole")] + ([] if args.no_streams else [(True, "streams")])
        for streaming, part in parts:
            with EmbeddedServer(
                ft_dir, streaming=streaming, max_queue_delay_us=args.max_queue_delay_us, stop_timeout=0
            ) as server:
                # this gateway over Triton's HTTP endpoint (as `serve --openai-port` and the CPU
                # deployments run it: whole answers over infer, streams over generate_stream) and
                # over gRPC only
                runs: list[tuple[str, Path | None, tuple[str, ...]]] = []
                for label, src in sources:
                    if src is None or speaks_http(src):
                        runs.append((f"{label}, HTTP", src, ("--http-url", server.http_url)))
                        runs.append((f"{label}, gRPC", src, ()))
                    else:  # a checkout from before the gateway had --http-url
                        runs.append((label, src, ()))
                    if src is None and args.workers > 1:
                        workers = ("--http-url", server.http_url, "--workers", str(args.workers))
                        runs.append((f"{label}, HTTP, {args.workers} workers", src, workers))
                labels[part] = [label for label, _, _ in runs]
                procs, gateways = [], []
                try:
                    for label, src, extra in runs:
                        port = free_port()
                        procs.append(start_gateway(server.grpc_url, hf_dir, port, *extra, src=src))
                        gateways.append(Gateway(label, f"http://127.0.0.1:{port}/v1", procs[-1].pid))
                    run = whole_answers if part == "whole" else streams
                    figures[part] = asyncio.run(run(server, gateways, hf_dir, args))
                finally:
                    for proc in procs:
                        proc.terminate()
                        proc.wait()
    print("\n".join(format_whole(figures["whole"], labels["whole"], args)))
    if "streams" in figures:
        print("\n".join(format_streams(figures["streams"], labels["streams"], args)))
    print("\n".join(bookkeeping_us()))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
