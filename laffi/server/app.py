"""The annotation web app: FastAPI over the SQLite store, serving one static page (static/index.html).

Every API call carries the annotator's token as `Authorization: Bearer <token>`; an annotator reads and writes only
their own annotations, and only an admin token may export everyone's.

Limits (HTTP 413 / 422): a request body over MAX_BODY_BYTES is refused before it is read in full, feedback over
MAX_FEEDBACK_CHARS characters is refused, `seconds` must be a finite number from 0 to MAX_SECONDS (24 h), and every
refusal carries a one-line `detail` naming the field. Every /api/ answer carries `Cache-Control: no-store`. A save
that names the answer the annotator saw (`predicted`) is refused with 409 when the item's answer has changed since,
and so is a save that names the `version` of the annotation the page loaded (null: none) when the annotation has been
saved since (the same annotator in another tab). A database that cannot be written (a full disk: 507, read-only or
locked: 503) is a JSON `detail` naming it, never a 500.

Routes (all but `/` and `/favicon.ico` need a token): /api/me (who, counts, position, resume), /api/guidelines,
/api/items (the annotator's items with their status), /api/items/{n} (the n-th item of the annotator's queue;
remembers n as their position), /api/next?after=n (the next item still to do), PUT /api/annotations/{id},
/api/history/{id} (the item's other annotations: the annotator's own of earlier answers and content; an admin's,
everyone's); admin only: /api/export, /api/admin/summary (progress and time per item per annotator, agreement),
/api/admin/disagreements (answers judged with different verdicts, every annotation of each) and
PUT /api/admin/adjudications/{id} (the final record of one answer, exported in place of its annotations).

The app serves no /docs, /redoc or /openapi.json: they would describe the API to anyone without a token, and the
page is the only client it needs.

While it runs, the app checkpoints the SQLite WAL into the database file every CHECKPOINT_EVERY_S seconds after a
write, and fully when it shuts down, so the .sqlite file alone holds every annotation once the server has stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import html
import re
import socket
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from laffi.errors import LaffiError
from laffi.files import has_lone_surrogate
from laffi.records import to_dict
from laffi.server.imports import MAX_SECONDS
from laffi.server.store import (
    MAX_NOTE_CHARS,
    AnswerChanged,
    NotAssigned,
    StaleVersion,
    Store,
    StoreUnavailable,
)

STATIC = Path(__file__).resolve().parent / "static"
DEFAULT_GUIDELINES = Path(__file__).resolve().parents[1] / "resources" / "annotation_guidelines.md"
MAX_BODY_BYTES = 64 * 1024  # an annotation is a verdict, a few sentences and a number: far below this
MAX_FEEDBACK_CHARS = 5000
CHECKPOINT_EVERY_S = 2.0
FAVICON = (b'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16"><rect width="16" height="16" rx="3" '
           b'fill="#1f5fbf"/><path d="M4 8.5l2.5 2.5L12 5" stroke="#fff" stroke-width="2" fill="none"/></svg>')


class Annotation(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt field is an error, not silently dropped

    verdict: str = Field(max_length=20)
    feedback: str = Field(max_length=MAX_FEEDBACK_CHARS)
    seconds: float = Field(default=0.0, ge=0.0, le=MAX_SECONDS, allow_inf_nan=False)
    predicted: str | None = None  # the answer the annotator judged, as the page showed it
    status: str = Field(default="annotated", max_length=20)  # annotated, unsure or skipped
    note: str = Field(default="", max_length=MAX_NOTE_CHARS)  # why an item was skipped
    draft_shown: bool = False  # the page prefilled the form from the item's AI draft
    version: float | None = None  # the annotation's version the page loaded (null: none); checked only when sent

    @field_validator("*", mode="before")
    @classmethod
    def utf8_text(cls, value: Any) -> Any:
        """JSON's "\\ud800" escapes a lone surrogate, which no UTF-8 text holds: refused (422) before it reaches a
        comparison, the database or an error message (encoding it would fail there: a 500)."""
        if isinstance(value, str) and has_lone_surrogate(value):
            raise PydanticCustomError("lone_surrogate", "contains a lone surrogate (not UTF-8 text)")
        return value


class Adjudication(BaseModel):
    """An admin's final record of one answer of an item (PUT /api/admin/adjudications/{id})."""

    model_config = ConfigDict(extra="forbid")

    predicted: str  # the answer adjudicated, as the disagreement list gave it
    verdict: str = Field(max_length=20)
    feedback: str = Field(max_length=MAX_FEEDBACK_CHARS)

    utf8_text = field_validator("*", mode="before")(Annotation.utf8_text.__func__)


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


