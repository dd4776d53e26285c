"""The human annotation app: a SQLite store (store.py), a FastAPI app (app.py) and one static page (static/)."""
