"""Client benchmark against the embedded CPU server (a tiny random GPT-NeoX with 4 prefix tasks).

1. Per-request overhead of `Client.generate` (tokenise, validate the task, build tensors, decode)
   over a raw `tritonclient` call sending the same pre-built tensors: median of N sequential calls.
2. Throughput of `AsyncClient.generate` with 1, 8 and 32 requests in flight, and this process's
   CPU per request, over gRPC and over Triton's HTTP endpoint (`http_url`), the two alternating.
3. The bare call under both: the same pre-built tensors sent with grpc.aio's stub and with the
   HTTP transport (`client/http_infer.py`), CPU per call at 1, 8 and 32 in flight.
4. Streams against a streaming server: `AsyncClient.stream` of a fixed length over gRPC and over
   Triton's generate_stream (`client/http_stream.py`), the two alternating, CPU per streamed
   response at 1, 8 and 32 in flight.

    .venv/bin/python benchmarks/client.py [--requests 64] [--new-tokens 16] [--stream-tokens 64]
        [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import tritonclient.grpc as grpcclient

from ftprefix import cli, protocol
from ftprefix.client import AsyncClient, Client, GenerationParams, wire
from ftprefix.client.plan import Plan
from ftprefix.client.wire import infer_inputs
from ftprefix.demo import toy
from ftprefix.serving.server import EmbeddedServer

TASKS = {"taskA": 3, "taskB": 5, "taskC": 1, "taskD": 4}
PROMPT = "One base model serves many tasks"


def from_checkout(src: Path | None, env: dict[str, str] | None = None) -> dict[str, Any]:
    """subprocess keywords that run `python -m ftprefix.cli` from the checkout `src` (None: this
    one, `env` as given). `-m` puts the working directory first on sys.path, ahead of PYTHONPATH:
    started from this repository's root, the process would import this checkout's ftprefix."""
    if src is None:
        return {"env": env}
    return {"env": {**(env or os.environ), "PYTHONPATH": str(src.resolve())}, "cwd": src}


def build(root: Path, hidden_size: int = 64, num_layers: int = 2) -> tuple[Path, Path]:
    """A random GPT-NeoX (tiny by default) converted with the 4 prefix tasks of TASKS."""
    hf_dir, out = root / "hf", root / "ft"
    toy.build_model(hf_dir, hidden_size=hidden_size, num_layers=num_layers)
    argv = ["convert", "--model", str(hf_dir), "--tp", "1", "--dtype", "fp32", "--out", str(out)]
    for seed, (name, length) in enumerate(TASKS.items(), start=1):
        path = root / f"{name}.pt"
        torch.save(toy.random_prefix(length, num_layers, hidden_size, seed=seed), path)
        argv += ["--prefix", f"{name}={path}"]
    if cli.main(argv) != 0:
        raise SystemExit("conversion failed")
    return hf_dir, out


def raw_arrays(client: Client, new_tokens: int) -> dict[str, np.ndarray]:
    """The tensors `Client.generate(PROMPT, task='taskA')` sends, built once from the wire table."""
    assert client.tokenizer is not None
    info = client.model_info()
    row = wire.Row(client.tokenizer.encode(PROMPT), task_id=info.task_id("taskA"))
    params = GenerationParams(max_new_tokens=new_tokens)
    return wire.ft_inputs([row], params, frozenset(t.name for t in protocol.FT_INPUTS), end_id=info.end_id)


def median_ms(fn, n: int) -> float:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def overhead(url: str, hf_dir: Path, n: int, new_tokens: int) -> dict[str, float]:
    with Client(url, tokenizer=hf_dir) as client, grpcclient.InferenceServerClient(url) as raw:
        arrays = raw_arrays(client, new_tokens)
        outputs = [
            grpcclient.InferRequestedOutput(protocol.OUTPUT_IDS),
            grpcclient.InferRequestedOutput(protocol.SEQUENCE_LENGTH),
        ]

        def raw_call() -> None:
            raw.infer(protocol.FT_MODEL, infer_inputs(arrays), outputs=outputs)

        def client_call() -> None:
            client.generate(PROMPT, task="taskA", max_new_tokens=new_tokens)

        expected = client.generate(PROMPT, task="taskA", max_new_tokens=new_tokens).token_ids
        got = raw.infer(protocol.FT_MODEL, infer_inputs(arrays), outputs=outputs)
        start = len(arrays[protocol.INPUT_IDS][0])  # one row, so FT's padded width is its own length
        assert got.as_numpy(protocol.OUTPUT_IDS)[0, 0, start : start + len(expected)].tolist() == expected
        for _ in range(3):  # warm up both paths
            raw_call()
            client_call()
        raw_ms, client_ms = median_ms(raw_call, n), median_ms(client_call, n)
        # the client's own work, without the server: tokenise + plan + tensors + decode
        params, info = GenerationParams(max_new_tokens=new_tokens), client.model_info()
        plan_ms = median_ms(
            lambda: Plan.build([PROMPT], "taskA", params, info, client.tokenizer).requests(), n
        )
    return {
        "raw_ms": raw_ms,
        "client_ms": client_ms,
        "overhead_ms": client_ms - raw_ms,
        "client_side_prepare_ms": plan_ms,
    }


async def throughput(
    url: str, hf_dir: Path, concurrency: int, total: int, new_tokens: int, http_url: str | None = None
) -> dict[str, float]:
    names = list(TASKS)
    async with AsyncClient(url, http_url=http_url, tokenizer=hf_dir) as client:
        await client.generate(PROMPT, task="taskA", max_new_tokens=new_tokens)  # warm up
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(total):
            queue.put_nowait(i)
        tokens = 0

        async def worker() -> None:
            nonlocal tokens
            while not queue.empty():
                i = queue.get_nowait()
                completion = await client.generate(
                    PROMPT, task=names[i % len(names)], max_new_tokens=new_tokens
                )
                tokens += len(completion.token_ids)

        start, cpu = time.perf_counter(), time.process_time()  # the server is another process
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {
        "concurrency": concurrency,
        "transport": "HTTP" if http_url else "gRPC",
        "requests": total,
        "seconds": elapsed,
        "requests_per_s": total / elapsed,
        "tokens_per_s": tokens / elapsed,
        "cpu_ms_per_request": cpu / total * 1000,
    }


async def bare_calls(
    url: str, http_url: str, arrays: dict[str, np.ndarray], concurrency: int, total: int
) -> dict[str, float]:
    """This process's CPU per call for the same request over grpc.aio and over HTTP/1.1."""
    import grpc
    from tritonclient.grpc import service_pb2_grpc

    from ftprefix.client.http_infer import HttpInferPool

    outputs = [protocol.OUTPUT_IDS, protocol.SEQUENCE_LENGTH]
    request = wire.infer_request(protocol.FT_MODEL, arrays, outputs, None)
    channel = grpc.aio.insecure_channel(url, options=wire.CHANNEL_OPTIONS)
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    pool = HttpInferPool(http_url)
    calls = {
        "gRPC": lambda: stub.ModelInfer(request),
        "HTTP": lambda: pool.infer(protocol.FT_MODEL, arrays, outputs, None, 60),
    }
    result = {"concurrency": concurrency}
    try:
        for name, call in calls.items():

            async def worker(count: int, call=call) -> None:
                for _ in range(count):
                    await call()

            await asyncio.gather(*(worker(4) for _ in range(concurrency)))  # warm up, connections open
            cpu = time.process_time()
            each = max(1, total // concurrency)
            await asyncio.gather(*(worker(each) for _ in range(concurrency)))
            result[name] = (time.process_time() - cpu) / (each * concurrency) * 1000
    finally:
        await pool.close()
        await channel.close()
    return result


async def streamed(
    url: str, http_url: str, hf_dir: Path, concurrency: int, total: int, tokens: int, rounds: int = 2
) -> dict[str, float]:
    """This process's CPU per streamed response, streams of exactly `tokens` tokens, over gRPC and
    over HTTP in alternating rounds (medians)."""
    per_response: dict[str, list[float]] = {"gRPC": [], "HTTP": []}
    clients = {
        "gRPC": AsyncClient(url, tokenizer=hf_dir),
        "HTTP": AsyncClient(url, http_url=http_url, tokenizer=hf_dir),
    }
    try:
        for _ in range(rounds):
            for name, client in clients.items():

                async def one(client: AsyncClient = client) -> int:
                    stream = client.stream(PROMPT, task="taskA", max_new_tokens=tokens, min_new_tokens=tokens)
                    return sum([len(chunk.token_ids) async for chunk in stream])

                async def worker(count: int) -> int:
                    return sum([await one() for _ in range(count)])

                await asyncio.gather(*(worker(1) for _ in range(concurrency)))  # warm up
                cpu = time.process_time()
                got = await asyncio.gather(
                    *(worker(max(1, total // concurrency)) for _ in range(concurrency))
                )
                per_response[name].append((time.process_time() - cpu) / sum(got) * 1e6)
    finally:
        for client in clients.values():
            await client.close()
    return {"concurrency": concurrency, **{k: statistics.median(v) for k, v in per_response.items()}}


def format_report(report: dict, new_tokens: int) -> str:
    o = report["overhead"]
    lines = [
        f"CPU server, tiny GPT-NeoX with {len(TASKS)} prefix tasks, {new_tokens} new tokens per request",
        "",
        "| per request (median) | ms |",
        "|---|---|",
        f"| raw tritonclient infer (pre-built tensors) | {o['raw_ms']:.2f} |",
        f"| Client.generate (tokenise, resolve task, decode) | {o['client_ms']:.2f} |",
        f"| overhead of Client.generate | {o['overhead_ms']:+.2f} ({o['overhead_ms'] / o['raw_ms']:+.1%}) |",
        f"| client-side preparation alone | {o['client_side_prepare_ms']:.3f} |",
        "",
        "| AsyncClient, requests in flight | to Triton over | requests/s | tokens/s | vs 1 in flight "
        "| this process's CPU ms/request |",
        "|---|---|---|---|---|---|",
    ]
    base = {
        row["transport"]: row["requests_per_s"] for row in report["throughput"] if row["concurrency"] == 1
    }
    for row in report["throughput"]:
        lines.append(
            f"| {row['concurrency']} | {row['transport']} | {row['requests_per_s']:.0f} "
            f"| {row['tokens_per_s']:.0f} | {row['requests_per_s'] / base[row['transport']]:.1f}x "
            f"| {row['cpu_ms_per_request']:.2f} |"
        )
    lines += [
        "",
        "| bare call (pre-built tensors), in flight | CPU ms per call: grpc.aio | HTTP/1.1 | ratio |",
        "|---|---|---|---|",
    ]
    for row in report["bare"]:
        lines.append(
            f"| {row['concurrency']} | {row['gRPC']:.3f} | {row['HTTP']:.3f} "
            f"| {row['gRPC'] / row['HTTP']:.1f}x |"
        )
    lines += [
        "",
        "| `AsyncClient.stream`, in flight | CPU us per streamed response: gRPC | HTTP (generate_stream) "
        "| ratio |",
        "|---|---|---|---|",
    ]
    for row in report["streams"]:
        lines.append(
            f"| {row['concurrency']} | {row['gRPC']:.0f} | {row['HTTP']:.0f} "
            f"| {row['gRPC'] / row['HTTP']:.1f}x |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=64, help="requests per throughput run")
    parser.add_argument("--overhead-calls", type=int, default=50)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--stream-tokens", type=int, default=64, help="tokens per measured stream")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ftprefix-bench-") as tmp:
        hf_dir, ft_dir = build(Path(tmp))
        with EmbeddedServer(ft_dir, tokenizer_dir=hf_dir, stop_timeout=0) as server:
            report = {"overhead": overhead(server.grpc_url, hf_dir, args.overhead_calls, args.new_tokens)}
            report["throughput"] = [
                asyncio.run(throughput(server.grpc_url, hf_dir, c, args.requests, args.new_tokens, http))
                for c in (1, 8, 32)
                for http in (None, server.http_url)
            ]
            with Client(server.grpc_url, tokenizer=hf_dir) as client:
                arrays = raw_arrays(client, args.new_tokens)
            report["bare"] = [
                asyncio.run(bare_calls(server.grpc_url, server.http_url, arrays, c, args.requests))
                for c in (1, 8, 32)
            ]
        with EmbeddedServer(ft_dir, streaming=True, stop_timeout=0) as server:
            report["streams"] = [
                asyncio.run(
                    streamed(server.grpc_url, server.http_url, hf_dir, c, args.requests, args.stream_tokens)
                )
                for c in (1, 8, 32)
            ]
    print(format_report(report, args.new_tokens))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
