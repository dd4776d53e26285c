"""SQuAD 2.0 data: load and validate the official JSON format, write it back, split by article, sample.

Stdlib only (no torch/transformers), so validating or splitting data stays fast and works without a GPU stack.
Every bad input raises `LaffiError` with one line naming the file and the JSON path of the offending field.
"""

from __future__ import annotations

import json
import random
from importlib.resources import files
from pathlib import Path
from typing import Any

from laffi.errors import LaffiError
from laffi.files import printable, read_json, write_json
from laffi.records import Question

SQUAD_VERSION = "v2.0"
BUNDLED_NAME = "squad_v2_excerpt.json"


# ---------------------------------------------------------------------------------------------- loading


def load_squad(path: str | Path, strict: bool = True) -> list[Question]:
    """Load and validate a SQuAD 2.0 file (official format). Unknown keys such as `plausible_answers` are ignored.

    `strict=False` (used for scoring) checks structure and types only, like the official evaluation script reads a
    file: answer offsets and the `is_impossible` flag are not cross-checked against the answers and the context.

    Data in Hugging Face's `squad_v2` schema (columns id, title, context, question, answers {text, answer_start})
    is read too (`is_dataset_spec`): `hf:ID[:SPLIT]` (datasets.load_dataset; HF_HUB_OFFLINE=1 reads the local
    cache only), a directory of parquet files, or a `save_to_disk` directory. Its rows go through the same checks.
    """
    if is_dataset_spec(path):
        doc = _dataset_doc(str(path))
    else:
        doc = read_json(path, "SQuAD 2.0 JSON")  # one-line errors for unreadable, non-UTF-8, non-JSON, too deep files
    path = printable(path)  # messages below name the file; escaped so a newline in its name keeps them one line
    if not isinstance(doc, dict):
        raise LaffiError(f"{path}: expected a JSON object at the top level, got {_kind(doc)}")
    # A missing version is tolerated (hand-made files); a different one means another format (e.g. SQuAD 1.1).
    if "version" in doc and doc["version"] != SQUAD_VERSION:
        raise LaffiError(f'{path}: version: expected "{SQUAD_VERSION}", got {_short(doc["version"])}')
    articles_ = _field(doc, "data", list, path, "")
    questions: list[Question] = []
    seen: dict[str, str] = {}  # question id -> JSON path where it first appeared, to name both places on a clash
    for a, article in enumerate(articles_):
        questions.extend(_load_article(article, path, f"data[{a}]", seen, strict))
    if not questions:
        # An empty dataset would only fail later, and more obscurely, in training or evaluation.
        raise LaffiError(f"{path}: data: contains no questions")
    return questions


def _load_article(article: Any, path: str, where: str, seen: dict[str, str], strict: bool) -> list[Question]:
    _expect(article, dict, path, where)
    title = _field(article, "title", str, path, where) if "title" in article else ""
    out = []
    for p, para in enumerate(_field(article, "paragraphs", list, path, where)):
        pwhere = f"{where}.paragraphs[{p}]"
        _expect(para, dict, path, pwhere)
        context = _nonempty(para, "context", path, pwhere)
        for q, qa in enumerate(_field(para, "qas", list, path, pwhere)):
            out.append(_load_question(qa, title, context, path, f"{pwhere}.qas[{q}]", seen, strict))
    return out


def _load_question(
    qa: Any, title: str, context: str, path: str, where: str, seen: dict[str, str], strict: bool
) -> Question:
    _expect(qa, dict, path, where)
    qid = _nonempty(qa, "id", path, where)
    if qid in seen:
        raise LaffiError(f"{path}: {where}.id: duplicate id {_short(qid)} (first at {seen[qid]}.id)")
    seen[qid] = where
    question = _nonempty(qa, "question", path, where)
    answers = _field(qa, "answers", list, path, where)
    texts, starts = [], []
    for i, ans in enumerate(answers):
        text, start = _load_answer(ans, context, path, f"{where}.answers[{i}]", strict)
        texts.append(text)
        starts.append(start)
    # Older or hand-made files may omit the flag; "no answers" is then the only sensible reading.
    impossible = _field(qa, "is_impossible", bool, path, where) if "is_impossible" in qa else not answers
    if not strict:
        return Question(qid, title, context, question, texts, starts, impossible)
    if impossible and answers:
        # Question's invariant is "answers empty when impossible"; official files keep those in plausible_answers.
        raise LaffiError(f"{path}: {where}.answers: is_impossible is true but answers is not empty")
    if not impossible and not answers:
        raise LaffiError(f"{path}: {where}.answers: empty, but is_impossible is false")
    return Question(qid, title, context, question, texts, starts, impossible)


