"""`laffi annotate --select-human N --out-queue FILE` writes the items the learned annotator is least sure of, closest
to its cut first; `laffi annotate-server --queue FILE` serves exactly those, in that order (FastAPI TestClient)."""

import json

import pytest
from fastapi.testclient import TestClient

from laffi.errors import LaffiError
from laffi.server.app import create_app, prepare
from laffi.server.store import Store


def served(db, n):
    store = Store(db)
    h = {"Authorization": f"Bearer {store.add_annotator('ann')}"}
    store.close()
    client = TestClient(create_app(db))
    ids = [client.get(f"/api/items/{i}", headers=h).json()["id"] for i in range(n)]
    assert client.get(f"/api/items/{n}", headers=h).status_code == 404
    assert client.get("/api/me", headers=h).json()["total"] == n
    return ids


def test_the_app_serves_the_queue_in_its_order(tmp_path, excerpt_questions):
    qs = excerpt_questions[:6]
    preds = {q.id: "" for q in qs}
    queue = tmp_path / "queue.json"
    order = [qs[4].id, qs[0].id, qs[2].id]
    queue.write_text(json.dumps({"selection": "uncertain", "order": order}))
    db = tmp_path / "fb.sqlite"
    message = prepare(db, qs, preds, [], None, None, 0, queue)
    assert message == f"3 items in {db}, in the order of --queue {queue}"
    assert served(db, 3) == order


def test_a_queue_reorders_a_database_served_before(tmp_path, excerpt_questions):
    qs = excerpt_questions[:6]
    preds = {q.id: "" for q in qs}
    db = tmp_path / "fb.sqlite"
    prepare(db, qs, preds, [], None, None, 0)  # every item, in the data's order
    queue = tmp_path / "queue.json"
    order = [qs[5].id, qs[1].id, qs[3].id, qs[0].id]
    queue.write_text(json.dumps({"order": order}))
    prepare(db, qs, preds, [], None, None, 0, queue)
    assert served(db, 4) == order


@pytest.mark.parametrize("content, message", [
    (None, "--queue {q}: not a selection file of `laffi annotate --out-queue` ([Errno 2] No such file or directory: "
           "'{q}')"),
    ('{"ids": []}', "--queue {q}: not a selection file of `laffi annotate --out-queue` (no 'order' list)"),
    ('{"order": ["a", "a"]}', "--queue {q}: 'order' must be a list of distinct question ids"),
    ('{"order": ["nope"]}', "--queue {q}: question id 'nope' is not in --data"),
])  # fmt: skip
def test_bad_queue_is_one_line(tmp_path, excerpt_questions, content, message):
    qs = excerpt_questions[:3]
    queue = tmp_path / "queue.json"
    if content is not None:
        queue.write_text(content)
    with pytest.raises(LaffiError) as e:
        prepare(tmp_path / "fb.sqlite", qs, {q.id: "" for q in qs}, [], None, None, 0, queue)
    assert str(e.value) == message.format(q=queue)
    assert not (tmp_path / "fb.sqlite").exists()


def test_select_human_writes_the_queue(excerpt_questions, tiny_model_dir, tmp_path, capsys):
    from laffi.cli import main
    from laffi.data import write_squad
    from laffi.feedback.simulated import simulated_human_feedback
    from laffi.files import write_jsonl

    qs = excerpt_questions[:10]
    data, preds_file, examples = tmp_path / "data.json", tmp_path / "preds.json", tmp_path / "human.jsonl"
    write_squad(qs, data)
    preds = {q.id: (q.answers[0] if i % 3 == 0 and q.answers else "") for i, q in enumerate(qs)}
    preds_file.write_text(json.dumps(preds))
    write_jsonl(examples, simulated_human_feedback(qs[:4], preds))
    queue = tmp_path / "queue.json"
    main(["annotate", "--data", str(data), "--predictions", str(preds_file), "--select-human", "3", "--out-queue",
          str(queue), "--annotator", "llm", "--learn-from-examples", "--model", str(tiny_model_dir), "--dtype",
          "float32", "--examples", str(examples), "--learn-max-steps", "1", "--learn-batch-size", "2",
          "--learn-lora-r", "2"])  # fmt: skip
    sel = json.loads(queue.read_text())
    # The 6 questions that are not among the 4 human records are scored; the 3 closest to the cut come first.
    scores = json.loads((tmp_path / "queue.json.annotator" / "scores.json").read_text())
    assert sorted(scores) == sorted(q.id for q in qs[4:]) and sel["scored"] == 6
    assert sel["order"] == sorted(scores, key=lambda i: abs(scores[i] - sel["cut"]))[:3]
    assert sel["learned_from"] == [q.id for q in qs[:4]]
    assert sel["incorrect_prob"] == {i: scores[i] for i in sel["order"]}
    assert f"wrote a queue of 3 of 6 questions to {queue}" in capsys.readouterr().err
    db = tmp_path / "fb.sqlite"
    prepare(db, qs, preds, [], None, None, 0, queue)
    assert served(db, 3) == sel["order"]


@pytest.mark.parametrize("args, message", [
    (["--select-human", "2"], "annotate: --select-human N and --out-queue FILE go together"),
    (["--select-human", "2", "--out-queue", "Q", "--out", "o.jsonl"],
     "annotate: --select-human writes --out-queue, no feedback: leave out --out"),
    (["--select-human", "2", "--out-queue", "Q"],
     "annotate: --select-human needs the learned annotator (--annotator llm --learn-from-examples)"),
    (["--select-human", "2", "--out-queue", "Q", "--annotator", "llm"],
     "annotate: --select-human needs the learned annotator (--annotator llm --learn-from-examples)"),
])  # fmt: skip
def test_select_human_bad_combinations_are_one_line(small_squad, tmp_path, capsys, args, message):
    from laffi.cli import main

    preds = tmp_path / "p.json"
    preds.write_text("{}")
    with pytest.raises(SystemExit) as e:
        main(["annotate", "--data", str(small_squad), "--predictions", str(preds),
              *[str(tmp_path / a) if a in ("Q", "o.jsonl") else a for a in args]])  # fmt: skip
    assert e.value.code == 2
    assert capsys.readouterr().err == f"laffi: error: {message}\n"
