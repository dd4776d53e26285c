"""A lean HTTP/1.1 keep-alive client for the load test: h11 (the protocol library under httpx and uvicorn) over plain
asyncio streams, one connection per simulated annotator.

Why not httpx here: the load generator runs on the same cores as the server it measures. httpx's async client spent
~2.9 ms of CPU per request on this 2-core box against the server's ~0.5 ms (bench/annotation_server.py prints both),
so the generator, not the server, set the latency. This client does the same requests for a fraction of the CPU.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import urlsplit

import h11


class Connection:
    """One keep-alive connection; requests on it go one after another, as a browser tab's would."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.authority = f"{self.host}:{self.port}".encode()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.conn = h11.Connection(h11.CLIENT)

    async def __aenter__(self) -> Connection:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        assert self.writer is not None
        self.writer.close()
        await self.writer.wait_closed()

    async def request(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None,
                      ) -> tuple[int, bytes]:  # fmt: skip
        """Send one request (a JSON body if given) and return (status, response body)."""
        assert self.reader is not None and self.writer is not None
        if self.conn.our_state is h11.DONE:
            self.conn.start_next_cycle()
        data = json.dumps(body).encode() if body is not None else b""
        fields = [(b"host", self.authority), (b"content-length", str(len(data)).encode())]
        fields += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
        if body is not None:
            fields.append((b"content-type", b"application/json"))
        out = self.conn.send(h11.Request(method=method, target=path.encode(), headers=fields))
        out += self.conn.send(h11.Data(data=data)) + self.conn.send(h11.EndOfMessage())
        self.writer.write(out)
        status, chunks = 0, []
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                received = await self.reader.read(65536)
                if not received:
                    raise ConnectionError(f"{path}: the server closed the connection")
                self.conn.receive_data(received)
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                return status, b"".join(chunks)
