"""Shared fixtures: a tiny random model built from a config (seconds), small SQuAD files, and for the annotation
app's browser tests, chromium and logged-in pages (tests/browser_harness.py; each browser suite's conftest.py has its
`site`).

Nothing here downloads: HF_HUB_OFFLINE is set before transformers is imported. The tiny model borrows the bundled
model's tokenizer (converted once into the laffi cache), so prompts tokenize exactly as in real use.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from browser_harness import chromium, pages  # noqa: E402

from laffi.data import bundled_data_path, load_squad, write_squad  # noqa: E402

POOL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "squad_v2" / "squad_v2_pool.json"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from laffi.models import load_tokenizer

    tokenizer = load_tokenizer("bundled")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=True, initializer_range=0.2,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    model = LlamaForCausalLM(config)
    out = tmp_path_factory.mktemp("tiny-model")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def excerpt_questions():
    return load_squad(bundled_data_path())


@pytest.fixture()
def small_squad(tmp_path: Path, excerpt_questions) -> Path:
    """12 questions from two articles (6 each), as an official-format file."""
    by_title: dict[str, list] = {}
    for q in excerpt_questions:
        by_title.setdefault(q.title, []).append(q)
    picked = [q for title in list(by_title)[:2] for q in by_title[title][:6]]
    path = tmp_path / "small.json"
    write_squad(picked, path)
    return path


@pytest.fixture()
def grid_data(tmp_path: Path, excerpt_questions):
    """`grid_data(per_group=2)`: an official-format file with `per_group` answerable and as many unanswerable
    questions from each article of the excerpt, in the excerpt's order (a small grid's data: one article is held out,
    and every split has both kinds)."""

    def make(per_group: int = 2) -> Path:
        picked: dict = {}
        for q in excerpt_questions:
            picked.setdefault((q.title, q.is_impossible), []).append(q)
        path = tmp_path / f"grid-data-{per_group}.json"
        write_squad(sorted([q for g in picked.values() for q in g[:per_group]], key=excerpt_questions.index), path)
        return path

    return make


@pytest.fixture(scope="module", name="browser")
def browser_fixture():
    """Headless Debian chromium, one per test module."""
    with chromium() as b:
        yield b


@pytest.fixture(name="page_at")
def page_at_fixture(browser, site):
    """page_at(viewport) -> (page, annotator name), logged in to the `site` as a fresh annotator on item 1."""
    with pages(browser, site) as make:
        yield make
