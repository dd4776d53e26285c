"""The simulated human: labelled as simulated, same verdicts as the reference annotator, varied and seeded wording."""

from laffi.feedback import reference
from laffi.feedback.simulated import ANNOTATOR_ID, phrasings, simulated_human_feedback


def test_verdicts_match_reference_and_labelled(excerpt_questions):
    qs = excerpt_questions[:40]
    preds = {q.id: (q.answers[0] if i % 3 == 0 and q.answers else ("Rollo" if i % 3 == 1 else "")) for i, q in
             enumerate(qs)}  # fmt: skip
    records = simulated_human_feedback(qs, preds, seed=0)
    assert len(records) == 40 and {r.annotator for r in records} == {ANNOTATOR_ID}
    assert ANNOTATOR_ID.startswith("simulated-human:") and all(r.meta["simulated"] for r in records)
    for q, r in zip(qs, records, strict=True):
        assert r.verdict == reference.annotate(q, preds[q.id]).verdict
        assert r.feedback in {t.format(pred=preds[q.id], gold=q.answers[0] if q.answers else "",
                                       evidence=reference.supporting_sentence(q.context, q.answer_starts[0])
                                       if q.answers else "") for t in phrasings(q, preds[q.id], r.verdict)}
    assert len({r.feedback.split(" ")[0] for r in records}) >= 4  # varied wording, not one template
    again = simulated_human_feedback(qs, preds, seed=0)
    assert [r.feedback for r in again] == [r.feedback for r in records]
    other = simulated_human_feedback(qs, preds, seed=1)
    assert [r.feedback for r in other] != [r.feedback for r in records]
    # A record does not depend on which other questions are annotated.
    assert simulated_human_feedback(qs[5:6], preds, seed=0)[0].feedback == records[5].feedback
