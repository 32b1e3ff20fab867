"""A real S3-compatible server for tests: moto's server mode on 127.0.0.1, in this process."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
               "AWS_DEFAULT_REGION": "us-east-1"}


@dataclass(frozen=True)
class S3Server:
    endpoint_url: str

    def env(self, *, bucket: str | None = None) -> dict[str, str]:
        """`DISTILL_*` and AWS variables of a process that keeps its state in a fresh bucket."""
        bucket = bucket or f"distill-{uuid.uuid4().hex[:12]}"
        return {"DISTILL_STORAGE_URL": f"s3://{bucket}/store",
                "DISTILL_S3_ENDPOINT_URL": self.endpoint_url, **CREDENTIALS}


@contextmanager
def moto_server() -> Iterator[S3Server]:
    """moto's S3 server (`ThreadedMotoServer`) on a free port, stopped on exit."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no access log per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield S3Server(endpoint_url=f"http://{host}:{port}")
    finally:
        server.stop()
