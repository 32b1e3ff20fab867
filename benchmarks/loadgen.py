"""A closed-loop HTTP load generator, run as its own process by `serving.py`.

`concurrency` connections each send one request, wait for its answer, and send the next, until
`requests` requests have been answered; one SST-2 sentence per request, taken in turn from the
texts file. Prints one JSON object: requests, errors, seconds, rps, p50_ms, p99_ms.

    python benchmarks/loadgen.py --url http://127.0.0.1:8000/v1/models/ID/predict \
        --texts texts.json --concurrency 32 --requests 2000 [--key KEY] [--runtime onnx]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) by the nearest-rank method."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


class Connection:
    """One keep-alive HTTP/1.1 connection on asyncio streams: a request written, its response
    read (status line, headers, a Content-Length body). A load generator's client must cost far
    less than the server it measures; httpx's pool under 32 concurrent connections cost more
    than a trivial endpoint (about 400 requests/s of /healthz on 2 cores)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.writer.write(f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\n{head}"
                          f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                          .encode() + body)
        status_line = await self.reader.readuntil(b"\r\n")
        length, close = 0, False
        while (line := await self.reader.readuntil(b"\r\n")) != b"\r\n":
            name, _, value = line.decode("latin-1").partition(":")
            if name.lower() == "content-length":
                length = int(value)
            elif name.lower() == "connection" and value.strip().lower() == "close":
                close = True
        payload = await self.reader.readexactly(length)
        if close:
            self.writer.close()
            self.writer = None
        return int(status_line.split()[1]), payload


async def drive(*, url: str, headers: dict[str, str], texts: list[str], concurrency: int,
                requests: int, extra: dict[str, Any], warmup: int) -> dict[str, Any]:
    target = httpx.URL(url)
    latencies: list[float] = []
    errors: list[str] = []
    counter = iter(range(requests + warmup))
    bodies = [json.dumps({"inputs": [text], **extra}).encode() for text in texts]
    connections = [Connection(target.host, target.port or 80) for _ in range(concurrency)]

    async def one(connection: Connection, index: int) -> None:
        start = time.perf_counter()
        status, payload = await connection.post(target.raw_path.decode(), headers,
                                                bodies[index % len(bodies)])
        elapsed = time.perf_counter() - start
        if index < warmup:
            return
        if status != 200:
            errors.append(f"{status}: {payload[:200]!r}")
        else:
            latencies.append(elapsed)

    async def worker(connection: Connection) -> None:
        for index in counter:
            await one(connection, index)

    # Warm-up requests (first loads, connection set-up) are sent but not counted.
    for _ in range(warmup):
        next(counter)
    await asyncio.gather(*(one(connections[i % concurrency], i) for i in range(min(warmup, concurrency))))
    for i in range(concurrency, warmup):
        await one(connections[0], i)
    start = time.perf_counter()
    await asyncio.gather(*(worker(connection) for connection in connections))
    seconds = time.perf_counter() - start
    for connection in connections:
        if connection.writer is not None:
            connection.writer.close()
    return {
        "requests": len(latencies) + len(errors),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "seconds": round(seconds, 3),
        "rps": round(len(latencies) / seconds, 1),
        "p50_ms": round(percentile(latencies, 50) * 1000, 2),
        "p99_ms": round(percentile(latencies, 99) * 1000, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--texts", type=Path, required=True, help="A JSON list of strings.")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=32)
    parser.add_argument("--key", default=None)
    parser.add_argument("--runtime", default=None)
    args = parser.parse_args()
    headers = {"Authorization": f"Bearer {args.key}"} if args.key else {}
    extra = {"runtime": args.runtime} if args.runtime else {}
    texts = json.loads(args.texts.read_text())
    result = asyncio.run(drive(url=args.url, headers=headers, texts=texts,
                               concurrency=args.concurrency, requests=args.requests,
                               extra=extra, warmup=args.warmup))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
