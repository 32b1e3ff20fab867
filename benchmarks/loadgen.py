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


async def drive(*, url: str, headers: dict[str, str], texts: list[str], concurrency: int,
                requests: int, extra: dict[str, Any], warmup: int) -> dict[str, Any]:
    latencies: list[float] = []
    errors: list[str] = []
    counter = iter(range(requests + warmup))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(headers=headers, limits=limits, timeout=120) as client:

        async def one(index: int) -> None:
            body = {"inputs": [texts[index % len(texts)]], **extra}
            start = time.perf_counter()
            response = await client.post(url, json=body)
            elapsed = time.perf_counter() - start
            if index < warmup:
                return
            if response.status_code != 200:
                errors.append(f"{response.status_code}: {response.text[:200]}")
            else:
                latencies.append(elapsed)

        async def worker() -> None:
            for index in counter:
                await one(index)

        # Warm-up requests (first loads, connection set-up) are sent but not counted.
        warm = [one(i) for i in range(warmup)]
        for _ in range(warmup):
            next(counter)
        await asyncio.gather(*warm)
        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - start
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