def _load_answer(ans: Any, context: str, path: str, where: str, strict: bool = True) -> tuple[str, int]:
    _expect(ans, dict, path, where)
    if not strict:  # the official script reads only the text, and scores empty-after-normalisation answers as ""
        return _field(ans, "text", str, path, where), ans.get("answer_start", -1)
    text = _nonempty(ans, "text", path, where)
    start = _field(ans, "answer_start", int, path, where)
    if start < 0 or start + len(text) > len(context):
        raise LaffiError(
            f"{path}: {where}.answer_start: {start} puts the answer outside the context ({len(context)} chars)"
        )
    # The pool's answers all match their span exactly, so a mismatch means a corrupted or mis-edited file.
    if context[start : start + len(text)] != text:
        found = _short(context[start : start + len(text)])
        raise LaffiError(f"{path}: {where}.text: {_short(text)} does not match the context at {start} ({found})")
    return text, start


# ---------------------------------------------------------------------------------------------- datasets


def is_dataset_spec(spec: str | Path) -> bool:
    """`hf:ID[:SPLIT]`, or a directory (of parquet files, or written by `datasets`' save_to_disk)."""
    return str(spec).startswith("hf:") or Path(spec).is_dir()


def _dataset_doc(spec: str) -> dict[str, Any]:
    """Rows of a dataset in the squad_v2 schema as an official-format document (articles and paragraphs are runs of
    rows with the same title and context, as `write_squad` groups them)."""
    rows = _dataset_rows(spec)
    name = printable(spec)
    data: list[dict[str, Any]] = []
    for n, row in enumerate(rows):
        where = f"{name}: row {n}"
        if not isinstance(row, dict):
            raise LaffiError(f"{where}: expected a record, got {_kind(row)}")
        missing = [k for k in ("id", "context", "question", "answers") if k not in row]
        if missing:
            raise LaffiError(f"{where}: no column '{missing[0]}' (the squad_v2 schema: id, title, context, question, "
                             "answers)")  # fmt: skip
        answers = row["answers"]
        if not isinstance(answers, dict) or not isinstance(answers.get("text"), list) or not isinstance(
                answers.get("answer_start"), list) or len(answers["text"]) != len(answers["answer_start"]):  # fmt: skip
            raise LaffiError(f"{where}: answers: expected {{text: [...], answer_start: [...]}} of equal lengths")
        title = row.get("title") or ""
        if not data or data[-1]["title"] != title:
            data.append({"title": title, "paragraphs": []})
        paras = data[-1]["paragraphs"]
        if not paras or paras[-1]["context"] != row["context"]:
            paras.append({"context": row["context"], "qas": []})
        pairs = zip(answers["text"], answers["answer_start"], strict=True)
        answer_list = [{"text": t, "answer_start": a} for t, a in pairs]
        paras[-1]["qas"].append({"id": row["id"], "question": row["question"], "answers": answer_list})
    return {"version": SQUAD_VERSION, "data": data}


