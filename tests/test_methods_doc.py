"""docs/methods.md shows, for each method, the sequence the code builds: regenerate it and compare."""

import importlib.util
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"


def load_generator():
    spec = importlib.util.spec_from_file_location("methods_doc", DOCS / "methods_doc.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_methods_doc_is_in_sync_with_the_code(tiny_model_dir):
    from laffi.models import load_tokenizer

    gen = load_generator()
    text = (DOCS / "methods.md").read_text(encoding="utf-8")
    assert gen.render_doc(text, load_tokenizer(str(tiny_model_dir))) == text, (
        "docs/methods.md is out of date: run .venv/bin/python docs/methods_doc.py")
    names = {m.group("name") for m in gen.BLOCK.finditer(text)}
    assert names == set(gen.sequences(load_tokenizer(str(tiny_model_dir))))
    from laffi import methods

    for method in methods.names(trained=True):  # every trained method has its section
        assert f"\n## {method} — " in text
