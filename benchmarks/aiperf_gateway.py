"""NVIDIA's aiperf against the OpenAI-compatible API, with fixed output lengths.

Starts a streaming CPU server (a random GPT-NeoX with 4 prefix tasks) and `ftprefix openai` with a
key (and `--http-url`, as the CPU deployments run it), then runs `aiperf profile` on
/v1/completions, whole answers and streamed, at each concurrency, every request asking for exactly
`--output-tokens` tokens (aiperf's max_tokens, plus `ignore_eos` and `min_tokens` through
--extra-inputs, which the gateway honours), and prints aiperf's own figures side by side. aiperf
is not one of ftprefix's dependencies: install it in a virtual environment of its own (`python3 -m
venv /tmp/aiperf && /tmp/aiperf/bin/pip install aiperf`) and pass its executable.

    .venv/bin/python benchmarks/aiperf_gateway.py --aiperf /tmp/aiperf/bin/aiperf
        [--requests 128] [--output-tokens 32] [--concurrency 1 8 32] [--hidden 64 --layers 2]
        [--transport http|grpc]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

from client import TASKS, build
from openai_gateway import start_gateway

from ftprefix.serving.server import EmbeddedServer, free_port

KEY = "aiperf-key"
# aiperf's JSON export: metric -> the statistic to show
SHOWN = {
    "request_throughput": ("avg", "requests/s"),
    "output_token_throughput": ("avg", "tokens/s"),
    "request_latency": ("p50", "latency p50 ms"),
    "time_to_first_token": ("p50", "TTFT p50 ms"),
    "inter_token_latency": ("p50", "ITL p50 ms"),
    "output_sequence_length": ("avg", "output tokens"),
}


def profile(aiperf: str, url: str, hf_dir: Path, args: argparse.Namespace, concurrency: int, stream: bool,
            out: Path) -> dict[str, float]:  # fmt: skip
    fixed_length = {"ignore_eos": True, "min_tokens": args.output_tokens, "temperature": 0}
    argv = [
        aiperf, "profile", "--model", ",".join(TASKS), "--url", url, "--endpoint-type", "completions",
        "--tokenizer", str(hf_dir), "--api-key", KEY, "--concurrency", str(concurrency),
        "--request-count", str(args.requests), "--warmup-request-count", str(concurrency),
        "--prompt-input-tokens-mean", str(args.input_tokens), "--prompt-input-tokens-stddev", "0",
        "--prompt-output-tokens-mean", str(args.output_tokens), "--prompt-output-tokens-stddev", "0",
        "--extra-inputs", json.dumps(fixed_length),
        "--output-artifact-dir", str(out), "--random-seed", "7", "--use-server-token-count",
        *(["--streaming"] if stream else []),
    ]  # fmt: skip
    run = subprocess.run(argv, capture_output=True, text=True, timeout=1800)
    if run.returncode != 0:
        raise SystemExit(f"aiperf failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}")
    data = json.loads((out / "profile_export_aiperf.json").read_text())
    if "--dump" in __import__("sys").argv:
        print(json.dumps(data, indent=1)[:3000])
    figures = {}
    for metric, (stat, _label) in SHOWN.items():
        record = data.get(metric) or data.get("records", {}).get(metric)
        if isinstance(record, dict) and stat in record:
            figures[metric] = float(record[stat])
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--aiperf", required=True, help="the aiperf executable")
    parser.add_argument("--requests", type=int, default=128)
    parser.add_argument("--input-tokens", type=int, default=32)
    parser.add_argument("--output-tokens", type=int, default=32)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument(
        "--transport",
        choices=("http", "grpc"),
        default="http",
        help="how the gateway reaches Triton: --http-url (default) or gRPC only",
    )
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="ftprefix-aiperf-") as tmp:
        hf_dir, ft_dir = build(Path(tmp), hidden_size=args.hidden, num_layers=args.layers)
        with EmbeddedServer(ft_dir, streaming=True, stop_timeout=0) as server:
            port = free_port()
            # by default as `serve --openai-port` and the CPU deployments run it: to Triton over HTTP
            http = ("--http-url", server.http_url) if args.transport == "http" else ()
            gateway = start_gateway(server.grpc_url, hf_dir, port, "--api-key", KEY, *http)
            try:
                for stream in (False, True):
                    for concurrency in args.concurrency:
                        out = Path(tmp) / f"run-{int(stream)}-{concurrency}"
                        figures = profile(
                            args.aiperf, f"http://127.0.0.1:{port}", hf_dir, args, concurrency, stream, out
                        )
                        rows.append((stream, concurrency, figures))
            finally:
                gateway.terminate()
                gateway.wait()
    print(
        f"aiperf against ftprefix openai: CPU server, random GPT-NeoX (hidden {args.hidden}, {args.layers} "
        f"layers), {len(TASKS)} tasks as models, {args.input_tokens} input and exactly {args.output_tokens} "
        f"output tokens (ignore_eos, min_tokens), {args.requests} requests per run, to Triton over "
        f"{'HTTP' if args.transport == 'http' else 'gRPC'}"
    )
    print()
    labels = [label for _stat, label in SHOWN.values()]
    print("| mode | concurrency | " + " | ".join(labels) + " |")
    print("|---|---|" + "---|" * len(labels))
    for stream, concurrency, figures in rows:
        cells = [f"{figures[m]:.1f}" if m in figures else "-" for m in SHOWN]
        print(f"| {'streamed' if stream else 'whole'} | {concurrency} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
