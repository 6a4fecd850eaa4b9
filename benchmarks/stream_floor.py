"""What a streamed token costs the OpenAI-compatible API above the floor of any Python server.

The same streams, side by side in one run against one embedded CPU server (a random GPT-NeoX
with 4 prefix tasks, streaming over Triton's HTTP endpoint):

- the gateway (`ftprefix openai --http-url`, its own process), called with `stream: true`;
- a bare relay in its own process: a raw ASGI app on uvicorn (uvloop and httptools, as the
  gateway runs) that sends the same `generate_stream` request to Triton and, for every chunk
  Triton sends, writes one constant OpenAI chunk, without reading the chunk: no parsing, no
  detokenising, no stop words, no JSON, no accounting.

Each serves streams of two fixed lengths (`ignore_eos` / FT's `min_length`) at 1, 8 and 32 at
once; the CPU per streamed token is the difference of the CPU per stream over the extra tokens
(what a stream costs once cancels). The relay's figure is the floor under the gateway's: the
wake-up, read and write every token takes in one Python process on this machine.

    .venv/bin/python benchmarks/stream_floor.py [--streams 1 8 32] [--requests 48]
        [--tokens 8 64] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
from client import PROMPT, build
from openai_gateway import cpu_seconds, measure, start_gateway

from ftprefix.serving.server import EmbeddedServer, free_port

CHUNK = (
    b'data: {"id":"cmpl-0","object":"text_completion","created":0,"model":"base",'
    b'"choices":[{"index":0,"text":" x","logprobs":null,"finish_reason":null}]}\n\n'
)


def relay(http_url: str, port: int, prompt_ids: list[int]) -> None:
    """The bare relay (run as `--relay`): one Triton connection per stream, chunks counted, not read."""
    import uvicorn

    from ftprefix import protocol
    from ftprefix.client.http_stream import encode_generate
    from ftprefix.client.types import GenerationParams
    from ftprefix.client.wire import Row, ft_inputs

    host, triton_port = http_url.rsplit(":", 1)
    declared = frozenset(t.name for t in protocol.FT_INPUTS)

    def request(tokens: int) -> bytes:
        params = GenerationParams(max_new_tokens=tokens, min_new_tokens=tokens)
        arrays = ft_inputs([Row(prompt_ids)], params, declared)
        return encode_generate(http_url, "fastertransformer", arrays, None)

    async def app(scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        reader, writer = await asyncio.open_connection(host, int(triton_port))
        writer.write(request(json.loads(body)["max_tokens"]))
        await reader.readuntil(b"\r\n\r\n")
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )
        last = b""  # the end of the chunk before: an event's blank line may span two chunks
        while size := int((await reader.readuntil(b"\r\n"))[:-2], 16):  # Triton's chunks
            data = (await reader.readexactly(size + 2))[:-2]
            for _ in range((last + data).count(b"\n\n")):  # an OpenAI chunk per event
                await send({"type": "http.response.body", "body": CHUNK, "more_body": True})
            last = data[-1:]
        await reader.readuntil(b"\r\n")
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})
        writer.close()

    # listening before "ready": a connection made before uvicorn runs waits in the backlog
    sock = socket.create_server(("127.0.0.1", port))
    print("ready", flush=True)
    config = uvicorn.Config(app, log_level="warning", access_log=False)
    uvicorn.Server(config).run(sockets=[sock])


def start_relay(http_url: str, port: int, prompt_ids: list[int]) -> subprocess.Popen:
    argv = [sys.executable, __file__, "--relay", http_url, str(port), json.dumps(prompt_ids)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        raise SystemExit("the relay did not start")
    return proc


async def stream_cpu(url: str, pid: int, tokens: int, streams: int, total: int) -> float:
    """`total` streams of `tokens` tokens, `streams` at once: the server's CPU seconds per stream."""
    body = {"model": "base", "prompt": PROMPT, "max_tokens": tokens, "temperature": 0}
    body.update(stream=True, ignore_eos=True)
    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=streams)) as http:

        async def one(_: int) -> None:
            async with http.stream("POST", url, json=body) as answer:
                if answer.status_code != 200:
                    raise SystemExit(f"{url} answered {answer.status_code}: {await answer.aread()!r}")
                lines = [line async for line in answer.aiter_lines() if line]
            if lines[-1] != "data: [DONE]":
                raise SystemExit(f"{url}: a stream that did not end with [DONE]: {lines[-3:]}")

        await one(0)  # warm up the path
        before = cpu_seconds(pid)
        await measure(one, streams, total)
        return (cpu_seconds(pid) - before) / total


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 8, 32], help="streams at once")
    parser.add_argument("--requests", type=int, default=48, help="streams per measurement")
    parser.add_argument("--tokens", type=int, nargs=2, default=[8, 64], metavar=("SHORT", "LONG"))
    parser.add_argument("--rounds", type=int, default=3, help="figures are the median of the rounds")
    parser.add_argument("--relay", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.relay:
        relay(args.relay[0], int(args.relay[1]), json.loads(args.relay[2]))
        return
    short, long = args.tokens
    if not 0 < short < long:
        parser.error("--tokens SHORT LONG: 0 < SHORT < LONG")
    from ftprefix.text import load_tokenizer

    with tempfile.TemporaryDirectory(prefix="ftprefix-floor-") as tmp:
        hf_dir, ft_dir = build(Path(tmp))
        prompt_ids = load_tokenizer(hf_dir).encode(PROMPT)
        with EmbeddedServer(ft_dir, streaming=True, watch_interval=None, stop_timeout=0) as server:
            gateway_port, relay_port = free_port(), free_port()
            servers = {  # name: the process, its completions URL
                "gateway": (
                    start_gateway(server.grpc_url, hf_dir, gateway_port, "--http-url", server.http_url),
                    f"http://127.0.0.1:{gateway_port}/v1/completions",
                ),
                "bare relay": (
                    start_relay(server.http_url, relay_port, prompt_ids),
                    f"http://127.0.0.1:{relay_port}/v1/completions",
                ),
            }
            per_token: dict[str, dict[int, list[float]]] = {
                name: {n: [] for n in args.streams} for name in servers
            }
            try:
                for round_ in range(args.rounds):
                    names = list(servers)[round_ % 2 :] + list(servers)[: round_ % 2]
                    for n in args.streams:
                        for name in names:
                            proc, url = servers[name]
                            cpu = {
                                t: asyncio.run(stream_cpu(url, proc.pid, t, n, args.requests))
                                for t in (short, long)
                            }
                            per_token[name][n].append((cpu[long] - cpu[short]) / (long - short))
            finally:
                for proc, _ in servers.values():
                    proc.terminate()
                    proc.wait()
    print(
        f"CPU per streamed token (streams of {short} and {long} tokens, {args.requests} per measurement, "
        f"median of {args.rounds} rounds)\n"
    )
    print("| streams at once | gateway | bare relay (the floor) | gateway above the floor |")
    print("|---|---|---|---|")
    for n in args.streams:
        gateway = statistics.median(per_token["gateway"][n]) * 1e6
        floor = statistics.median(per_token["bare relay"][n]) * 1e6
        print(f"| {n} | {gateway:.0f} us | {floor:.0f} us | {gateway - floor:.0f} us |")


if __name__ == "__main__":
    main()
