"""A bounded HTTP/1.1 load generator for loopback, used when `wrk` is not installed.

``python -m benchmarks.loadgen --url http://127.0.0.1:PORT/p --connections 16 --duration 3 -H 'Name: value'``
keeps `connections` keep-alive connections busy (one request in flight each) until `duration` seconds have
passed or `--max-requests` answers have come, then prints one JSON line: requests, non_2xx, errors, seconds,
rps. It refuses any host that is not loopback. It is slower than wrk, so its absolute numbers are lower; the
ratios between cases of one run are what the suite reports.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import sys
import time
from urllib.parse import urlsplit


class _Stats:
    def __init__(self, deadline: float, max_requests: int) -> None:
        self.deadline = deadline
        self.max_requests = max_requests
        self.requests = 0
        self.non_2xx = 0
        self.errors = 0
        self.first_bad: bytes = b""

    def more(self) -> bool:
        return self.requests < self.max_requests and time.monotonic() < self.deadline


class _Connection(asyncio.Protocol):
    """One keep-alive connection: send, read one full response (Content-Length framed), send again."""

    def __init__(self, request: bytes, stats: _Stats, done: asyncio.Future[None]) -> None:
        self.request = request
        self.stats = stats
        self.done = done
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end]
            length = None
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            if length is None:
                self._fail(b"no content-length: " + head[:200])
                return
            total = end + 4 + length
            if len(self.buffer) < total:
                return
            status = head[9:12]
            self.buffer = self.buffer[total:]
            self.stats.requests += 1
            if not status.startswith(b"2"):
                self.stats.non_2xx += 1
                if not self.stats.first_bad:
                    self.stats.first_bad = head[:200]
            if self.stats.more():
                assert self.transport is not None
                self.transport.write(self.request)
            else:
                self._finish()
                return

    def _fail(self, why: bytes) -> None:
        self.stats.errors += 1
        if not self.stats.first_bad:
            self.stats.first_bad = why
        self._finish()

    def _finish(self) -> None:
        if self.transport is not None:
            self.transport.close()
        if not self.done.done():
            self.done.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            if self.stats.more():
                self.stats.errors += 1
            self.done.set_result(None)


async def load(
    url: str, connections: int, duration: float, headers: list[str], max_requests: int = 10_000_000
) -> dict[str, object]:
    parts = urlsplit(url)
    host = parts.hostname or ""
    if host != "localhost" and not ipaddress.ip_address(host).is_loopback:
        raise SystemExit(f"loadgen: only loopback targets, not {host!r}")
    port = parts.port or 80
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", *headers, "", ""]
    request = "\r\n".join(lines).encode("latin-1")
    loop = asyncio.get_running_loop()
    started = time.monotonic()
    stats = _Stats(started + duration, max_requests)
    finished: list[asyncio.Future[None]] = []
    for _ in range(connections):
        done: asyncio.Future[None] = loop.create_future()
        finished.append(done)
        try:
            await loop.create_connection(lambda done=done: _Connection(request, stats, done), host, port)
        except OSError:
            stats.errors += 1
            done.set_result(None)
    # Bounded: whatever happens, give up a few seconds after the deadline.
    await asyncio.wait(finished, timeout=duration + 5)
    seconds = time.monotonic() - started
    return {
        "requests": stats.requests,
        "non_2xx": stats.non_2xx,
        "errors": stats.errors,
        "seconds": round(seconds, 3),
        "rps": round(stats.requests / seconds, 1) if seconds > 0 else 0.0,
        "first_bad": stats.first_bad.decode("latin-1"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--max-requests", type=int, default=10_000_000)
    parser.add_argument("-H", "--header", action="append", default=[])
    args = parser.parse_args(argv)
    if not 0 < args.duration <= 120 or not 0 < args.connections <= 256:
        parser.error("duration must be in (0, 120] seconds and connections in (0, 256]")
    result = asyncio.run(load(args.url, args.connections, args.duration, args.header, args.max_requests))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
