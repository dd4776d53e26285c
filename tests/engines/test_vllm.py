"""The vLLM engine (laffi/engines/vllm.py) against a stub vLLM (tests/stubs/vllm: vLLM's API as laffi uses it,
computed with the tiny transformers model, every keyword checked against the names in the pinned vLLM's source,
tests/engines/vllm_api.py). What these show: one engine per process across answer sets, released before a model is
loaded or a training launcher starts; the same prompt token ids as the transformers engine, with and without an
adapter; the no-answer scores (first-token and verdict) written beside the answers and equal to the transformers
engine's within float rounding. Without a GPU nothing here runs vLLM itself: tests/integration/test_vllm_engine.py
does, on a GPU with vLLM installed."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from laffi.config import AnswerConfig, ModelConfig, TrainConfig, load_run_config
from laffi.data import load_squad
from laffi.engines import vllm as engine
from laffi.errors import LaffiError

from . import vllm_api

NO_VLLM = importlib.util.find_spec("vllm") is None
STUBS = Path(__file__).resolve().parents[1] / "stubs"
# Float rounding between the stub's one-prompt forward passes and the transformers engine's prefix-cached batches,
# on the scores' log-odds (the difference of two logits; the tiny model's scores are ~0.003-0.04, their log-odds
# differ by ~1e-5 at most between engines).
TOLERANCE = 1e-4


def _close(a: float, b: float) -> bool:
    """Two no-answer scores within TOLERANCE of each other as log-odds."""
    import math

    return abs(math.log(a / (1 - a)) - math.log(b / (1 - b))) < TOLERANCE


def _drop_vllm_modules() -> dict:
    gone = {k: v for k, v in sys.modules.items() if k == "vllm" or k.startswith("vllm.")}
    for k in gone:
        del sys.modules[k]
    return gone


@pytest.fixture()
def stub_vllm(monkeypatch):
    saved = _drop_vllm_modules()
    monkeypatch.syspath_prepend(str(STUBS))
    import vllm

    vllm.ENGINES.clear()
    vllm.EVENTS.clear()
    yield vllm
    engine.release()
    _drop_vllm_modules()
    sys.modules.update(saved)


@pytest.fixture(scope="module")
def adapters(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two LoRA adapters of rank 4 with random (not zero) weights; the second ends its prompts with an answer prefix
    (as a Chain of Hindsight adapter does)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    out = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        lm = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
        path = tmp_path_factory.mktemp(f"tiny-lora-{seed}")
        get_peft_model(lm, cfg).save_pretrained(path)
        out.append(path)
    (out[1] / "laffi_train.json").write_text(json.dumps({"answer_prefix": "Good answer: "}))
    return out


@pytest.fixture()
def questions(small_squad: Path) -> list:
    return load_squad(small_squad)[:6]


SETTINGS = AnswerConfig(shots=1, batch_size=4, max_new_tokens=8)


def _model(tiny_model_dir: Path) -> ModelConfig:
    return ModelConfig(str(tiny_model_dir), "float32")


def _vllm(settings: AnswerConfig = SETTINGS) -> AnswerConfig:
    return replace(settings, engine="vllm")


def _read(path: Path) -> dict:
    return json.loads(path.read_text())


def test_engine_setting_defaults_to_transformers_and_checks_choices():
    assert AnswerConfig().engine == "transformers"
    assert load_run_config(None, ["answer.engine=vllm"]).answer.engine == "vllm"
    with pytest.raises(LaffiError, match="answer.engine: must be one of transformers, vllm"):
        load_run_config(None, ["answer.engine=llama.cpp"])


@pytest.mark.skipif(not NO_VLLM, reason="vLLM is installed here: the not-installed error cannot happen")
def test_answer_without_vllm_is_one_line_error(tmp_path, small_squad, tiny_model_dir):
    r = subprocess.run([sys.executable, "-m", "laffi", "answer", "--data", str(small_squad), "--out",
                        str(tmp_path / "preds.json"), "--model", str(tiny_model_dir), "--engine", "vllm"],
                       capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines()[-1] == ("laffi: error: answer.engine: 'vllm' is not installed (pip install "
                                                 "'laffi[gpu]', on a machine with a GPU)")  # fmt: skip
    assert not (tmp_path / "preds.json").exists()


def test_lora_rank_rounds_up_to_a_rank_vllm_accepts(tmp_path):
    for r, expected in ((4, 8), (8, 8), (16, 16), (17, 32), (300, 320)):
        (tmp_path / "adapter_config.json").write_text(json.dumps({"r": r}))
        assert engine.lora_rank(str(tmp_path)) == expected
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 1024}))
    with pytest.raises(LaffiError, match="above vLLM's largest"):
        engine.lora_rank(str(tmp_path))
    with pytest.raises(LaffiError, match="not a PEFT adapter directory"):
        engine.lora_rank(str(tmp_path / "missing"))


def test_supported_range_is_the_gpu_extra():
    tomllib = pytest.importorskip("tomllib")
    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    assert pyproject["project"]["optional-dependencies"]["gpu"] == ["vllm" + ",".join(engine.SUPPORTED)]


@pytest.mark.parametrize("version", ["0.19.1", "0.34.0", "1.0.0"])
def test_a_vllm_outside_the_range_is_refused_in_one_line(stub_vllm, monkeypatch, version):
    monkeypatch.setattr(stub_vllm, "__version__", version)
    with pytest.raises(LaffiError) as e:
        engine.require_vllm()
    assert str(e.value) == (f"answer.engine: vllm {version} is installed; laffi runs with vllm>=0.20,<0.34 (pip "
                            "install 'vllm>=0.20,<0.34')")  # fmt: skip
    assert not stub_vllm.ENGINES


def test_engine_keywords_are_fields_of_the_pinned_vllm(adapters):
    for adapter in (None, str(adapters[0])):
        assert set(engine.engine_args("/m", "float32", adapter)) <= vllm_api.ENGINE_ARGS
    # The stub refuses what the real classes refuse.
    sys.path.insert(0, str(STUBS))
    try:
        saved = _drop_vllm_modules()
        import vllm
        from vllm.inputs import TokensPrompt

        with pytest.raises(TypeError, match="not in the pinned vLLM's API"):
            vllm.SamplingParams(max_new_tokens=8)
        with pytest.raises(TypeError, match="not in the pinned vLLM's API"):
            vllm.LLM(model="/m", enable_lora_bias=True)
        with pytest.raises(TypeError, match="not in the pinned vLLM's API"):
            TokensPrompt(input_ids=[1])
        with pytest.raises(ValueError, match="logprobs must equal"):
            vllm.SamplingParams(logprobs=2, logprob_token_ids=[5])
    finally:
        sys.path.remove(str(STUBS))
        _drop_vllm_modules()
        sys.modules.update(saved)


def test_one_engine_across_answer_sets_and_adapters(stub_vllm, tiny_model_dir, small_squad, adapters, tmp_path):
    from laffi.pipeline import stages

    qs = load_squad(small_squad)
    model = _model(tiny_model_dir)
    stages.answer(qs[:3], tmp_path / "a.json", model, _vllm(), progress=False)
    stages.answer(qs[3:6], tmp_path / "b.json", model, _vllm(), progress=False)
    assert len(stub_vllm.ENGINES) == 1 and stub_vllm.EVENTS == []
    # An adapter needs LoRA, which the first engine was built without: it is released, one engine with LoRA built.
    for i, adapter in enumerate(adapters):
        stages.answer(qs[:3], tmp_path / f"lora{i}.json", model, _vllm(), adapter=str(adapter), progress=False)
    stages.answer(qs[:3], tmp_path / "base-again.json", model, _vllm(), progress=False)
    assert len(stub_vllm.ENGINES) == 2
    assert stub_vllm.EVENTS == ["shutdown", "destroy_model_parallel", "destroy_distributed_environment"]
    lora_engine = stub_vllm.ENGINES[1]
    assert lora_engine.kwargs == {"model": str(tiny_model_dir), "tokenizer": str(tiny_model_dir), "dtype": "float32",
                                  "enable_prefix_caching": True, "seed": 0, "enable_lora": True, "max_lora_rank": 8,
                                  "max_loras": 1}  # fmt: skip
    # Each adapter its own LoRA id (vLLM serves a loaded adapter by its id); the base model without a LoRARequest.
    served = [(r["lora_request"].lora_int_id, r["lora_request"].lora_path) if r["lora_request"] else None
              for r in lora_engine.requests]  # fmt: skip
    assert sorted(set(served) - {None}) == [(1, str(adapters[0].resolve())), (2, str(adapters[1].resolve()))]
    assert served[-3:] == [None, None, None]
    for r in lora_engine.requests:
        assert set(r["params"].kwargs) <= vllm_api.SAMPLING_PARAMS
    # Answers with the same model and adapter are the same whichever engine served them.
    assert _read(tmp_path / "base-again.json") == _read(tmp_path / "a.json")


def test_engine_is_released_before_a_model_is_loaded(stub_vllm, tiny_model_dir, questions, tmp_path):
    from laffi.models import load_model
    from laffi.pipeline import stages

    stages.answer(questions, tmp_path / "a.json", _model(tiny_model_dir), _vllm(), progress=False)
    assert stub_vllm.EVENTS == []
    load_model(str(tiny_model_dir))  # as training, in-process annotation, attention or the transformers engine do
    assert stub_vllm.EVENTS == ["shutdown", "destroy_model_parallel", "destroy_distributed_environment"]
    load_model(str(tiny_model_dir))  # nothing left to release
    assert len(stub_vllm.EVENTS) == 3
    stages.answer(questions, tmp_path / "b.json", _model(tiny_model_dir), _vllm(), progress=False)
    assert len(stub_vllm.ENGINES) == 2


def test_engine_is_released_before_a_training_launcher_starts(stub_vllm, tiny_model_dir, questions, tmp_path):
    from laffi.pipeline import stages

    stages.answer(questions, tmp_path / "a.json", _model(tiny_model_dir), _vllm(), progress=False)
    cfg = replace(TrainConfig(), method="sft", launcher="false")  # a launcher that exits at once, with status 1
    with pytest.raises(LaffiError, match="exited with status 1"):
        stages.launch_training(questions, None, tmp_path / "adapter", _model(tiny_model_dir), cfg, 1, False)
    assert stub_vllm.EVENTS[0] == "shutdown"


def _record_prompts(monkeypatch) -> list[list[list[int]]]:
    """The prompt token ids the transformers engine decodes, one list per decoding call."""
    from laffi.engines import prefix_cache

    seen: list[list[list[int]]] = []
    original = prefix_cache.greedy_ids

    def recording(model, encoded, *args, **kwargs):
        seen.append([list(ids) for ids in encoded])
        return original(model, encoded, *args, **kwargs)

    monkeypatch.setattr(prefix_cache, "greedy_ids", recording)
    return seen


@pytest.mark.parametrize("with_adapter", [False, True], ids=["base", "adapter"])
def test_prompts_answers_and_na_probs_match_the_transformers_engine(
    stub_vllm, monkeypatch, tiny_model_dir, questions, adapters, tmp_path, with_adapter
):
    from laffi.pipeline import stages

    adapter = str(adapters[1]) if with_adapter else None  # the adapter with an answer prefix
    model = _model(tiny_model_dir)
    seen = _record_prompts(monkeypatch)
    stages.answer(questions, tmp_path / "hf.json", model, SETTINGS, adapter=adapter, progress=False)
    stages.answer(questions, tmp_path / "vllm.json", model, _vllm(), adapter=adapter, progress=False)
    llm = stub_vllm.ENGINES[0]
    assert [r["prompt_token_ids"] for r in llm.requests[: len(questions)]] == seen[0]
    if with_adapter:
        suffix = llm.tokenizer("Good answer: ", add_special_tokens=False)["input_ids"]
        assert all(ids[-len(suffix) :] == suffix for ids in seen[0][:1])
    assert _read(tmp_path / "vllm.json") == _read(tmp_path / "hf.json")
    hf, fast = _read(tmp_path / "hf.na_prob.json"), _read(tmp_path / "vllm.na_prob.json")
    assert list(fast) == list(hf) == [q.id for q in questions]
    assert all(_close(fast[k], hf[k]) for k in hf), (hf, fast)
    assert len(set(hf.values())) > 1  # scores that differ between questions, not a constant


def test_na_prob_when_the_first_token_is_the_abstention_token(stub_vllm, tiny_model_dir, questions):
    """The branch the tiny model never takes on its own: its first token is the abstention token, so "own" is the
    best other token (steering.na_probability); the score comes from a second, one-token request with the top 2."""
    import torch
    from transformers import AutoModelForCausalLM

    from laffi import prompts
    from laffi.engines.steering import na_probability
    from laffi.models import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_model_dir))
    lm = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    llm = engine.engine(str(tiny_model_dir), "float32", None)
    for q in questions[:3]:
        ids = tokenizer(prompts.render(prompts.qa_messages(q, 1), tokenizer), add_special_tokens=False)["input_ids"]
        with torch.inference_mode():
            logits = lm(input_ids=torch.tensor([ids])).logits[0, -1]
        own = int(logits.argmax())
        other = int(logits.argsort(descending=True)[5])  # a token that is not the model's first choice
        for abstain in (own, other):
            _, (na,) = engine.generate(llm, [ids], 4, [tokenizer.eos_token_id], None, abstain)
            assert _close(na, na_probability(logits, own, abstain))
    asked = [r["params"].kwargs for r in llm.requests]
    assert {"temperature": 0.0, "max_tokens": 1, "logprobs": 2} in asked  # the second request, own == abstain


def test_verdict_scores_match_the_transformers_engine(stub_vllm, monkeypatch, tiny_model_dir, questions, adapters,
                                                      tmp_path):  # fmt: skip
    from laffi.pipeline import stages

    settings = replace(SETTINGS, na_score="verdict")
    model = _model(tiny_model_dir)
    adapter = str(adapters[0])
    seen = _record_prompts(monkeypatch)
    stages.answer(questions, tmp_path / "hf.json", model, settings, adapter=adapter, progress=False)
    stages.answer(questions, tmp_path / "vllm.json", model, _vllm(settings), adapter=adapter, progress=False)
    requests = stub_vllm.ENGINES[0].requests
    verdict = [r["prompt_token_ids"] for r in requests if len(r["params"].kwargs.get("logprob_token_ids", [])) == 2]
    assert verdict == seen[-1]  # the feedback prompts, ending "Verdict:"
    for name in ("na_prob", "first_token.na_prob"):
        hf, fast = _read(tmp_path / f"hf.{name}.json"), _read(tmp_path / f"vllm.{name}.json")
        assert list(fast) == list(hf) == [q.id for q in questions]
        assert all(_close(fast[k], hf[k]) for k in hf), (name, hf, fast)
    assert _read(tmp_path / "vllm.na_prob.json") != _read(tmp_path / "vllm.first_token.na_prob.json")


def test_constrained_answers_stay_on_transformers(stub_vllm, tiny_model_dir, questions, tmp_path):
    from laffi.pipeline import stages

    with pytest.raises(LaffiError, match="answer.constrain: runs on the 'transformers' engine only"):
        stages.answer(questions, tmp_path / "a.json", _model(tiny_model_dir), _vllm(replace(SETTINGS,
                                                                                            constrain="span")),
                      progress=False)  # fmt: skip
    assert not stub_vllm.ENGINES


def test_laffi_run_on_vllm_releases_before_training_and_calibrates(stub_vllm, tmp_path, tiny_model_dir,
                                                                   excerpt_questions):  # fmt: skip
    """`laffi run` with answer.engine vllm: each training stage (in this process) finds the engine released; every
    answer set gets its no-answer scores, so the report has calibrated rows and AUCs."""
    from laffi.config import load_run_config
    from laffi.data import write_squad
    from laffi.experiment import run_and_report
    from laffi.grid import run_preset

    picked: dict = {}
    for q in excerpt_questions:  # two answerable and two unanswerable questions from each article
        picked.setdefault((q.title, q.is_impossible), []).append(q)
    data = tmp_path / "data.json"
    write_squad(sorted((q for qs in picked.values() for q in qs[:2]), key=excerpt_questions.index), data)
    cfg = load_run_config(None, [
        f"out_dir={tmp_path / 'run'}", f"model.name={tiny_model_dir}", "model.dtype=float32", f"data.path={data}",
        "methods=[base, sft, laffi]", "answer.engine=vllm", "answer.max_new_tokens=3", "train.max_steps=1",
        "train.lora_r=2", "train.batch_size=2", "train.micro_batch_size=2", "data.train_questions=0",
        "data.calibration_questions=4",
    ])  # fmt: skip
    from laffi import models

    loads = []  # (trainable, an engine live before the load, an engine live after it)
    original = models.load_model

    def recording(*args, **kwargs):
        before = engine._ENGINE is not None
        lm = original(*args, **kwargs)
        loads.append((kwargs.get("trainable", False), before, engine._ENGINE is not None))
        return lm

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(models, "load_model", recording)
        summary = run_and_report(run_preset(cfg), log=lambda m: None, progress=False)
    run = tmp_path / "run"
    # sft and laffi each trained in this process, each finding the engine of the answers before it live, and each
    # model load released it.
    assert [t for t in loads if t[0]] == [(True, True, False), (True, True, False)]
    assert not any(after for _, _, after in loads)
    assert [e.kwargs.get("enable_lora", False) for e in stub_vllm.ENGINES] == [False, True, True]
    assert stub_vllm.EVENTS.count("shutdown") == len(stub_vllm.ENGINES) - (engine._ENGINE is not None)
    for cell in ("base", "sft/n4-seed0", "laffi/n4-seed0-human0"):
        for name in ("eval_answers", "calibration_answers"):
            assert (run / "cells" / cell / f"{name}.na_prob.json").exists(), (cell, name)
        assert "na_score_auc" in summary.cells[cell]
        assert "calibrated" in summary.cells[cell]
    assert "(calibrated)" in (run / "results.md").read_text()
