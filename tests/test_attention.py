"""Attention measures on hand-built patterns with known answers, prompt layout, and one run on the tiny model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from laffi import attention, prompts
from laffi.cli import main
from laffi.errors import LaffiError
from laffi.models import load_tokenizer

T = 6


def uniform_causal(t: int = T) -> torch.Tensor:
    """Row i attends equally to tokens 0..i."""
    rows = torch.tril(torch.ones(t, t, dtype=torch.float64))
    return rows / rows.sum(-1, keepdim=True)


def test_diagonal_pattern_has_zero_entropy_and_distance():
    attn = torch.eye(T, dtype=torch.float64).expand(3, T, T)  # 3 heads
    assert attention.entropy(attn).tolist() == [0.0, 0.0, 0.0]
    assert attention.mean_distance(attn).tolist() == [0.0, 0.0, 0.0]
    assert attention.local_share(attn, window=0).tolist() == [1.0, 1.0, 1.0]


def test_uniform_causal_rows():
    attn = uniform_causal()
    # Row i: entropy log(i + 1), distance mean(0..i) = i / 2; averaged over the rows.
    assert attention.entropy(attn).item() == pytest.approx(sum(math.log(i + 1) for i in range(T)) / T, abs=1e-12)
    assert attention.mean_distance(attn).item() == pytest.approx(sum(i / 2 for i in range(T)) / T, abs=1e-12)
    # From row 3 on only: rows 3, 4, 5.
    assert attention.entropy(attn, first_row=3).item() == pytest.approx(
        (math.log(4) + math.log(5) + math.log(6)) / 3, abs=1e-12
    )
    assert attention.mean_distance(attn, first_row=3).item() == pytest.approx((1.5 + 2 + 2.5) / 3, abs=1e-12)
    # Within 1 token: row 0 -> 1, row i >= 1 -> 2 / (i + 1).
    expected_local = (1 + sum(2 / (i + 1) for i in range(1, T))) / T
    assert attention.local_share(attn, window=1).item() == pytest.approx(expected_local, abs=1e-12)
    # The last row spreads 1/6 per token: tokens [2, 5) get 3/6.
    assert attention.share_from_last(attn, (2, 5)).item() == pytest.approx(0.5, abs=1e-12)


def test_attention_to_the_first_token_only():
    attn = torch.zeros(T, T, dtype=torch.float64)
    attn[:, 0] = 1.0  # an "attention sink": every row looks back to token 0
    assert attention.entropy(attn).item() == 0.0
    assert attention.mean_distance(attn).item() == sum(range(T)) / T
    assert attention.share_from_last(attn, (0, 1)).item() == 1.0


def test_last_row_concentrated_on_a_span():
    attn = uniform_causal()
    attn[-1] = 0.0
    attn[-1, 2:4] = 0.5
    assert attention.share_from_last(attn, (2, 4)).item() == 1.0
    assert attention.share_from_last(attn, (0, 2)).item() == 0.0
    assert attention.share_from_last(attn, (4, 6)).item() == 0.0


def test_token_range_uses_overlap():
    offsets = [(0, 0), (0, 3), (3, 4), (4, 9), (9, 10)]  # a special token of width 0 first
    assert attention.token_range(offsets, 3, 9) == (2, 4)
    assert attention.token_range(offsets, 5, 6) == (3, 4)  # inside one token
    assert attention.token_range(offsets, 10, 12) is None


def test_prompt_layout_locates_passage_question_and_gold_span(excerpt_questions):
    tokenizer = load_tokenizer("bundled")
    q = next(q for q in excerpt_questions if not q.is_impossible)
    layout = attention.prompt_layout(q, tokenizer, shots=2)
    text = prompts.render(prompts.qa_messages(q, 2), tokenizer)
    assert layout.input_ids == tokenizer(text, add_special_tokens=False)["input_ids"]

    def decoded(r):
        return tokenizer.decode(layout.input_ids[r[0] : r[1]])

    assert q.answers[0] in decoded(layout.span)
    assert q.question in decoded(layout.question)
    assert decoded(layout.passage).strip() == q.context.strip()
    assert layout.passage[0] <= layout.span[0] < layout.span[1] <= layout.passage[1] <= layout.question[0]
    # The passage is the question's own, not a shot's: it is in the last user turn.
    assert layout.question[1] <= len(layout.input_ids)
    unanswerable = next(q for q in excerpt_questions if q.is_impossible)
    assert attention.prompt_layout(unanswerable, tokenizer, shots=2).span is None


def test_parse_adapters(tmp_path: Path):
    for d in ("sft/adapter", "laffi/adapter", "other"):
        (tmp_path / d).mkdir(parents=True)
        (tmp_path / d / "adapter_config.json").write_text("{}")
    spec = f"base,{tmp_path}/sft/adapter,{tmp_path}/laffi/adapter/,x={tmp_path}/other"
    assert attention.parse_adapters(spec) == {
        "base": None, "sft": f"{tmp_path}/sft/adapter", "laffi": f"{tmp_path}/laffi/adapter/",
        "x": f"{tmp_path}/other",
    }  # fmt: skip
    with pytest.raises(LaffiError, match="used twice"):
        attention.parse_adapters(f"{tmp_path}/other,{tmp_path}/other")
    with pytest.raises(LaffiError, match="not a PEFT adapter"):
        attention.parse_adapters(f"{tmp_path}/missing")


def test_command_on_tiny_model(tiny_model_dir: Path, small_squad: Path, tmp_path: Path, capsys):
    out = tmp_path / "att"
    main(["attention", "--data", str(small_squad), "--model", str(tiny_model_dir), "--adapters", "base",
          "--questions", "4", "--out", str(out)])  # fmt: skip
    report = json.loads((out / "attention.json").read_text())
    r = report["models"]["base"]
    assert (r["layers"], r["heads"], r["questions"]) == (2, 4, 4)
    for m in attention.MEASURES:
        if m == "span_share" and report["answerable"] == 0:
            continue
        assert len(r["per_head"][m]) == 2 and all(len(row) == 4 for row in r["per_head"][m])
        assert len(r["per_layer"][m]) == 2
    for m in ("passage_share", "span_share", "question_share", "local_share"):
        if m in r["mean"]:
            assert 0.0 <= r["mean"][m] <= 1.0
    assert r["counts"]["entropy"] == 4 and r["counts"]["span_share"] == report["answerable"]
    assert len(r["example"]["attention"]) == 2
    for f in ("attention.md", "attention_layers.png", "attention_example_base.png"):
        assert (out / f).stat().st_size > 0
    assert (out / "attention_layers.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| base |" in capsys.readouterr().out
    assert not (out / ".attention.partial.json").exists()


@pytest.fixture(scope="module")
def tiny_adapter(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA adapter with random (not zero) weights on q and v, so it changes the attention."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    lm = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    out = tmp_path_factory.mktemp("tiny-lora")
    get_peft_model(lm, cfg).save_pretrained(out)
    return out


def test_report_compares_models(tiny_model_dir: Path, tiny_adapter: Path, small_squad: Path, tmp_path: Path):
    out = tmp_path / "att"
    models = {"base": None, "same": None, "lora": str(tiny_adapter)}
    report = attention.attention_report(str(tiny_model_dir), small_squad, models, 3, out, progress=False)
    base, same, lora = (report["models"][k] for k in models)
    assert same["per_head"] == base["per_head"]  # same weights, same numbers
    assert lora["per_head"]["entropy"] != base["per_head"]["entropy"]
    pairs = {(c["a"], c["b"]): c for c in report["comparisons"]}
    assert set(pairs) == {("same", "base"), ("lora", "base"), ("lora", "same")}
    assert pairs[("same", "base")]["entropy"]["mean_diff"] == 0.0
    diff = lora["mean"]["entropy"] - base["mean"]["entropy"]
    assert pairs[("lora", "base")]["entropy"]["mean_diff"] == pytest.approx(diff, abs=1e-9)
    assert set(report["files"]["example_png"]) == set(models)
    assert "| lora vs base |" in report["markdown"]


def test_bad_adapter_is_one_line_error(small_squad: Path, tmp_path: Path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["attention", "--data", str(small_squad), "--adapters", f"base,{tmp_path}/nope", "--out", str(tmp_path)])
    assert e.value.code == 2
    assert "not a PEFT adapter" in capsys.readouterr().err


def test_interrupted_report_resumes_finished_models(tiny_model_dir: Path, tiny_adapter: Path, small_squad: Path,
                                                    tmp_path: Path, monkeypatch):  # fmt: skip
    out = tmp_path / "att"
    models = {"base": None, "b2": str(tiny_adapter)}
    real = attention.measure_model
    calls: list[str] = []

    def failing_second(*args, **kwargs):
        calls.append(kwargs["desc"])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(attention, "measure_model", failing_second)
    with pytest.raises(KeyboardInterrupt):
        attention.attention_report(str(tiny_model_dir), small_squad, models, 2, out, progress=False)
    assert (out / ".attention.partial.json").exists() and not (out / "attention.json").exists()
    calls.clear()
    monkeypatch.setattr(attention, "measure_model", lambda *a, **k: calls.append(k["desc"]) or real(*a, **k))
    report = attention.attention_report(str(tiny_model_dir), small_squad, models, 2, out, progress=False)
    # "base" was finished before the interruption; the same settings key finds it, so only "b2" runs again.
    assert calls == ["attention b2"]
    assert set(report["models"]) == {"base", "b2"}
    assert not (out / ".attention.partial.json").exists()
