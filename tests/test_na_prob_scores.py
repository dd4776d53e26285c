"""`laffi score --na-prob-file/--na-prob-thresh`: the official evaluate-v2.0.py's numbers, derived by hand below."""

import json

import pytest

from laffi.cli import main
from laffi.errors import LaffiError
from laffi.metrics import squad_v2_scores
from laffi.records import Question

CONTEXT = "Rollo came in 911. The Norman conquest followed."


def q(qid, answers):
    return Question(id=qid, title="t", context=CONTEXT, question="?", answers=answers,
                    answer_starts=[CONTEXT.index(a) for a in answers], is_impossible=not answers)  # fmt: skip


# a, b, e have answers; c, d have none (dataset order a, b, c, d, e).
QUESTIONS = [q("a", ["Rollo"]), q("b", ["911"]), q("c", []), q("d", []), q("e", ["Norman conquest"])]
# Raw scores (exact, f1): a "Rollo" (1, 1); b "" (0, 0): an empty prediction on an answerable question;
# c "" (1, 1); d "France" (0, 0); e "the conquest": tokens [conquest] vs [norman, conquest]: p = 1, r = 1/2,
# F1 = 2/3, exact 0.
PREDS = {"a": "Rollo", "b": "", "c": "", "d": "France", "e": "the conquest"}
# File order a, b, c, e, d; b, c, e and d tie at 0.5. The official walk sorts stably: a, b, c, e, d.
NA_PROBS = {"a": 0.1, "b": 0.5, "c": 0.5, "e": 0.5, "d": 0.5}


def test_raw_keys_and_best_thresholds_with_a_tie():
    out = squad_v2_scores(QUESTIONS, PREDS, na_probs=NA_PROBS)
    assert list(out) == ["exact", "f1", "total", "HasAns_exact", "HasAns_f1", "HasAns_total", "NoAns_exact",
                         "NoAns_f1", "NoAns_total", "best_exact", "best_exact_thresh", "best_f1",
                         "best_f1_thresh"]  # fmt: skip
    # Threshold 1.0 (the default): nothing is above it, so the raw scores: exact 2/5, F1 (1 + 0 + 1 + 0 + 2/3) / 5.
    assert out["exact"] == 40.0 and out["f1"] == 100.0 * (1 + 0 + 1 + 0 + 2 / 3) / 5
    assert out["HasAns_exact"] == 100.0 / 3 and out["HasAns_f1"] == 100.0 * (1 + 0 + 2 / 3) / 3
    assert out["NoAns_exact"] == 50.0 and out["NoAns_f1"] == 50.0
    # best_exact: start at 2 (c and d have no answer), thresh 0.0. a: +1 -> 3 (best, thresh 0.1); b: +0; c: 0 (empty
    # prediction); e: +0; d: -1 ("France" is non-empty) -> 2. Best 3/5.
    assert (out["best_exact"], out["best_exact_thresh"]) == (60.0, 0.1)
    # best_f1: 2; a +1 -> 3 (0.1); b +0; c 0; e +2/3 -> 3 + 2/3 (best, thresh 0.5); d -1. Best (3 + 2/3) / 5, at 0.5,
    # although at threshold 0.5 d (0.5, not above it) keeps "France": the official walk stops inside a tie.
    assert (out["best_f1"], out["best_f1_thresh"]) == (100.0 * (3 + 2 / 3) / 5, 0.5)


def test_threshold_counts_strictly_higher_probabilities_as_abstentions():
    # 0.5: nothing is strictly above it (b, c, d, e are 0.5): the raw scores.
    assert squad_v2_scores(QUESTIONS, PREDS, na_probs=NA_PROBS, na_prob_thresh=0.5)["f1"] == 100.0 * (8 / 3) / 5
    # 0.4: b, c, d, e abstain: a 1, b 0 (has answers), c 1, d 1, e 0 -> exact = f1 = 3/5; HasAns 1/3; NoAns 1.
    out = squad_v2_scores(QUESTIONS, PREDS, na_probs=NA_PROBS, na_prob_thresh=0.4)
    assert (out["exact"], out["f1"], out["HasAns_f1"], out["NoAns_f1"]) == (60.0, 60.0, 100.0 / 3, 100.0)
    # best_* are computed from the raw scores whatever the threshold.
    assert out["best_f1_thresh"] == 0.5
    # Without a probability file every prediction has 0.0 (as in the official script): a negative threshold makes
    # every prediction an abstention: exact = f1 = 2/5 (c, d), HasAns 0, NoAns 100; no best_* keys.
    out = squad_v2_scores(QUESTIONS, PREDS, na_prob_thresh=-1.0)
    assert (out["exact"], out["f1"], out["HasAns_f1"], out["NoAns_f1"]) == (40.0, 40.0, 0.0, 100.0)
    assert "best_f1" not in out


