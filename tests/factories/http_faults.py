"""An HTTP proxy in front of a live API that injects the transient faults a client must survive.

Each connection carries one request (the proxy asks the server to close after its answer, so the
client opens a new connection for the next one). The proxy takes the next fault from its plan
for each request; with the plan empty it forwards. Faults:
- `"503"` / `"502"` / `"504"`: answered by the proxy in the contract's error shape, not forwarded;
- `"429:S"`: a 429 with `Retry-After: S`, not forwarded;
- `"drop"`: forwarded, the server's whole answer read, then the client's connection closed with
  nothing sent: the request took effect and its response was lost.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections import deque
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass
class Seen:
    method: str
    path: str
    action: str
    headers: dict[str, str] = field(default_factory=dict)


class FaultProxy:
    def __init__(self, upstream_url: str) -> None:
        parts = urlsplit(upstream_url)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.plan: deque[str] = deque()
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def then(self, *faults: str) -> FaultProxy:
        self.plan.extend(faults)
        return self

    def close(self) -> None:
        self._listener.close()

    def requests(self, method: str, path_prefix: str) -> list[Seen]:
        return [s for s in self.seen if s.method == method and s.path.startswith(path_prefix)]

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            request = _read_request(conn)
            if request is None:
                return
            head, body = request
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
            with self._lock:
                action = self.plan.popleft() if self.plan else "pass"
                self.seen.append(Seen(method, path, action, headers))
            if action == "pass" or action == "drop":
                self._forward(conn, lines, body, deliver=action == "pass")
            else:
                status, _, retry_after = action.partition(":")
                conn.sendall(_canned(int(status), retry_after))

    def _forward(self, conn: socket.socket, lines: list[str], body: bytes, *, deliver: bool) -> None:
        kept = [line for line in lines[1:] if line and not line.lower().startswith("connection:")]
        head = "\r\n".join([lines[0], *kept, "Connection: close", "", ""]).encode("latin-1")
        with socket.create_connection(self.upstream) as upstream:
            upstream.sendall(head + body)
            while chunk := upstream.recv(65536):
                if deliver:
                    conn.sendall(chunk)
        if not deliver:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


def _read_request(conn: socket.socket) -> tuple[bytes, bytes] | None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        body += chunk
    return head, body


def _canned(status: int, retry_after: str) -> bytes:
    reasons = {429: "Too Many Requests", 502: "Bad Gateway", 503: "Service Unavailable",
               504: "Gateway Timeout"}
    codes = {429: "rate_limited", 503: "service_unavailable"}
    body = json.dumps({"error": {"code": codes.get(status, "bad_gateway"),
                                 "message": f"injected {status}", "param": None}}).encode()
    extra = f"Retry-After: {retry_after}\r\n" if retry_after else ""
    return (f"HTTP/1.1 {status} {reasons[status]}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n{extra}Connection: close\r\n\r\n").encode() + body
