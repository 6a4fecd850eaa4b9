"""Client benchmark against the embedded CPU server (a tiny random GPT-NeoX with 4 prefix tasks).

1. Per-request overhead of `Client.generate` (tokenise, validate the task, build tensors, decode)
   over a raw `tritonclient` call sending the same pre-built tensors: median of N sequential calls.
2. Throughput of `AsyncClient.generate` with 1, 8 and 32 requests in flight.

    .venv/bin/python benchmarks/client.py [--requests 64] [--new-tokens 16] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

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
    url: str, hf_dir: Path, concurrency: int, total: int, new_tokens: int
) -> dict[str, float]:
    names = list(TASKS)
    async with AsyncClient(url, tokenizer=hf_dir) as client:
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

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    return {
        "concurrency": concurrency,
        "requests": total,
        "seconds": elapsed,
        "requests_per_s": total / elapsed,
        "tokens_per_s": tokens / elapsed,
    }


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
        "| AsyncClient, requests in flight | requests/s | tokens/s | vs 1 in flight |",
        "|---|---|---|---|",
    ]
    base = report["throughput"][0]["requests_per_s"]
    for row in report["throughput"]:
        lines.append(
            f"| {row['concurrency']} | {row['requests_per_s']:.0f} | {row['tokens_per_s']:.0f} "
            f"| {row['requests_per_s'] / base:.1f}x |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=64, help="requests per throughput run")
    parser.add_argument("--overhead-calls", type=int, default=50)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ftprefix-bench-") as tmp:
        hf_dir, ft_dir = build(Path(tmp))
        with EmbeddedServer(ft_dir, tokenizer_dir=hf_dir, stop_timeout=0) as server:
            report = {"overhead": overhead(server.grpc_url, hf_dir, args.overhead_calls, args.new_tokens)}
            report["throughput"] = [
                asyncio.run(throughput(server.grpc_url, hf_dir, c, args.requests, args.new_tokens))
                for c in (1, 8, 32)
            ]
    print(format_report(report, args.new_tokens))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
