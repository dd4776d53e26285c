"""Prefix key/value reuse (engines/prefix_cache.py) on the tiny random model: same greedy output as the plain path."""

import pytest

from laffi import prompts
from laffi.engines.generation import DecodeSettings, generate, stop_token_ids
from laffi.engines.prefix_cache import common_prefix_len, greedy_ids, plan


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from laffi.models import load_model, load_tokenizer

    return load_model(str(tiny_model_dir), dtype="float32"), load_tokenizer(str(tiny_model_dir))


def questions_on_shared_passages(excerpt_questions, passages=3, per_passage=3):
    by_context: dict[str, list] = {}
    for q in excerpt_questions:
        by_context.setdefault(q.context, []).append(q)
    groups = [qs for qs in by_context.values() if len(qs) >= per_passage]
    lone = [qs[0] for qs in groups[passages : passages + 2]]
    return [q for qs in groups[:passages] for q in qs[:per_passage]] + lone  # 3 x 3 questions + 2 alone on a passage


def test_plan_cuts_exact_prefixes_of_each_prompt(tiny, excerpt_questions):
    _, tok = tiny
    qs = questions_on_shared_passages(excerpt_questions)
    encoded = [tok(prompts.render(prompts.qa_messages(q, 2), tok), add_special_tokens=False)["input_ids"] for q in qs]
    level0, groups = plan(encoded)
    assert sorted(i for g in groups for i in g.members) == list(range(len(qs)))
    # Level 0 is the prompt up to the passage (system + 2 shots), shared by all: it ends where passages differ.
    assert level0 == min(common_prefix_len(encoded[0], e) for e in encoded[1:])
    assert tok.decode(encoded[0][:level0]).count("Passage:") == 3
    # One group per shared passage, holding exactly its questions; the two lone questions get no segment of their own.
    by_members = sorted(sorted(g.members) for g in groups)
    assert by_members == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9], [10]]
    for g in groups:
        lead = encoded[g.members[0]]
        for i in g.members:  # the cached tokens are literally the first tokens of every member's own prompt
            assert encoded[i][: g.prefix_len] == lead[: g.prefix_len]
            assert len(encoded[i]) > g.prefix_len
        if len(g.members) > 1:
            assert g.prefix_len >= level0 + 16
            assert qs[g.members[0]].context[-20:] in tok.decode(lead[: g.prefix_len])
        else:  # alone: all but the last token is its segment
            assert g.prefix_len == len(lead) - 1


def test_prefix_reuse_equals_plain_path_for_qa_and_feedback_prompts(tiny, excerpt_questions):
    model, tok = tiny
    qs = questions_on_shared_passages(excerpt_questions)
    texts = [prompts.render(prompts.qa_messages(q, 2), tok) for q in qs]
    texts += [prompts.render(prompts.feedback_messages(q, "an answer"), tok) for q in qs[:4]]
    for batch_size in (4, 32):
        fast = generate(model, tok, texts, DecodeSettings(max_new_tokens=6, batch_size=batch_size))
        plain = generate(model, tok, texts, DecodeSettings(6, batch_size, reuse_prefix=False))
        assert fast == plain
    assert len(set(fast)) > 3


def test_rows_that_stop_early_leave_the_batch_without_changing_the_others(tiny, excerpt_questions):
    model, tok = tiny
    qs = questions_on_shared_passages(excerpt_questions)
    encoded = [tok(prompts.render(prompts.qa_messages(q, 2), tok), add_special_tokens=False)["input_ids"] for q in qs]
    stops = stop_token_ids(tok, model)
    free = greedy_ids(model, encoded, 8, 4, stops, tok.pad_token_id)
    # Declare a token that some rows generate mid-way a stop token: those rows must end there, the rest run on.
    stop = free[0][2]
    expected = [ids[: ids.index(stop) + 1] if stop in ids else ids for ids in free]
    assert 0 < sum(stop in ids for ids in free) < len(free)
    got = greedy_ids(model, encoded, 8, 4, [*stops, stop], tok.pad_token_id)
    assert got == expected
    # And the plain path (HF generate) agrees with the stop token set in the generation config.
    model.generation_config.eos_token_id = [*stops, stop]
    try:
        texts = [tok.decode(e) for e in encoded]
        fast = generate(model, tok, texts, DecodeSettings(8, 4))
        plain = generate(model, tok, texts, DecodeSettings(8, 4, reuse_prefix=False))
    finally:
        model.generation_config.eos_token_id = stops[0] if len(stops) == 1 else stops
    assert fast == plain == [tok.decode(e, skip_special_tokens=True).strip() for e in expected]


