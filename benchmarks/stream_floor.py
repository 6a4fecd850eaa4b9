"""What a streamed token costs the OpenAI-compatible API above the floor of any Python server.

The same streams, side by side in one run against one embedded CPU server (a random GPT-NeoX
with 4 prefix tasks, streaming over Triton's HTTP endpoint):

- the gateway (`ftprefix openai --http-url`, its own process), called with `stream: true`;
- a bare relay in its own process: a raw ASGI app on uvicorn (uvloop and httptools, as the
  gateway runs) that sends the same `generate_stream` request to Triton and, for every event
  Triton sends, writes one constant OpenAI chunk, without reading the event: no parsing, no
  detokenising, no stop words, no JSON, no accounting;
- a text relay, the same app doing the least work a correct stream needs per token, with the
  gateway's own pieces: it reads the event's output_ids and sequence_length (the client's event
  reader), decodes the new tokens' text (the tokenizer, the prompt's share decoded once), holds
  back a character whose bytes have not all come, and writes the text as the gateway's chunk:
  no stop strings or stop words, no finish reason, no checks of FT's layout, no accounting, no
  retries, no layers between reading and writing. Before measuring, its text of a long stream
  is checked against the gateway's.

Each serves streams of two fixed lengths (`ignore_eos` / FT's `min_length`) at 1, 8 and 32 at
once; the CPU per streamed token is the difference of the CPU per stream over the extra tokens
(what a stream costs once cancels). The bare relay's figure is the floor under any Python server:
the wake-up, read and write every token takes in one process on this machine; the text relay's is
the floor under a server that shows the tokens' text.

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
from ftprefix.text import load_tokenizer

CHUNK = (
    b'data: {"id":"cmpl-0","object":"text_completion","created":0,"model":"base",'
    b'"choices":[{"index":0,"text":" x","logprobs":null,"finish_reason":null}]}\n\n'
)


def relay(http_url: str, port: int, prompt_ids: list[int], hf_dir: str) -> None:
    """A relay (run as `--relay`): one Triton connection per stream. Without `hf_dir` (an empty
    string) Triton's events are counted, not read; with it each becomes a chunk of its text."""
    import uvicorn

    from ftprefix import protocol
    from ftprefix.client.http_stream import decode_event, encode_generate
    from ftprefix.client.types import GenerationParams
    from ftprefix.client.wire import Row, ft_inputs
    from ftprefix.gateway.answers import AnswerFormat

    host, triton_port = http_url.rsplit(":", 1)
    declared = frozenset(t.name for t in protocol.FT_INPUTS)
    outputs = [protocol.OUTPUT_IDS, protocol.SEQUENCE_LENGTH]
    continuation = load_tokenizer(hf_dir).continuing(prompt_ids) if hf_dir else None

    def text_chunk(event: bytes, shown: list[str], answer: AnswerFormat) -> bytes:
        """The OpenAI chunk of one `data: {...}` event: the text its tokens add to `shown[0]`
        (nothing where a character's bytes have not all come)."""
        assert continuation is not None
        arrays = decode_event(event[6:], outputs, 1)
        end = int(arrays[protocol.SEQUENCE_LENGTH][0, 0])
        text = continuation.text(arrays[protocol.OUTPUT_IDS][0, 0, len(prompt_ids) : end].tolist())
        text = text.rstrip("\ufffd")
        piece = text[len(shown[0]) :] if text.startswith(shown[0]) else ""
        shown[0] += piece
        return answer.chunk(0, piece, None)

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
        buffer, shown, answer = b"", [""], AnswerFormat("base")  # the text relay's
        while size := int((await reader.readuntil(b"\r\n"))[:-2], 16):  # Triton's chunks
            data = (await reader.readexactly(size + 2))[:-2]
            if continuation is None:
                for _ in range((last + data).count(b"\n\n")):  # an OpenAI chunk per event
                    await send({"type": "http.response.body", "body": CHUNK, "more_body": True})
                last = data[-1:]
                continue
            buffer += data
            while (end := buffer.find(b"\n\n")) >= 0:
                event, buffer = buffer[:end], buffer[end + 2 :]
                body = text_chunk(event, shown, answer)
                await send({"type": "http.response.body", "body": body, "more_body": True})
        await reader.readuntil(b"\r\n")
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})
        writer.close()

    # listening before "ready": a connection made before uvicorn runs waits in the backlog
    sock = socket.create_server(("127.0.0.1", port))
    print("ready", flush=True)
    config = uvicorn.Config(app, log_level="warning", access_log=False)
    uvicorn.Server(config).run(sockets=[sock])


