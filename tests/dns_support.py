"""A DNS server for one name, over UDP on 127.0.0.1, whose answer a test changes: Kubernetes'
headless Service of the Triton pods as gRPC's own resolver (c-ares) sees it when replicas come and
go. A gRPC target names it as its resolver's server: `dns://127.0.0.1:PORT/NAME:8001`.

The messages are RFC 1035's: a query's header and question are echoed, with one A record (TTL 0)
per address for the name, and no records for any other name or type (gRPC also asks for AAAA and
for a service config in TXT)."""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_A, _IN = 1, 1
_RESPONSE = 0x8180  # QR (an answer), RD and RA
_NAME_ERROR = 0x8183  # the same, RCODE 3: no such name


class NameServer:
    def __init__(self, name: str, addresses: list[str]) -> None:
        self.name = name.lower().rstrip(".")
        self.addresses = list(addresses)  # what the name resolves to now; a test replaces it
        self.questions = 0  # A queries for the name answered so far
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("127.0.0.1", 0))
        self.port = int(self._sock.getsockname()[1])
        self._thread = threading.Thread(target=self._serve, name="dns", daemon=True)
        self._stopping = False

    def target(self, port: int) -> str:
        """A gRPC target for the name on `port`, resolved by this server."""
        return f"dns://127.0.0.1:{self.port}/{self.name}:{port}"

    def _serve(self) -> None:
        while True:
            query, peer = self._sock.recvfrom(512)
            if self._stopping:
                return
            reply = self._answer(query)
            if reply is not None:
                self._sock.sendto(reply, peer)

    def _answer(self, query: bytes) -> bytes | None:
        if len(query) < 12:
            return None
        ident, _flags, questions = struct.unpack("!HHH", query[:6])
        if questions != 1:
            return None
        labels, at = [], 12
        while at < len(query) and query[at]:
            length = query[at]
            labels.append(query[at + 1 : at + 1 + length].decode("ascii", "replace"))
            at += 1 + length
        question_end = at + 5  # the root label, then QTYPE and QCLASS
        if question_end > len(query):
            return None
        qtype, qclass = struct.unpack("!HH", query[at + 1 : question_end])
        name = ".".join(labels).lower()
        question = query[12:question_end]
        if name != self.name:
            return struct.pack("!HHHHHH", ident, _NAME_ERROR, 1, 0, 0, 0) + question
        records = b""
        if qtype == _A and qclass == _IN:
            self.questions += 1
            for address in self.addresses:
                # the name as a pointer to the question's (offset 12), type A, class IN, TTL 0
                records += struct.pack("!HHHIH", 0xC00C, _A, _IN, 0, 4) + socket.inet_aton(address)
        count = len(records) // 16
        return struct.pack("!HHHHHH", ident, _RESPONSE, 1, count, 0, 0) + question + records


@contextmanager
def name_server(name: str, addresses: list[str]) -> Iterator[NameServer]:
    server = NameServer(name, addresses)
    server._thread.start()
    try:
        yield server
    finally:
        server._stopping = True
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as waker:  # what its recvfrom waits for
            waker.sendto(b"", ("127.0.0.1", server.port))
        server._thread.join(timeout=5)
        server._sock.close()