def _dataset_rows(spec: str) -> list[Any]:
    """The rows of `hf:ID[:SPLIT]`, a parquet directory or a save_to_disk directory (datasets imported here only)."""
    if spec.startswith("hf:"):
        ident, _, split = spec[3:].partition(":")
        if not ident:
            raise LaffiError(f"{printable(spec)}: expected hf:ID or hf:ID:SPLIT")
        return _hub_rows(spec, ident, split or None)
    directory = Path(spec)
    parquet = sorted(directory.rglob("*.parquet"))
    if parquet:
        import pyarrow.parquet as pq

        rows: list[Any] = []
        for f in parquet:
            try:
                rows += pq.read_table(f).to_pylist()
            except Exception as e:  # pyarrow raises several types for a bad file
                raise LaffiError(f"{printable(f)}: not a readable parquet file ({_first_line(e)})") from None
        return rows
    if not any((directory / n).exists() for n in ("dataset_info.json", "state.json", "dataset_dict.json")):
        raise LaffiError(f"{printable(spec)}: a directory without parquet files or a saved dataset (save_to_disk)")
    import datasets

    try:
        ds = datasets.load_from_disk(str(directory))
    except Exception as e:  # datasets raises many types for a broken directory
        raise LaffiError(f"{printable(spec)}: cannot load the saved dataset ({_first_line(e)})") from None
    return list(_one_split(ds, spec))


def _hub_rows(spec: str, ident: str, split: str | None) -> list[Any]:
    import datasets

    try:
        ds = datasets.load_dataset(ident, split=split)
    except Exception as e:  # offline without a cached copy, unknown id or split, ...
        raise LaffiError(f"{printable(spec)}: cannot load the dataset ({_first_line(e)})") from None
    return list(_one_split(ds, spec))


