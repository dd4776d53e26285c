"""The annotation web app: FastAPI over the SQLite store, serving one static page (static/index.html).

Every API call carries the annotator's token as `Authorization: Bearer <token>`; an annotator reads and writes only
their own annotations, and only an admin token may export everyone's.

Limits (HTTP 413 / 422): a request body over MAX_BODY_BYTES is refused before it is read in full, feedback over
MAX_FEEDBACK_CHARS characters is refused, `seconds` must be a finite number from 0 to MAX_SECONDS (24 h), and every
refusal carries a one-line `detail` naming the field. A save that names the answer the annotator saw (`predicted`) is
refused with 409 when the item's answer has changed since.

The app serves no /docs, /redoc or /openapi.json: they would describe the API to anyone without a token, and the
page is the only client it needs.

While it runs, the app checkpoints the SQLite WAL into the database file every CHECKPOINT_EVERY_S seconds after a
write, and fully when it shuts down, so the .sqlite file alone holds every annotation once the server has stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import re
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field

from laffi.errors import LaffiError
from laffi.records import to_dict
from laffi.server.store import MAX_SECONDS, AnswerChanged, Store

STATIC = Path(__file__).resolve().parent / "static"
MAX_BODY_BYTES = 64 * 1024  # an annotation is a verdict, a few sentences and a number: far below this
MAX_FEEDBACK_CHARS = 5000
CHECKPOINT_EVERY_S = 2.0


class Annotation(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt field is an error, not silently dropped

    verdict: str = Field(max_length=20)
    feedback: str = Field(max_length=MAX_FEEDBACK_CHARS)
    seconds: float = Field(default=0.0, ge=0.0, le=MAX_SECONDS, allow_inf_nan=False)
    predicted: str | None = None  # the answer the annotator judged, as the page showed it


def one_line(exc: RequestValidationError) -> str:
    """FastAPI's validation errors (a list of dicts) as one line: which field (`feedback`, `index`) and what."""
    e = exc.errors()[0]
    if e["type"] == "json_invalid":
        return f"body: not valid JSON ({e.get('ctx', {}).get('error', 'decode error')})"
    loc = [str(part) for part in e["loc"]]
    if len(loc) > 1 and loc[0] in ("body", "path", "query", "header"):
        loc = loc[1:]
    return f"{'.'.join(loc)}: {e['msg']}".replace("\n", " ")


def too_large() -> JSONResponse:
    return JSONResponse(status_code=413, content={"detail": f"request body over {MAX_BODY_BYTES} bytes"})


class BodySizeLimit:
    """Refuses a body over MAX_BODY_BYTES with 413: a declared Content-Length before anything is read, a body sent
    without one (chunked) as soon as the bytes read pass the limit. (FastAPI's own max_body_size answers a declared
    length in plain text, and the page and clients here read a JSON `detail`.)"""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length", b"0")
        if length.isdigit() and int(length) > MAX_BODY_BYTES:
            return await too_large()(scope, receive, send)
        seen = 0

        async def counted() -> dict:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > MAX_BODY_BYTES:  # FastAPI passes an HTTPException raised while reading the body to its handler
                raise HTTPException(status_code=413)
            return message

        await self.app(scope, counted, send)


def highlight(context: str, gold: list[str], starts: list[int], predicted: str) -> list[dict[str, str]]:
    """The passage cut into segments marked "gold" (the gold answer spans), "pred" (the predicted answer, where it
    occurs), "both" or "" — the page renders them as text, so no passage text is ever parsed as HTML."""
    marks = [""] * len(context)
    for text, start in zip(gold, starts, strict=False):
        for i in range(start, min(start + len(text), len(context))):
            marks[i] = "gold"
    if predicted.strip():
        for m in re.finditer(re.escape(predicted.strip()), context, flags=re.IGNORECASE):
            for i in range(m.start(), m.end()):
                marks[i] = "both" if marks[i] in ("gold", "both") else "pred"
    segments: list[dict[str, str]] = []
    for ch, mark in zip(context, marks, strict=True):
        if segments and segments[-1]["mark"] == mark:
            segments[-1]["text"] += ch
        else:
            segments.append({"text": ch, "mark": mark})
    return segments