def start_relay(http_url: str, port: int, prompt_ids: list[int], hf_dir: Path | None) -> subprocess.Popen:
    """A relay on `port`: the text relay with `hf_dir`, the bare one without."""
    ids = json.dumps(prompt_ids)
    argv = [sys.executable, __file__, "--relay", http_url, str(port), ids, str(hf_dir or "")]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        raise SystemExit("the relay did not start")
    return proc


def stream_request(tokens: int) -> dict[str, object]:
    """A greedy completion streamed with exactly `tokens` tokens."""
    return {
        "model": "base",
        "prompt": PROMPT,
        "max_tokens": tokens,
        "temperature": 0,
        "stream": True,
        "ignore_eos": True,
    }


def streamed_text(url: str, tokens: int) -> str:
    """The text of one stream of `tokens` tokens, its chunks joined."""
    with httpx.stream("POST", url, json=stream_request(tokens), timeout=120) as answer:
        chunks = [json.loads(line[6:]) for line in answer.iter_lines() if line.startswith("data: {")]
    return "".join(chunk["choices"][0]["text"] for chunk in chunks if chunk["choices"])


async def stream_cpu(url: str, pid: int, tokens: int, streams: int, total: int) -> float:
    """`total` streams of `tokens` tokens, `streams` at once: the server's CPU seconds per stream."""
    body = stream_request(tokens)
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
    parser.add_argument("--relay", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.relay:
        relay(args.relay[0], int(args.relay[1]), json.loads(args.relay[2]), args.relay[3])
        return
    short, long = args.tokens
    if not 0 < short < long:
        parser.error("--tokens SHORT LONG: 0 < SHORT < LONG")

    with tempfile.TemporaryDirectory(prefix="ftprefix-floor-") as tmp:
        hf_dir, ft_dir = build(Path(tmp))
        prompt_ids = load_tokenizer(hf_dir).encode(PROMPT)
        with EmbeddedServer(ft_dir, streaming=True, watch_interval=None, stop_timeout=0) as server:
            servers = {}  # name: the process, its completions URL
            per_token: dict[str, dict[int, list[float]]] = {}
            try:
                for name in ("gateway", "text relay", "bare relay"):
                    port = free_port()
                    if name == "gateway":
                        proc = start_gateway(server.grpc_url, hf_dir, port, "--http-url", server.http_url)
                    else:
                        text = hf_dir if name == "text relay" else None
                        proc = start_relay(server.http_url, port, prompt_ids, text)
                    servers[name] = proc, f"http://127.0.0.1:{port}/v1/completions"
                    per_token[name] = {n: [] for n in args.streams}
                # equal but for a last character still held back: the relay does not read the end
                texts = {
                    name: streamed_text(servers[name][1], long).rstrip("\ufffd")
                    for name in ("gateway", "text relay")
                }
                if texts["text relay"] != texts["gateway"]:
                    raise SystemExit(f"the text relay's text differs from the gateway's: {texts}")
                for round_ in range(args.rounds):
                    names = list(servers)[round_ % 3 :] + list(servers)[: round_ % 3]
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
    print(
        "| streams at once | gateway | text relay | bare relay (the floor) "
        "| gateway above the text relay | gateway above the floor |"
    )
    print("|---|---|---|---|---|---|")
    for n in args.streams:
        gateway, text, floor = (
            statistics.median(per_token[name][n]) * 1e6 for name in ("gateway", "text relay", "bare relay")
        )
        print(
            f"| {n} | {gateway:.0f} us | {text:.0f} us | {floor:.0f} us | {gateway - text:.0f} us "
            f"| {gateway - floor:.0f} us |"
        )


if __name__ == "__main__":
    main()
