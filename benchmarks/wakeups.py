"""What one wake-up of an idle Python server costs on this machine: the floor under every per-request
CPU figure of a server that waits for its clients (the gateway waits for Triton, then for its
client, on every request).

An asyncio (uvloop) echo server in its own process answers 100-byte messages from this process,
one at a time, with a pause of GAP ms between them. The server's CPU time per round trip (its own
CLOCK_PROCESS_CPUTIME_ID, the scheduler's nanosecond runtime, read over the same socket) is what
receiving, echoing and going back to sleep cost it; the longer it sleeps, the colder its caches
when it wakes. Also: what a bare uvicorn server costs idle, per second (its main loop wakes 10
times a second), beside the gateway's server (once a second).

    .venv/bin/python benchmarks/wakeups.py [--gaps 0 2 15 50] [--seconds 4]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import socket
import struct
import time

CPU_QUERY = b"?"


def _echo_server(port_out: multiprocessing.Queue) -> None:
    import uvloop

    class Echo(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            if data == CPU_QUERY:  # this process's CPU time so far, in ns
                self.transport.write(struct.pack("<q", time.clock_gettime_ns(time.CLOCK_PROCESS_CPUTIME_ID)))
            else:
                self.transport.write(data)

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(Echo, "127.0.0.1", 0)
        port_out.put(server.sockets[0].getsockname()[1])
        await asyncio.Event().wait()

    uvloop.install()
    asyncio.run(main())


def _server_cpu_ns(sock: socket.socket) -> int:
    sock.sendall(CPU_QUERY)
    return struct.unpack("<q", sock.recv(8))[0]


def echo_cost(gaps_ms: list[float], seconds: float) -> list[tuple[float, int, float]]:
    """(gap ms, round trips, server CPU us per round trip) for each gap."""
    ports: multiprocessing.Queue = multiprocessing.Queue()
    server = multiprocessing.Process(target=_echo_server, args=(ports,), daemon=True)
    server.start()
    rows = []
    try:
        with socket.create_connection(("127.0.0.1", ports.get(timeout=30))) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            message = b"x" * 100
            for gap in gaps_ms:
                count = max(50, int(seconds / max(gap / 1000, 0.0001)))
                before = _server_cpu_ns(sock)
                for _ in range(count):
                    sock.sendall(message)
                    received = 0
                    while received < len(message):
                        received += len(sock.recv(4096))
                    if gap:
                        time.sleep(gap / 1000)  # the pause being measured
                spent = _server_cpu_ns(sock) - before
                rows.append((gap, count, spent / count / 1000))
    finally:
        server.kill()
    return rows


def uvicorn_idle_ms_per_s(seconds: float, server_class: str) -> float:
    """CPU per second of a uvicorn server (`server_class`: "uvicorn.Server" or the gateway's
    "ftprefix.gateway.run.GatewayServer") with a trivial app and nothing to do, measured in a
    child process so this one's threads do not count."""
    module, _, name = server_class.rpartition(".")
    code = f"""
import asyncio, time, uvicorn
from {module} import {name} as ServerClass
async def app(scope, receive, send):
    while scope["type"] == "lifespan":
        message = await receive()
        await send({{"type": message["type"] + ".complete"}})
        if message["type"] == "lifespan.shutdown":
            return
server = ServerClass(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
async def measure():
    while not server.started:
        await asyncio.sleep(0.05)
    await asyncio.sleep(1)
    start = time.clock_gettime(time.CLOCK_PROCESS_CPUTIME_ID)
    await asyncio.sleep({seconds})
    print((time.clock_gettime(time.CLOCK_PROCESS_CPUTIME_ID) - start) / {seconds} * 1000)
    server.should_exit = True
async def main():
    await asyncio.gather(server.serve(), measure())
asyncio.run(main())
"""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--gaps", type=float, nargs="+", default=[0, 2, 15, 50], help="pauses, ms")
    parser.add_argument("--seconds", type=float, default=4.0, help="about how long each gap is measured")
    args = parser.parse_args()
    print("An asyncio (uvloop) echo server, one 100-byte message at a time, a pause between them")
    print()
    print("| pause between messages | round trips | server CPU per round trip |")
    print("|---|---|---|")
    for gap, count, us in echo_cost(args.gaps, args.seconds):
        print(f"| {gap:g} ms | {count} | {us:.1f} us |")
    print()
    print("A server with nothing to do, a trivial app")
    print()
    print("| server | CPU per second, idle |")
    print("|---|---|")
    for label, server_class in (
        ("uvicorn (its loop looks for a stop 10 times a second)", "uvicorn.Server"),
        (
            "the gateway's (`GatewayServer`: once a second, or when told)",
            "ftprefix.gateway.run.GatewayServer",
        ),
    ):
        print(f"| {label} | {uvicorn_idle_ms_per_s(args.seconds, server_class):.2f} ms |")


if __name__ == "__main__":
    main()
