"""The working-day features of the annotation store, API and CLI: assignment with overlap, the admin summary (Cohen's
kappa), drafts and their edit distance, skip/unsure, positions, annotators list/revoke/reset-token, and the
one-line errors of the new flags and fields."""

import json
import random
import subprocess
import sys
from collections import Counter

import pytest
from fastapi.testclient import TestClient

from laffi.errors import LaffiError
from laffi.records import FeedbackRecord, to_dict
from laffi.server.app import create_app, render_guidelines
from laffi.server.feedback_text import levenshtein
from laffi.server.store import Store


@pytest.fixture()
def store(tmp_path, excerpt_questions):
    s = Store(tmp_path / "fb.sqlite")
    qs = excerpt_questions[:12]
    s.add_items(qs, {q.id: ("Rollo" if i % 2 else "") for i, q in enumerate(qs)})
    return s


def laffi(*args, ok=True):
    r = subprocess.run([sys.executable, "-m", "laffi", *map(str, args)], capture_output=True, text=True)
    if ok:
        assert r.returncode == 0, r.stderr
    return r


def test_levenshtein_matches_the_textbook_table():
    def table(a, b):
        prev = list(range(len(b) + 1))
        for i, ca in enumerate(a, 1):
            cur = [i]
            for j, cb in enumerate(b, 1):
                cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
            prev = cur
        return prev[-1]

    rng = random.Random(0)
    for _ in range(500):
        a = "".join(rng.choice("abc ") for _ in range(rng.randint(0, 15)))
        b = "".join(rng.choice("abcd") for _ in range(rng.randint(0, 15)))
        assert levenshtein(a, b) == table(a, b)
    assert levenshtein("kitten", "sitting") == 3 and levenshtein("", "abc") == 3
    assert levenshtein("x" * 5000, "y" * 5000) == 5000


def test_overlap_gives_each_item_k_annotators_in_equal_shares(store, excerpt_questions):
    qs = excerpt_questions[:12]
    names = ["a", "b", "c", "d"]
    for n in names:
        store.add_annotator(n)
    store.add_annotator("boss", admin=True)
    store.configure_assignment(2, seed=7)
    rows = [tuple(r) for r in store.db.execute("SELECT annotator, item_id FROM assignments")]
    per_item = Counter(item for _, item in rows)
    assert set(per_item.values()) == {2} and len(per_item) == 12
    assert sorted(Counter(a for a, _ in rows).values()) == [6, 6, 6, 6]
    assert store.progress("a")["total"] == 6 and store.progress("boss")["total"] == 12  # admins see every item
    # Seeded: the same seed deals the same way in another database; dealing again adds nothing.
    assert store.deal() == 0
    other = Store(store.path.parent / "other.sqlite")
    other.add_items(qs, {q.id: "" for q in qs})
    for n in names:
        other.add_annotator(n)
    other.configure_assignment(2, seed=7)
    assert sorted(tuple(r) for r in other.db.execute("SELECT annotator, item_id FROM assignments")) == sorted(rows)
    # An annotator only sees and saves their own items.
    mine = {s["id"] for s in store.statuses("a")}
    theirs = next(q for q in per_item if q not in mine)
    with pytest.raises(LaffiError, match="not assigned"):
        store.save("a", theirs, "correct", "x", 1.0)
    store.save("a", sorted(mine)[0], "correct", "x", 1.0)


def test_a_later_annotator_gets_a_share_of_what_still_needs_annotations(store):
    for n in ("a", "b"):
        store.add_annotator(n)
    store.configure_assignment(2, seed=0)  # 2 annotators, K=2: both get all 12
    assert store.progress("a")["total"] == 12
    done = [s["id"] for s in store.statuses("a")][:5]
    for item in done:  # 5 items reach K=2 annotations
        store.save("a", item, "correct", "x", 1.0)
        store.save("b", item, "correct", "x", 1.0)
    store.add_annotator("c")
    store.ensure_dealt("c")  # as the app does on c's first request
    got = {s["id"] for s in store.statuses("c")}
    assert len(got) == 7 and not got & set(done)  # share ceil(12*2/3) = 8, but only 7 items still need annotations