class NoStore:
    """`Cache-Control: no-store` on every /api/ answer, errors included: the browser never answers the page's
    requests from its cache (after Back or Forward it would resume at the item of an old `/api/me`)."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/api/"):
            return await self.app(scope, receive, send)

        async def no_store(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"cache-control"]
                message = {**message, "headers": [*headers, (b"cache-control", b"no-store")]}
            await send(message)

        await self.app(scope, receive, no_store)


def highlight(context: str, gold: list[str], starts: list[int], predicted: str) -> list[dict[str, str]]:
    """The passage cut into segments marked "gold" (the gold answer spans), "pred" (the predicted answer, where it
    occurs as a whole word: "the" is not marked inside "their"), "both" or "" — the page renders them as text, so no
    passage text is ever parsed as HTML."""
    marks = [""] * len(context)
    for text, start in zip(gold, starts, strict=False):
        for i in range(start, min(start + len(text), len(context))):
            marks[i] = "gold"
    pred = predicted.strip()
    if pred:
        # Word boundaries only where the answer itself starts or ends with a word character ("(1066)" still matches).
        pattern = (r"(?<!\w)" if re.match(r"\w", pred) else "") + re.escape(pred) + \
            (r"(?!\w)" if re.match(r"\w", pred[-1]) else "")
        for m in re.finditer(pattern, context, flags=re.IGNORECASE):
            for i in range(m.start(), m.end()):
                marks[i] = "both" if marks[i] in ("gold", "both") else "pred"
    segments: list[dict[str, str]] = []
    for ch, mark in zip(context, marks, strict=True):
        if segments and segments[-1]["mark"] == mark:
            segments[-1]["text"] += ch
        else:
            segments.append({"text": ch, "mark": mark})
    return segments


def unique(texts: list[str]) -> list[str]:
    """The texts without repeats (SQuAD lists the same gold answer once per crowd worker), first occurrence first."""
    seen: set[str] = set()
    out = []
    for t in texts:
        key = " ".join(t.split()).casefold()
        if key not in seen:
            seen.add(key)
            out.append(t)
    return out


_SAFE_URL = re.compile(r"^(https?:|mailto:|#|/(?!/)|[\w.-]+(?:/|$))", re.IGNORECASE)


def render_guidelines(text: str) -> str:
    """Guidelines (markdown) as HTML that cannot run anything: every `<`, `>` and `&` of the text is escaped before
    markdown sees it (raw HTML stays literal text), and a link or image whose address is not http(s), mailto, a
    fragment or a relative path (`javascript:`, `data:`) loses its address. A link to anything but a fragment of the
    guidelines opens in a new tab (rel=noopener): following it never unloads the page and its unsaved work."""
    import markdown

    out = markdown.markdown(html.escape(text, quote=False), extensions=["sane_lists", "tables"])

    def check(m: re.Match) -> str:
        url = html.unescape(m.group(2))
        return m.group(0) if _SAFE_URL.match(url.strip()) else f'{m.group(1)}="#"'

    out = re.sub(r'\b(href|src)="([^"]*)"', check, out)
    return re.sub(r'<a href="(?!#)', '<a target="_blank" rel="noopener noreferrer" href="', out)


def read_guidelines(path: Path | None) -> str:
    """The guidelines file (`--guidelines`, default: the text shipped in laffi/resources/) as text."""
    from laffi.files import read_input_text

    return read_input_text(path or DEFAULT_GUIDELINES, "markdown")


def read_inputs(drafts: Path | None, guidelines: Path | None) -> tuple[list, str]:
    """`annotate-server --drafts --guidelines`: the AI drafts (FeedbackRecord JSONL) and the guidelines text, read
    before anything is written; a bad file is a one-line error naming its flag."""
    from laffi.records import FeedbackRecord, read_jsonl

    records = []
    if drafts is not None:
        try:
            records = read_jsonl(drafts, FeedbackRecord)
        except LaffiError as e:
            raise LaffiError(f"--drafts {e}") from None
    try:
        text = read_guidelines(guidelines)
    except LaffiError as e:
        raise LaffiError(f"--guidelines {e}") from None
    return records, text


def read_queue(path: Path, questions: list, predictions: dict[str, str]) -> list:
    """`annotate-server --queue FILE`: the questions of a selection file that `laffi annotate --select-human N
    --out-queue FILE` wrote ({"order": [question ids], ...}: the items the learned annotator is least sure of first),
    in its order; a bad file is a one-line error naming the flag."""
    import json

    try:
        order = json.loads(Path(path).read_text(encoding="utf-8"))["order"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        reason = "no 'order' list" if isinstance(e, (KeyError, TypeError)) else str(e)
        raise LaffiError(f"--queue {path}: not a selection file of `laffi annotate --out-queue` ({reason})") from None
    if not isinstance(order, list) or not all(isinstance(i, str) for i in order) or len(set(order)) != len(order):
        raise LaffiError(f"--queue {path}: 'order' must be a list of distinct question ids")
    by_id = {q.id: q for q in questions}
    for i in order:
        if i not in by_id or i not in predictions:
            where = "--data" if i not in by_id else "--predictions"
            raise LaffiError(f"--queue {path}: question id '{i}' is not in {where}")
    return [by_id[i] for i in order]


def prepare(db_path: Path, questions: list, predictions: dict[str, str], drafts: list, drafts_path: Path | None,
            overlap: int | None, seed: int, queue: Path | None = None) -> str:  # fmt: skip
    """Before serving: add the items, replace the AI drafts (none without --drafts) and set up assignment. Returns
    what was done, for the server's start-up line. `queue`: a selection file (`read_queue`): only its items are
    served, in its order."""
    if overlap is not None and overlap < 1:
        raise LaffiError(f"--overlap: must be at least 1, got {overlap}")
    if queue is not None:
        questions = read_queue(queue, questions, predictions)
    store = Store(db_path)
    try:
        n = store.add_items(questions, predictions, reorder=queue is not None)
        message = f"{n} items in {db_path}" + (f", in the order of --queue {queue}" if queue is not None else "")
        if store.refreshed["changed"]:
            message += (f"; {store.refreshed['changed']} items have another question, passage or gold answer than "
                        "before: new items (their earlier annotations are kept as history, not exported)")  # fmt: skip
        if store.refreshed["dropped"]:
            message += f"; {store.refreshed['dropped']} items not in these predictions are no longer served"
        counts = store.set_drafts(drafts, f"--drafts {drafts_path}")
        if drafts_path is not None:
            message += (f"; {counts['matching']} AI drafts shown ({counts['other_answer']} for another answer and "
                        f"{counts['unknown']} for other questions are not)")  # fmt: skip
        store.configure_assignment(overlap, seed)
        if overlap is not None:
            message += f"; each item assigned to {overlap} annotators (seed {seed})"
    finally:
        store.close()
    return message


def create_app(db_path: str | Path, checkpoint_every_s: float = CHECKPOINT_EVERY_S,
               guidelines: str | None = None) -> FastAPI:  # fmt: skip
    store = Store(db_path)
    guidelines_html = render_guidelines(guidelines if guidelines is not None else read_guidelines(None))

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

    @app.exception_handler(StoreUnavailable)
    async def store_unavailable(request: Request, exc: StoreUnavailable) -> JSONResponse:
        return JSONResponse(status_code=exc.status, content={"detail": str(exc)})

    @app.exception_handler(sqlite3.OperationalError)
    async def database_error(request: Request, exc: sqlite3.OperationalError) -> JSONResponse:
        # A read that SQLite refused (an I/O error, a lock held by another program): the service is unavailable.
        return JSONResponse(status_code=503, content={"detail": str(store.unavailable(exc))})

    app.add_middleware(BodySizeLimit)
    app.add_middleware(NoStore)  # outermost: it marks the 413 answers of BodySizeLimit too

    # The API's handlers are `async`: each is a few sub-millisecond SQLite statements (WAL, synchronous=NORMAL), so
    # they run on the event loop; as threadpool functions they took ~1.6x the server CPU under load (reliability.md).
    # The export, which can be large, stays a plain function (run in a worker thread).
    async def annotator(authorization: str = Header(default="")) -> dict[str, Any]:
        token = authorization.removeprefix("Bearer ").strip()
        who = store.who(token) if token else None
        if who is None:
            raise HTTPException(status_code=401, detail="unknown token", headers={"WWW-Authenticate": "Bearer"})
        store.ensure_dealt(who["name"])  # an annotator added while the server runs gets their share of items
        return who

    async def admin(who: dict = Depends(annotator)) -> dict[str, Any]:
        if not who["admin"]:
            raise HTTPException(status_code=403, detail="needs an admin token")
        return who

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> Response:
        return Response(FAVICON, media_type="image/svg+xml", headers={"Cache-Control": "max-age=86400"})

    @app.get("/api/me")
    async def me(who: dict = Depends(annotator)) -> dict[str, Any]:
        # resume: where the page opens after a login or reload: the item the annotator was on while it is still to
        # do, else the next one to do after it (wrapping round), else that item.
        position = store.position(who["name"])
        resume = store.next_todo(who["name"], position - 1)
        return {**who, **store.progress(who["name"]), "counts": store.counts(who["name"]), "position": position,
                "resume": position if resume is None else resume}  # fmt: skip

    @app.get("/api/guidelines")
    async def guidelines_page(who: dict = Depends(annotator)) -> dict[str, str]:
        return {"html": guidelines_html}

    @app.get("/api/items")
    async def items(who: dict = Depends(annotator)) -> dict[str, Any]:
        return {"items": store.statuses(who["name"])}

    @app.get("/api/next")
    async def next_todo(after: int = -1, who: dict = Depends(annotator)) -> dict[str, Any]:
        return {"index": store.next_todo(who["name"], after)}

    @app.get("/api/items/{index}")
    async def item(index: int, who: dict = Depends(annotator)) -> dict[str, Any]:
        # Bounds first: SQLite overflows past 2**63.
        it = store.item_at(index, who["name"]) if 0 <= index < store.item_count() else None
        if it is None:
            raise HTTPException(status_code=404, detail="no such item")
        store.set_position(who["name"], index)
        annotation = store.annotation(who["name"], it["id"])
        return {
            "index": index, "id": it["id"], "title": it["title"], "question": it["question"],
            "predicted": it["predicted"], "gold": unique(it["gold"]),
            "segments": highlight(it["context"], it["gold"], it["answer_starts"], it["predicted"]),
            "annotation": annotation,  # a skipped item still offers its draft
            "draft": None if annotation and annotation["status"] != "skipped" else store.draft(it["id"]),
            "progress": store.progress(who["name"]),
        }  # fmt: skip

    # `:path`: an item id may contain '/' (the page sends it percent-encoded, which the router decodes first).
    @app.put("/api/annotations/{item_id:path}")
    async def save(item_id: str, body: Annotation, who: dict = Depends(annotator)) -> dict[str, Any]:
        if store.item(item_id) is None:
            raise HTTPException(status_code=404, detail=f"no such item '{item_id[:100]}'")
        try:
            store.save(who["name"], item_id, body.verdict, body.feedback, body.seconds, body.predicted,
                       status=body.status, note=body.note, draft_shown=body.draft_shown,
                       **({"version": body.version} if "version" in body.model_fields_set else {}))  # fmt: skip
        except (AnswerChanged, StaleVersion) as e:
            raise HTTPException(status_code=409, detail=str(e)) from None
        except NotAssigned as e:
            raise HTTPException(status_code=403, detail=str(e)) from None
        except StoreUnavailable:
            raise
        except LaffiError as e:
            raise HTTPException(status_code=422, detail=str(e)) from None
        return {"saved": item_id, "progress": store.progress(who["name"])}

    @app.get("/api/export", response_class=PlainTextResponse)
    def export(unsure: bool = False, skipped: bool = False, who: dict = Depends(annotator)) -> str:
        """Admin only. Unsure and skipped annotations only when asked (?unsure=true, ?skipped=true)."""
        if not who["admin"]:
            raise HTTPException(status_code=403, detail="export needs an admin token")
        import json

        records = store.export(include_unsure=unsure, include_skipped=skipped)
        return "".join(json.dumps(to_dict(r), ensure_ascii=False) + "\n" for r in records)

    @app.get("/api/admin/summary")
    def summary(who: dict = Depends(admin)) -> dict[str, Any]:
        return store.summary()

    @app.get("/api/history/{item_id:path}")
    async def history(item_id: str, who: dict = Depends(annotator)) -> dict[str, Any]:
        """The item's other annotations: the annotator's own of earlier answers and content; an admin's, everyone's."""
        if store.db.execute("SELECT 1 FROM items WHERE id=?", (item_id,)).fetchone() is None:
            raise HTTPException(status_code=404, detail=f"no such item '{item_id[:100]}'")
        return {"history": store.history(item_id, who["name"], everyone=who["admin"])}

    @app.get("/api/admin/disagreements")
    def disagreements(who: dict = Depends(admin)) -> dict[str, Any]:
        return {"disagreements": store.disagreements()}

    @app.put("/api/admin/adjudications/{item_id:path}")
    async def adjudicate(item_id: str, body: Adjudication, who: dict = Depends(admin)) -> dict[str, Any]:
        if store.db.execute("SELECT 1 FROM items WHERE id=?", (item_id,)).fetchone() is None:
            raise HTTPException(status_code=404, detail=f"no such item '{item_id[:100]}'")
        try:
            store.adjudicate(who["name"], item_id, body.predicted, body.verdict, body.feedback)
        except StoreUnavailable:
            raise
        except LaffiError as e:
            raise HTTPException(status_code=422, detail=str(e)) from None
        return {"adjudicated": item_id, "by": who["name"]}

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


def serve(db_path: Path, sock: socket.socket, guidelines: str | None = None) -> None:
    """Serve the app on a socket from `bind` until interrupted (SIGINT/SIGTERM shut it down cleanly)."""
    import uvicorn

    app = create_app(db_path, guidelines=guidelines)
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])