def test_on_batch_reports_every_prompt_once(tiny, excerpt_questions):
    model, tok = tiny
    texts = [prompts.render(prompts.qa_messages(q, 1), tok) for q in excerpt_questions[:7]]
    seen: dict[int, str] = {}

    def record(indices: list[int], outs: list[str]) -> None:
        seen.update(zip(indices, outs, strict=True))

    out = generate(model, tok, texts, DecodeSettings(3, 3), on_batch=record)
    assert [seen[i] for i in range(len(texts))] == out


def test_rows_that_join_a_running_batch_decode_as_they_would_alone(tiny, excerpt_questions, monkeypatch):
    """Continuous batching: queued prompts join while other rows are mid-answer (their caches padded to a common
    width). Every row must produce what it produces decoded alone (batch size 1, where no batch is ever joined)."""
    from laffi.engines import prefix_cache

    model, tok = tiny
    qs = questions_on_shared_passages(excerpt_questions)
    encoded = [tok(prompts.render(prompts.qa_messages(q, 2), tok), add_special_tokens=False)["input_ids"] for q in qs]
    stops = stop_token_ids(tok, model)
    free = greedy_ids(model, encoded, 10, 1, stops, tok.pad_token_id)
    # A stop token that rows reach at different steps (or never), so rows leave at different times.
    counts = {t: sum(t in ids for ids in free) for ids in free for t in ids[1:6]}
    stop = max(counts, key=lambda t: (0 < counts[t] < len(free), -abs(counts[t] - len(free) / 2)))
    alone = greedy_ids(model, encoded, 10, 1, [*stops, stop], tok.pad_token_id)
    assert len({len(ids) for ids in alone}) > 2, [len(ids) for ids in alone]  # rows of several lengths
    joins = []
    join = prefix_cache._Rows.join
    monkeypatch.setattr(prefix_cache._Rows, "join", lambda self, other, room: joins.append((self.n, other.n)) or
                        join(self, other, room))  # fmt: skip
    for batch_size in (2, 3, 4):
        joins.clear()
        assert greedy_ids(model, encoded, 10, batch_size, [*stops, stop], tok.pad_token_id) == alone
        assert joins and all(live > 0 for live, _ in joins), (batch_size, [len(i) for i in alone])