def _one_split(ds: Any, spec: str) -> Any:
    """A Dataset as is; a DatasetDict only when it has one split (else name one)."""
    import datasets

    if isinstance(ds, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        splits = list(ds.keys())
        if len(splits) != 1:
            raise LaffiError(f"{printable(spec)}: has the splits {', '.join(splits)}: name one (hf:ID:SPLIT, or the "
                             "split's own directory)")  # fmt: skip
        return ds[splits[0]]
    return ds


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return printable(f"{type(e).__name__}: {text[0]}" if text else type(e).__name__)[:300]


def questions_hash(questions: list[Question]) -> str:
    """sha256 of the questions' content (for cache keys of data that is not one file)."""
    import dataclasses
    import hashlib

    text = json.dumps([dataclasses.asdict(q) for q in questions], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


# ---------------------------------------------------------------------------------------------- field checks


_KINDS = {dict: "an object", list: "a list", str: "a string", int: "an integer", bool: "true or false"}


def _kind(value: Any) -> str:
    names = {dict: "object", list: "list", str: "string", bool: "boolean", int: "integer", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _short(value: Any, limit: int = 40) -> str:
    """A value as JSON (one line: newlines, and U+2028 & co. via `printable`, come out escaped), truncated."""
    text = printable(json.dumps(value, ensure_ascii=False))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _expect(value: Any, typ: type, path: str, where: str) -> None:
    # bool is a subclass of int in Python, but `true` is never a valid answer_start.
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        label = f"{where}: " if where else ""
        raise LaffiError(f"{path}: {label}expected {_KINDS[typ]}, got {_kind(value)}")


def _field(obj: dict, key: str, typ: type, path: str, where: str) -> Any:
    name = f"{where}.{key}" if where else key
    if key not in obj:
        raise LaffiError(f"{path}: {name}: missing")
    _expect(obj[key], typ, path, name)
    return obj[key]


def _nonempty(obj: dict, key: str, path: str, where: str) -> str:
    value = _field(obj, key, str, path, where)
    if not value.strip():
        raise LaffiError(f"{path}: {where}.{key}: empty")
    return value


# ---------------------------------------------------------------------------------------------- writing


def write_squad(questions: list[Question], path: str | Path) -> None:
    """Write questions in the official format, atomically.

    Consecutive questions sharing a title form one article, and consecutive ones sharing a context one paragraph.
    Grouping runs (rather than all questions of a title) keeps the order exactly, so load(write(x)) == x always.
    """
    data: list[dict[str, Any]] = []
    for q in questions:
        if not data or data[-1]["title"] != q.title:
            data.append({"title": q.title, "paragraphs": []})
        paras = data[-1]["paragraphs"]
        if not paras or paras[-1]["context"] != q.context:
            paras.append({"context": q.context, "qas": []})
        paras[-1]["qas"].append(_question_dict(q))
    write_json(path, {"version": SQUAD_VERSION, "data": data})


def _question_dict(q: Question) -> dict[str, Any]:
    answers = [{"text": t, "answer_start": s} for t, s in zip(q.answers, q.answer_starts, strict=True)]
    return {"id": q.id, "question": q.question, "answers": answers, "is_impossible": q.is_impossible}


# ---------------------------------------------------------------------------------------------- splitting


def articles(questions: list[Question]) -> list[str]:
    """Article titles in first-seen order."""
    return list(dict.fromkeys(q.title for q in questions))


def split_by_article(questions: list[Question], eval_articles: int, seed: int) -> tuple[list[Question], list[Question]]:
    """(train, eval): `eval_articles` whole articles drawn with `seed` go to eval, the rest to train.

    Paragraphs of one article share facts, so splitting by question would leak evaluation answers into training.
    """
    titles = articles(questions)
    if eval_articles < 0:
        raise LaffiError(f"eval_articles must be >= 0, got {eval_articles}")
    if len(titles) < eval_articles + 1:
        raise LaffiError(
            f"cannot hold out {eval_articles} article(s): the data has {len(titles)}, and training needs at least one"
        )
    held = set(random.Random(seed).sample(titles, eval_articles))
    train = [q for q in questions if q.title not in held]
    evaluation = [q for q in questions if q.title in held]
    return train, evaluation


SAMPLE_BY = ("question", "passage")  # `data.sample_by`


def sample_training(questions: list[Question], n: int, seed: int, by: str = "question") -> list[Question]:
    """`n` training questions in one seeded order (`data.sample_by`): a run's training sizes take prefixes of the
    sample of the largest, so they are nested.

    'question': drawn one by one, `random.Random(seed).sample(questions, n)` in the order drawn (a sample of another
    `n` is not a prefix of it: draw the largest once). 'passage': whole passages (the questions with the same
    context, the group that shared-prefix training packs) in a seeded order, each passage's questions in a seeded
    order, until `n` are taken: the last passage is cut to fit, and the order does not depend on `n`, so every
    prefix of the result is the sample of its own size."""
    if by not in SAMPLE_BY:
        raise LaffiError(f"data.sample_by: {by!r} is not one of {', '.join(SAMPLE_BY)}")
    if not 0 <= n <= len(questions):
        raise LaffiError(f"cannot sample {n} training questions from {len(questions)}")
    rng = random.Random(seed)
    if by == "question":
        return rng.sample(questions, n)
    passages: dict[str, list[Question]] = {}
    for q in questions:
        passages.setdefault(q.context, []).append(q)
    groups = list(passages.values())
    rng.shuffle(groups)
    order: list[Question] = []
    for group in groups:
        if len(order) >= n:
            break
        group = list(group)
        rng.shuffle(group)
        order += group
    return order[:n]


def sample_questions(questions: list[Question], n: int | None, seed: int) -> list[Question]:
    """A seeded sample of `n` questions (all when n is None or too large), kept in the input's order."""
    if n is not None and n < 0:
        raise LaffiError(f"number of questions must be >= 0, got {n}")
    if n is None or n >= len(questions):
        return list(questions)
    # Sorting the drawn indices keeps the file order, so outputs line up with the data file and diff cleanly.
    picked = sorted(random.Random(seed).sample(range(len(questions)), n))
    return [questions[i] for i in picked]


# ---------------------------------------------------------------------------------------------- locations


def bundled_data_path() -> Path:
    """The shipped 3-article SQuAD 2.0 excerpt (see laffi/resources/README.md for source and licence)."""
    return Path(str(files("laffi") / "resources" / BUNDLED_NAME))


def resolve_data_path(spec: str) -> Path:
    """Map a --data value to a file: "bundled" (or empty) is the shipped excerpt, anything else a path (or a dataset
    spec that `load_squad` reads: `is_dataset_spec`)."""
    if spec in ("", "bundled"):
        return bundled_data_path()
    return Path(spec)
