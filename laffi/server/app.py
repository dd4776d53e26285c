"""The annotation web app: FastAPI over the SQLite store, serving one static page (static/index.html).

Every API call carries the annotator's token as `Authorization: Bearer <token>`; an annotator reads and writes only
their own annotations, and only an admin token may export everyone's.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Header, HTTPException
from fastapi.responses import FileResponse, PlainTextResponse
from pydantic import BaseModel

from laffi.errors import LaffiError
from laffi.records import to_dict
from laffi.server.store import Store

STATIC = Path(__file__).resolve().parent / "static"


class Annotation(BaseModel):
    verdict: str
    feedback: str
    seconds: float = 0.0


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


def create_app(db_path: str | Path) -> FastAPI:
    store = Store(db_path)
    app = FastAPI(title="laffi annotation", docs_url=None, redoc_url=None)

    def annotator(authorization: str = Header(default="")) -> dict[str, Any]:
        token = authorization.removeprefix("Bearer ").strip()
        who = store.who(token) if token else None
        if who is None:
            raise HTTPException(status_code=401, detail="unknown token")
        return who

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/api/me")
    def me(who: dict = Depends(annotator)) -> dict[str, Any]:
        return {**who, **store.progress(who["name"])}

    @app.get("/api/items/{index}")
    def item(index: int, who: dict = Depends(annotator)) -> dict[str, Any]:
        it = store.item_at(index)
        if it is None:
            raise HTTPException(status_code=404, detail="no such item")
        return {
            "index": index, "id": it["id"], "title": it["title"], "question": it["question"],
            "predicted": it["predicted"], "gold": it["gold"],
            "segments": highlight(it["context"], it["gold"], it["answer_starts"], it["predicted"]),
            "annotation": store.annotation(who["name"], it["id"]), "progress": store.progress(who["name"]),
        }  # fmt: skip

    @app.put("/api/annotations/{item_id}")
    def save(item_id: str, body: Annotation, who: dict = Depends(annotator)) -> dict[str, Any]:
        try:
            store.save(who["name"], item_id, body.verdict, body.feedback, body.seconds)
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


def serve(db_path: Path, host: str = "127.0.0.1", port: int = 8000) -> None:
    import uvicorn

    uvicorn.run(create_app(db_path), host=host, port=port, log_level="warning")