def test_all_abstain():
    # Every prediction "", every probability 0.0: exact = f1 = 2/5. The walk: 2, then +0 five times (answerable
    # questions score 0, empty predictions on c and d cost nothing): best 2/5 at the initial threshold 0.0.
    preds = {k: "" for k in PREDS}
    out = squad_v2_scores(QUESTIONS, preds, na_probs={k: 0.0 for k in PREDS})
    assert (out["exact"], out["f1"], out["HasAns_f1"], out["NoAns_f1"]) == (40.0, 40.0, 0.0, 100.0)
    assert (out["best_exact"], out["best_exact_thresh"], out["best_f1"], out["best_f1_thresh"]) == (40.0, 0.0, 40.0,
                                                                                                    0.0)  # fmt: skip
    # All confident answers (0.0) but the walk order follows the file: a perfect prediction set reaches 100 at the
    # last answerable question's probability.
    gold = {"a": "Rollo", "b": "911", "c": "", "d": "", "e": "Norman conquest"}
    out = squad_v2_scores(QUESTIONS, gold, na_probs={"a": 0.3, "b": 0.2, "c": 0.9, "d": 0.1, "e": 0.25})
    # Sorted: d (0.1, no answer, "": 0) b (+1 -> 3, 0.2) e (+1 -> 4, 0.25) a (+1 -> 5, 0.3) c (0): best 5/5 at 0.3.
    assert (out["best_f1"], out["best_f1_thresh"]) == (100.0, 0.3)


def test_bad_probabilities_are_one_line_errors():
    with pytest.raises(LaffiError, match="no probability for 1 of 5"):
        squad_v2_scores(QUESTIONS, PREDS, na_probs={k: v for k, v in NA_PROBS.items() if k != "e"})
    with pytest.raises(LaffiError, match="'a': probability must be a finite number"):
        squad_v2_scores(QUESTIONS, PREDS, na_probs={**NA_PROBS, "a": "high"})
    with pytest.raises(LaffiError, match="expected a JSON object"):
        squad_v2_scores(QUESTIONS, PREDS, na_probs=[0.1])


def _files(tmp_path):
    from laffi.data import write_squad

    write_squad(QUESTIONS, tmp_path / "d.json")
    (tmp_path / "p.json").write_text(json.dumps(PREDS))
    (tmp_path / "na.json").write_text(json.dumps(NA_PROBS))
    return tmp_path / "d.json", tmp_path / "p.json", tmp_path / "na.json"


def test_cli_prints_the_official_output(tmp_path, capsys):
    data, preds, na = _files(tmp_path)
    main(["score", str(data), str(preds), "--na-prob-file", str(na)])
    printed = capsys.readouterr().out
    assert printed == json.dumps(squad_v2_scores(QUESTIONS, PREDS, na_probs=NA_PROBS), indent=2) + "\n"
    main(["score", str(data), str(preds), "-n", str(na), "-t", "0.4"])
    assert json.loads(capsys.readouterr().out)["f1"] == 60.0


def test_cli_bad_na_prob_file_is_one_line_exit_2(tmp_path, capsys):
    data, preds, na = _files(tmp_path)
    na.write_text(json.dumps({"a": 0.1}))
    with pytest.raises(SystemExit) as e:
        main(["score", str(data), str(preds), "--na-prob-file", str(na)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no probability for 4 of 5" in err
    with pytest.raises(SystemExit) as e:
        main(["score", str(data), str(preds), "--na-prob-thresh", "nan"])
    assert e.value.code == 2