def create_app(db_path: str | Path, checkpoint_every_s: float = CHECKPOINT_EVERY_S) -> FastAPI:
    store = Store(db_path)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async def checkpoints() -> None:
            while True:
                await asyncio.sleep(checkpoint_every_s)
                store.checkpoint_if_written()

        task = asyncio.create_task(checkpoints())
        try:
            yield
        finally:
            task.cancel()
            store.close()  # a full checkpoint: the .sqlite file alone is then the whole database

    app = FastAPI(title="laffi annotation", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": one_line(exc)})

    @app.exception_handler(413)
    async def body_too_large(request: Request, exc: Exception) -> JSONResponse:
        return too_large()

    app.add_middleware(BodySizeLimit)

    # The API's handlers are `async`: each is a few sub-millisecond SQLite statements (WAL, synchronous=NORMAL), so
    # they run on the event loop; as threadpool functions they took ~1.6x the server CPU under load (reliability.md).
    # The export, which can be large, stays a plain function (run in a worker thread).
    async def annotator(authorization: str = Header(default="")) -> dict[str, Any]:
        token = authorization.removeprefix("Bearer ").strip()
        who = store.who(token) if token else None
        if who is None:
            raise HTTPException(status_code=401, detail="unknown token", headers={"WWW-Authenticate": "Bearer"})
        return who

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/api/me")
    async def me(who: dict = Depends(annotator)) -> dict[str, Any]:
        return {**who, **store.progress(who["name"])}

    @app.get("/api/items/{index}")
    async def item(index: int, who: dict = Depends(annotator)) -> dict[str, Any]:
        it = store.item_at(index) if 0 <= index < store.item_count() else None  # SQLite overflows past 2**63
        if it is None:
            raise HTTPException(status_code=404, detail="no such item")
        return {
            "index": index, "id": it["id"], "title": it["title"], "question": it["question"],
            "predicted": it["predicted"], "gold": it["gold"],
            "segments": highlight(it["context"], it["gold"], it["answer_starts"], it["predicted"]),
            "annotation": store.annotation(who["name"], it["id"]), "progress": store.progress(who["name"]),
        }  # fmt: skip

    # `:path`: an item id may contain '/' (the page sends it percent-encoded, which the router decodes first).
    @app.put("/api/annotations/{item_id:path}")
    async def save(item_id: str, body: Annotation, who: dict = Depends(annotator)) -> dict[str, Any]:
        if store.item(item_id) is None:
            raise HTTPException(status_code=404, detail=f"no such item '{item_id[:100]}'")
        try:
            store.save(who["name"], item_id, body.verdict, body.feedback, body.seconds, body.predicted)
        except AnswerChanged as e:
            raise HTTPException(status_code=409, detail=str(e)) from None
        except LaffiError as e:
            raise HTTPException(status_code=422, detail=str(e)) from None
        return {"saved": item_id, "progress": store.progress(who["name"])}

    @app.get("/api/export", response_class=PlainTextResponse)
    def export(who: dict = Depends(annotator)) -> str:
        if not who["admin"]:
            raise HTTPException(status_code=403, detail="export needs an admin token")
        import json

        return "".join(json.dumps(to_dict(r), ensure_ascii=False) + "\n" for r in store.export())

    app.state.store = store
    return app


def bind(host: str, port: int) -> socket.socket:
    """A socket bound to host:port for `serve`, or a one-line error: binding before serving turns a busy port into
    `--port: ... is already in use` instead of uvicorn's own log line, and nothing is written before it is known."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: a restart need not wait TIME_WAIT
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise LaffiError(f"--port: {host}:{port} is already in use") from None
        raise LaffiError(f"--host: cannot listen on {host}:{port} ({e.strerror or e})") from None
    return sock


def serve(db_path: Path, sock: socket.socket) -> None:
    """Serve the app on a socket from `bind` until interrupted (SIGINT/SIGTERM shut it down cleanly)."""
    import uvicorn

    uvicorn.Server(uvicorn.Config(create_app(db_path), log_level="warning")).run(sockets=[sock])
