"""The human annotation app: a SQLite store (store.py), a FastAPI app (app.py) and one static page (static/);
feedback_text.py holds the rules of a feedback's text, imports.py reads and checks import files."""