def test_the_api_keeps_drafts_positions_skips_and_the_admin_summary(tmp_path, excerpt_questions):
    db = tmp_path / "fb.sqlite"
    store = Store(db)
    qs = excerpt_questions[:4]
    store.add_items(qs, {q.id: "Rollo" for q in qs})
    draft = FeedbackRecord(id=qs[0].id, question="", context="", predicted_answer="Rollo", gold_answers=[],
                           verdict="incorrect", feedback='No. The right answer is "France".', annotator="llm:m",
                           template_version="t")  # fmt: skip
    other = FeedbackRecord(**{**to_dict(draft), "id": qs[1].id, "predicted_answer": "someone else"})
    assert store.set_drafts([draft, other], "d.jsonl") == {"matching": 1, "other_answer": 1, "unknown": 0}
    tokens = {n: store.add_annotator(n) for n in ("ann", "bob")}
    tokens["boss"] = store.add_annotator("boss", admin=True)
    client = TestClient(create_app(db, guidelines="# Rules\n\n<b>x</b>"))

    def call(method, path, who, **kw):
        return client.request(method, path, headers={"Authorization": f"Bearer {tokens[who]}"}, **kw)

    item0 = call("GET", "/api/items/0", "ann").json()
    assert item0["draft"] == {"verdict": "incorrect", "feedback": 'No. The right answer is "France".',
                              "annotator": "llm:m"}  # fmt: skip
    assert call("GET", "/api/items/1", "ann").json()["draft"] is None  # its draft judged another answer
    assert call("GET", "/api/me", "ann").json()["position"] == 1
    body = {"verdict": "incorrect", "feedback": 'No! The right answer is "France".', "draft_shown": True}
    assert call("PUT", f"/api/annotations/{qs[0].id}", "ann", json=body).status_code == 200
    assert call("PUT", f"/api/annotations/{qs[0].id}", "bob", json={**body, "verdict": "correct"}).status_code == 200
    skip = {"verdict": "", "feedback": "", "status": "skipped", "note": "unclear"}
    assert call("PUT", f"/api/annotations/{qs[1].id}", "ann", json=skip).status_code == 200
    bad = call("PUT", f"/api/annotations/{qs[2].id}", "ann", json={**skip, "note": " "})
    assert bad.status_code == 422 and bad.json()["detail"] == "a skip needs a reason (note)"
    bad = call("PUT", f"/api/annotations/{qs[2].id}", "ann", json={**body, "status": "maybe"})
    assert bad.status_code == 422 and "status must be one of" in bad.json()["detail"]
    assert [i["status"] for i in call("GET", "/api/items", "ann").json()["items"]] == ["annotated", "skipped",
                                                                                      "todo", "todo"]  # fmt: skip
    assert call("GET", "/api/next?after=0", "ann").json() == {"index": 2}
    assert "&lt;b&gt;" in call("GET", "/api/guidelines", "ann").json()["html"]
    assert call("GET", "/api/admin/summary", "ann").status_code == 403
    summary = call("GET", "/api/admin/summary", "boss").json()
    assert summary["agreement"]["shared_items"] == 1
    assert summary["agreement"]["pairs"] == [{"a": "ann", "b": "bob", "items": 1, "agreement": 0.0, "kappa": 0.0}]
    records = [json.loads(line) for line in call("GET", "/api/export", "boss").text.splitlines()]
    assert [(r["annotator"], r["meta"]["draft"]) for r in records] == [
        ("human:ann", {"shown": True, "accepted": False, "edit_distance": 1}),
        ("human:bob", {"shown": True, "accepted": False, "edit_distance": 1})]  # fmt: skip


def test_guidelines_render_without_raw_html_or_script_links():
    out = render_guidelines("**bold** <script>x</script> [a](javascript:alert(1)) [b](https://x.org) [c](docs/a.md)")
    assert "<strong>bold</strong>" in out and "<script>" not in out and "&lt;script&gt;" in out
    assert 'href="#"' in out and 'href="https://x.org"' in out and 'href="docs/a.md"' in out