def test_workers_share_out_passages_and_answer_as_one_decoder(tiny, excerpt_questions):
    """answer.workers: threads decoding their share of the passages give one decoder's answers (fp32), every prompt is
    reported once, and torch's thread count is restored afterwards."""
    import torch

    from laffi.engines import prefix_cache

    model, tok = tiny
    qs = questions_on_shared_passages(excerpt_questions)
    texts = [prompts.render(prompts.qa_messages(q, 2), tok) for q in qs]
    one = generate(model, tok, texts, DecodeSettings(6, 4))
    threads = torch.get_num_threads()
    for workers in (2, 3):
        seen: list[int] = []
        many = generate(model, tok, texts, DecodeSettings(6, 4, workers=workers),
                        on_batch=lambda idx, outs, seen=seen: seen.extend(idx))  # fmt: skip
        assert many == one
        assert sorted(seen) == list(range(len(texts)))
        assert torch.get_num_threads() == threads
    encoded = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    _, groups = plan(encoded)
    pool = prefix_cache._Pool(groups, encoded, 1)
    first = pool.take(4)  # whole passages, the biggest (most tokens to prefill) first, until they hold 4 prompts
    sizes = [len(g.members) for g in first]
    assert sum(sizes) >= 4 and sum(sizes[:-1]) < 4
    cost = [g.prefix_len + sum(len(encoded[i]) - g.prefix_len for i in g.members) for g in groups]
    assert first[0] is groups[cost.index(max(cost))]
    assert pool.take(100) and not pool.groups and pool.take(1) == []
    pool = prefix_cache._Pool(groups, encoded, 2)
    left = sum(len(g.members) for g in pool.groups)
    taken = pool.take(100)  # at most a quarter of what is left (two decoders), in whole passages
    assert sum(len(g.members) for g in taken[:-1]) < -(-left // 4) <= sum(len(g.members) for g in taken)


def test_a_worker_error_reaches_the_caller(tiny, excerpt_questions, monkeypatch):
    from laffi.engines import prefix_cache

    model, tok = tiny
    texts = [prompts.render(prompts.qa_messages(q, 2), tok) for q in questions_on_shared_passages(excerpt_questions)]

    def broken(self, *args):
        raise RuntimeError("decode failed")

    monkeypatch.setattr(prefix_cache._Rows, "step", broken)
    with pytest.raises(RuntimeError, match="decode failed"):
        generate(model, tok, texts, DecodeSettings(6, 4, workers=2))


def test_draft_guesses_what_followed_the_latest_occurrence_of_the_last_tokens():
    from laffi.engines.prefix_cache import draft

    prompt = [5, 6, 7, 8, 9, 6, 7, 1, 2, 3]
    assert draft(prompt, [6, 7], 2) == [1, 2]  # the latest "6 7" (positions 5-6) is followed by 1 2
    assert draft(prompt, [9, 6], 3) == [7, 1, 2]
    assert draft(prompt, [4, 8], 2) == [9, 6]  # no "4 8": the last token alone
    assert draft(prompt, [3], 2) == [3]  # the prompt's last 3 was followed by the output's own 3
    assert draft(prompt, [4], 2) == []  # never seen
    assert draft(prompt, [6, 7], 0) == [] and draft(prompt, [], 2) == []
    assert draft([1, 2, 3, 1, 2, 4], [1, 2], 1) == [4]  # "1 2" is also the output's own tail: the latest earlier one


def test_queue_is_sorted_by_suffix_length():
    from laffi.engines.prefix_cache import Group, _by_suffix_length

    a, b = Group(prefix_len=3, members=[0, 1, 2]), Group(prefix_len=2, members=[3, 4])
    encoded = [[0] * 9, [0] * 5, [0] * 7, [0] * 4, [0] * 3]  # suffixes 6, 2, 4 | 2, 1
    queue = [(i, g) for g in (a, b) for i in g.members]
    assert [i for i, _ in _by_suffix_length(queue, encoded)] == [4, 1, 3, 2, 0]  # stable: 1 before 3


def test_checked_guesses_give_greedy_decoding(tiny, excerpt_questions, monkeypatch):
    """Right guesses are kept, wrong ones (and all after them) are dropped: the output is what one token per step
    gives (fp32). Wrong guesses use up cache columns, so rows also outgrow their room here (max 10 new tokens)."""
    from laffi.engines import prefix_cache

    model, tok = tiny
    qs = questions_on_shared_passages(excerpt_questions)
    encoded = [tok(prompts.render(prompts.qa_messages(q, 2), tok), add_special_tokens=False)["input_ids"] for q in qs]
    stops = stop_token_ids(tok, model)
    plain = greedy_ids(model, encoded, 10, 4, stops, tok.pad_token_id)
    assert greedy_ids(model, encoded, 10, 4, stops, tok.pad_token_id, draft_tokens=3) == plain  # lookup guesses

    truth = {tuple(e): out for e, out in zip(encoded, plain, strict=True)}
    kept = []

    def oracle(prompt, output, k):  # even prompts: the true next tokens; odd ones: one true token, then wrong ones
        right = truth[tuple(prompt)][len(output) : len(output) + k]
        if len(prompt) % 2 and right:
            right = right[:1] + [t + 1 for t in right[1:]]
        return right

    step = prefix_cache._Rows.step

    def counting(self, model, guesses, max_new_tokens):
        step(self, model, guesses, max_new_tokens)
        kept.extend(len(a) for a in self.accepted)

    monkeypatch.setattr(prefix_cache, "draft", oracle)
    monkeypatch.setattr(prefix_cache._Rows, "step", counting)
    for batch_size in (1, 3, 4):
        kept.clear()
        assert greedy_ids(model, encoded, 10, batch_size, stops, tok.pad_token_id, draft_tokens=3) == plain
        assert max(kept) == 3 and 0 < sum(kept) < sum(len(p) for p in plain)

    monkeypatch.setattr(prefix_cache, "draft", lambda prompt, output, k: [0] * k)  # always wrong
    widths = []
    make_room = prefix_cache._Rows._make_room
    monkeypatch.setattr(prefix_cache._Rows, "_make_room", lambda self, q, m: widths.append(
        self.cache.layers[0].keys.shape[2]) or make_room(self, q, m))  # fmt: skip
    assert greedy_ids(model, encoded, 10, 4, stops, tok.pad_token_id, draft_tokens=4) == plain
    assert len(set(widths)) > 1  # buffers were widened