def test_annotators_list_revoke_and_reset_token(tmp_path, excerpt_questions):
    db = tmp_path / "fb.sqlite"
    old = laffi("annotators", "add", "ann", "--db", db).stdout.strip()
    laffi("annotators", "add", "boss", "--admin", "--db", db)
    listing = laffi("annotators", "list", "--db", db).stdout.splitlines()
    assert [line.split("\t")[:3] for line in listing] == [["ann", "annotator", "active"], ["boss", "admin", "active"]]
    laffi("annotators", "revoke", "ann", "--db", db)
    assert Store(db).who(old) is None
    assert "revoked" in laffi("annotators", "list", "--db", db).stdout.splitlines()[0]
    new = laffi("annotators", "reset-token", "ann", "--db", db).stdout.strip()
    assert new != old and Store(db).who(new) == {"name": "ann", "admin": False}
    r = laffi("annotators", "revoke", "nobody", "--db", db, ok=False)
    assert r.returncode == 2 and r.stderr.startswith("laffi: error: ") and "no annotator 'nobody'" in r.stderr
    r = laffi("annotators", "list", "--db", tmp_path / "missing.sqlite", ok=False)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "not found" in r.stderr


@pytest.mark.parametrize("args,expect", [
    (["--drafts", "{tmp}/missing.jsonl"], "--drafts {tmp}/missing.jsonl: file not found"),
    (["--drafts", "{tmp}/bad.jsonl"], "--drafts {tmp}/bad.jsonl:1: not valid JSON"),
    (["--guidelines", "{tmp}/missing.md"], "--guidelines {tmp}/missing.md: file not found"),
    (["--overlap", "0"], "--overlap"),
    (["--overlap", "x"], "--overlap"),
])  # fmt: skip
def test_bad_annotate_server_input_is_one_line_and_creates_nothing(tmp_path, small_squad, args, expect):
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    preds = tmp_path / "preds.json"
    preds.write_text("{}")
    db = tmp_path / "fb.sqlite"
    args = [a.format(tmp=tmp_path) for a in args]
    r = laffi("annotate-server", "--data", small_squad, "--predictions", preds, "--db", db, "--port", "1", *args,
              ok=False)  # fmt: skip
    assert r.returncode == 2 and r.stderr.startswith("laffi: error: ") and r.stderr.count("\n") == 1, r.stderr
    assert expect.format(tmp=tmp_path) in r.stderr
    assert not db.exists()


def test_a_draft_without_the_closing_sentence_accepted_unchanged_is_recorded_as_accepted(tmp_path, excerpt_questions):
    store = Store(tmp_path / "fb.sqlite")
    q_gold = next(q for q in excerpt_questions if q.answers)
    qs = [q_gold, *[q for q in excerpt_questions if not q.answers][:2]]
    store.add_items(qs, {qs[0].id: "Rollo", qs[1].id: "Rollo", qs[2].id: ""})

    def record(q, verdict, feedback, predicted):
        return FeedbackRecord(id=q.id, question="", context="", predicted_answer=predicted, gold_answers=[],
                              verdict=verdict, feedback=feedback, annotator="llm:m", template_version="t")  # fmt: skip

    # As `laffi annotate --annotator llm` writes them: prose only, or a stated answer followed by more prose.
    store.set_drafts([record(qs[0], "incorrect", "Wrong person: the passage names someone else.", "Rollo"),
                      record(qs[1], "incorrect", 'The right answer is "nobody". The passage is silent.', "Rollo"),
                      record(qs[2], "correct", "Right to abstain.", "")], "d.jsonl")  # fmt: skip
    shown = [store.draft(q.id)["feedback"] for q in qs]
    assert shown == [f'Wrong person: the passage names someone else. The right answer is "{qs[0].answers[0]}".',
                     'The passage is silent. The right answer is "nobody".',
                     "Right to abstain. The right answer is unanswerable."]  # fmt: skip
    store.add_annotator("ann")
    for q, text in zip(qs, shown, strict=True):  # the page saves the draft as shown, unchanged
        store.save("ann", q.id, store.draft(q.id)["verdict"], text, 1.0, draft_shown=True)
    assert [r.meta["draft"] for r in store.export()] == [{"shown": True, "accepted": True, "edit_distance": 0}] * 3
    assert [r.feedback.count("The right answer is") for r in store.export()] == [1, 1, 1]
