"""sdft (laffi/methods/sdft.py): what student and teacher see, the loss against TRL's SDFTTrainer on one batch, pinned
per-step losses, exact resume, cache keys, and `laffi train --method sdft` on the tiny random model."""

import json

import pytest

from laffi import prompts
from laffi.config import ModelConfig, TrainConfig, train_cache_settings
from laffi.errors import LaffiError
from laffi.feedback import headroom, reference
from laffi.files import write_jsonl
from laffi.methods import build_examples
from laffi.records import Question

CTX = "Rollo led the Normans. They settled in Normandy in 911."
QA = Question(id="a", title="N", context=CTX, question="Who led the Normans?", answers=["Rollo"], answer_starts=[0])
QI = Question(id="b", title="N", context=CTX, question="Who led the Danes?", is_impossible=True)
SMALL = dict(method="sdft", batch_size=4, micro_batch_size=2, lora_r=4, learning_rate=1e-2, warmup_ratio=0.0,
             sdft_max_completion_length=6)  # fmt: skip


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from laffi.models import load_tokenizer

    return load_tokenizer(str(tiny_model_dir))


def _records(questions):
    return [reference.annotate(q, "") for q in questions]


def test_student_prompt_is_the_qa_prompt_and_teacher_prompt_the_refinement_prompt(tokenizer):
    fb = reference.annotate(QA, "911")
    (ex,) = build_examples("sdft", [QA], [fb], tokenizer, shots=2, seed=0)
    assert (ex.kind, ex.id, ex.completion) == ("sdft", "a", "")
    assert ex.prompt == prompts.render(prompts.qa_messages(QA, 2), tokenizer)
    assert ex.teacher_prompt == headroom.condition_prompt("feedback", QA, fb, tokenizer)
    assert ex.teacher_prompt == prompts.render(prompts.refine_messages(QA, "911", fb.feedback), tokenizer)
    assert f"Feedback: {fb.feedback}" in ex.teacher_prompt and "Your answer: 911" in ex.teacher_prompt
    assert fb.feedback not in ex.prompt and "911" not in ex.prompt.split("Passage: " + CTX)[-1]
    with pytest.raises(LaffiError, match="needs feedback"):
        build_examples("sdft", [QA], None, tokenizer, shots=0, seed=0)


def test_teacher_prompt_qa_is_the_students_prompt_with_the_first_answer_and_the_feedback(tokenizer):
    """`train.sdft_teacher_prompt: qa`: the teacher's chat is the student's (system text, shots) up to the question's
    turn, which adds the first answer, the feedback and the instruction; the headroom probe's `feedback` condition in
    the same layout is the same text."""
    fb = reference.annotate(QA, "911")
    (ex,) = build_examples("sdft", [QA], [fb], tokenizer, shots=2, seed=0, train=TrainConfig(sdft_teacher_prompt="qa"))
    assert ex.prompt == prompts.render(prompts.qa_messages(QA, 2), tokenizer)
    assert ex.teacher_prompt == headroom.condition_prompt("feedback", QA, fb, tokenizer, "qa", 2)
    student = prompts.qa_messages(QA, 2)
    teacher = prompts.qa_revise_messages(QA, 2, "911", fb.feedback)
    assert teacher[:-1] == student[:-1] and teacher[-1]["content"].startswith(student[-1]["content"])
    assert teacher[-1]["content"][len(student[-1]["content"]):] == (
        f"\n\nYour answer: 911\n\nFeedback: {fb.feedback}\n\nAnswer the question again, using the feedback.")
    assert prompts.SHOTS[1][2] in ex.teacher_prompt and fb.feedback not in ex.prompt
    # The default is the refinement prompt (no shots), the probe's default layout.
    (default,) = build_examples("sdft", [QA], [fb], tokenizer, shots=2, seed=0, train=TrainConfig())
    assert default.teacher_prompt == headroom.condition_prompt("feedback", QA, fb, tokenizer)
    with pytest.raises(ValueError, match="no revision prompt layout"):
        prompts.revise_messages("chat", QA, 2, "911", fb.feedback)


def test_in_training_the_teacher_reads_the_feedback_and_the_student_does_not(tmp_path, tiny_model_dir, tokenizer,
                                                                              monkeypatch):  # fmt: skip
    """The token rows each forward pass of a step runs: the student's are its QA prompt + the sampled completion,
    the teacher's the refinement prompt (with the feedback) + the same completion."""
    from laffi.training.distill import SelfDistillation
    from laffi.training.loop import train

    fb = reference.annotate(QA, "911")
    seen = []
    real = SelfDistillation.completion_logits

    def record(self, rows, starts, completions):
        seen.append([(tokenizer.decode(r[:s]), r[s:]) for r, s in zip(rows, starts, strict=True)])
        return real(self, rows, starts, completions)

    monkeypatch.setattr(SelfDistillation, "completion_logits", record)
    examples = build_examples("sdft", [QA], [fb], tokenizer, shots=0, seed=0)
    train(str(tiny_model_dir), "float32", examples, TrainConfig(**{**SMALL, "max_steps": 1}), tmp_path / "a",
          progress=False)  # fmt: skip
    (student,), (teacher,) = seen
    assert student[0] == examples[0].prompt and teacher[0] == examples[0].teacher_prompt
    assert student[1] == teacher[1] and len(student[1]) >= 1  # one completion, sampled from the student
    assert fb.feedback in teacher[0] and "Feedback:" not in student[0] and "Your answer" not in student[0]


def _trl_batch(tokenizer, student, teacher, completions, pad_id):
    """The batch SDFTTrainer.compute_loss reads: prompts padded on the left, completions on the right."""
    import torch
    from trl.trainer.utils import pad

    def left(rows):
        ids = pad([torch.tensor(r) for r in rows], padding_value=pad_id, padding_side="left")
        return ids, pad([torch.ones(len(r), dtype=torch.long) for r in rows], padding_value=0, padding_side="left")

    prompt_ids, prompt_mask = left(student)
    teacher_ids, teacher_mask = left(teacher)
    completion_ids = pad([torch.tensor(c) for c in completions], padding_value=pad_id, padding_side="right")
    completion_mask = pad([torch.ones(len(c), dtype=torch.long) for c in completions], padding_value=0,
                          padding_side="right")  # fmt: skip
    return {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "completion_ids": completion_ids,
            "completion_mask": completion_mask, "teacher_input_ids": torch.cat([teacher_ids, completion_ids], 1),
            "teacher_attention_mask": torch.cat([teacher_mask, completion_mask], 1)}  # fmt: skip


@pytest.mark.parametrize(("settings"), [
    {},  # TRL's defaults: top-100 logits, alpha 0.5, base teacher
    {"sdft_distillation_alpha": 0.0}, {"sdft_distillation_alpha": 1.0},
    {"sdft_distillation_add_tail": True, "sdft_distillation_topk": 7},
    {"sdft_distillation_mode": "full_logits", "sdft_distillation_alpha": 0.3},
    {"sdft_distillation_mode": "sampled_token", "sdft_distillation_alpha": 1.0},
    {"sdft_teacher_model_kind": "live", "sdft_temperature": 0.7, "sdft_num_loss_tokens_to_skip": 1},
    {"sdft_teacher_model_kind": "ema", "sdft_teacher_update_rate": 0.3},
])  # fmt: skip
def test_loss_equals_trl_sdft_trainer_on_one_batch(tmp_path, tiny_model_dir, tokenizer, excerpt_questions, settings):
    """laffi's step and trl.experimental.sdft.SDFTTrainer.compute_loss on the same model, prompts and completions
    (one ending with the end of turn, one cut at the length limit): equal losses to 1e-5, gradients to float
    rounding (TRL pads prompts on the left, laffi rows on the right)."""
    import torch
    from datasets import Dataset
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM
    from trl.experimental.sdft import SDFTConfig, SDFTTrainer

    from laffi.training.distill import SelfDistillation
    from laffi.training.loop import lora_config

    cfg = TrainConfig(**{**SMALL, "lora_dropout": 0.0, **settings})
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32), lora_config(cfg))
    for name, p in model.named_parameters():
        if "lora_B" in name:  # an adapter that has learned something: student and base teacher differ
            torch.nn.init.normal_(p, std=0.3)
    qs = excerpt_questions[:3]
    examples = build_examples("sdft", qs, _records(qs), tokenizer, shots=1, seed=0)
    distill = SelfDistillation(model, tokenizer, examples, cfg)
    eos = tokenizer.eos_token_id
    completions = [tokenizer("Rollo", add_special_tokens=False)["input_ids"] + [eos],
                   tokenizer(" the Normans in Normandy", add_special_tokens=False)["input_ids"][:6],
                   tokenizer("unanswerable", add_special_tokens=False)["input_ids"] + [eos]]  # fmt: skip

    args = SDFTConfig(output_dir=str(tmp_path / "trl"), use_cpu=True, report_to="none", per_device_train_batch_size=3,
                      num_generations=1, max_completion_length=cfg.sdft_max_completion_length,
                      temperature=cfg.sdft_temperature, teacher_model_kind=cfg.sdft_teacher_model_kind,
                      teacher_update_rate=cfg.sdft_teacher_update_rate, distillation_mode=cfg.sdft_distillation_mode,
                      distillation_alpha=cfg.sdft_distillation_alpha, distillation_topk=cfg.sdft_distillation_topk,
                      distillation_add_tail=cfg.sdft_distillation_add_tail,
                      num_loss_tokens_to_skip=cfg.sdft_num_loss_tokens_to_skip)  # fmt: skip
    data = Dataset.from_dict({"prompt": ["-"] * 3, "privileged_context": ["-"] * 3})
    trainer = SDFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer)
    trainer.current_gradient_accumulation_steps = 1
    if cfg.sdft_teacher_model_kind == "ema":  # one EMA update of each teacher from the same adapter
        (callback,) = [c for c in trainer.callback_handler.callbacks if type(c).__name__ == "PEFTAdapterEMACallback"]
        callback._initialize_teacher_adapter()
        trainer.state.global_step = 1
        callback.on_step_end(args, trainer.state, trainer.control)
        distill.after_step(1)

    def grads(loss):
        model.zero_grad()
        loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}

    model.train()
    trl_loss = trainer.compute_loss(model, _trl_batch(tokenizer, distill.student, distill.teacher, completions,
                                                      distill.pad_id))  # fmt: skip
    trl_grads = grads(trl_loss)
    loss_sum, tokens, _ = distill.batch_loss(distill.student, distill.teacher, completions)
    ours = loss_sum / len(completions)
    our_grads = grads(ours)
    assert tokens == sum(len(c) for c in completions) - 3 * cfg.sdft_num_loss_tokens_to_skip
    assert ours.item() != 0 and abs(ours.item() - trl_loss.item()) < 1e-5  # sampled_token: a surrogate, any sign
    assert our_grads.keys() == trl_grads.keys() and our_grads
    for name, g in our_grads.items():
        torch.testing.assert_close(g, trl_grads[name], atol=1e-4, rtol=1e-3)  # float rounding of other paddings


def test_bf16_autocast_keeps_gradients_and_the_ema_teacher_weights(tmp_path, tiny_model_dir, tokenizer,
                                                                    excerpt_questions):  # fmt: skip
    """In the loop's bf16 autocast region (LoRA run in the base model's dtype) sampling, student and teacher share
    one cast cache: the student still gets gradients, and the EMA teacher (from zero: the base model) reads its own
    weights, not the student's casts. A bf16 run with gradient checkpointing trains (its recompute casts as its
    forward pass did)."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from laffi.training.distill import SelfDistillation
    from laffi.training.loop import _lora_in_base_dtype, lora_config, train

    cfg = TrainConfig(**{**SMALL, "lora_dropout": 0.0})
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16)
    model = get_peft_model(base, lora_config(cfg))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.3)
    qs = excerpt_questions[:2]
    examples = build_examples("sdft", qs, _records(qs), tokenizer, shots=0, seed=0)
    autocast = _lora_in_base_dtype(model)
    model.train()
    losses = {}
    for kind in ("base", "live", "ema"):
        settings = TrainConfig(**{**SMALL, "lora_dropout": 0.0, "sdft_teacher_model_kind": kind})
        distill = SelfDistillation(model, tokenizer, examples, settings)
        with autocast:
            completions = distill.sample(distill.student)
            loss, _, _ = distill.batch_loss(distill.student, distill.teacher, [[11, 12, 13]] * 2)
        model.zero_grad()
        loss.backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in distill.adapter), kind
        assert all(len(c) >= 1 for c in completions)
        losses[kind] = loss.item()
    assert losses["ema"] == losses["base"] != losses["live"]
    info = train(str(tiny_model_dir), "bfloat16", examples, TrainConfig(**{**SMALL, "max_steps": 1}), tmp_path / "a",
                 progress=False)  # fmt: skip
    assert info["steps"] == 1


def _train_log(out):
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


# Four steps of 4 examples on 6 questions (an epoch is 2 steps): every completion reaches the 6-token limit.
PINNED_LOSSES = {"refinement": [0.07613848522305489, 0.0767480880022049, 0.0697999857366085, 0.05565158650279045],
                 "qa": [0.07196569815278053, 0.07410147786140442, 0.08248819410800934, 0.06902498751878738]}
PINNED_TOKENS = [24, 12, 24, 12]


@pytest.mark.parametrize("layout", ["refinement", "qa"])
def test_seeded_sdft_run_has_these_per_step_losses(tmp_path, tiny_model_dir, tokenizer, excerpt_questions, layout):
    from laffi.training.loop import train

    qs = excerpt_questions[:6]
    cfg = TrainConfig(**{**SMALL, "max_steps": 4, "sdft_teacher_prompt": layout})
    examples = build_examples("sdft", qs, _records(qs), tokenizer, shots=0, seed=0, train=cfg)
    info = train(str(tiny_model_dir), "float32", examples, cfg, tmp_path / "a", progress=False)
    log = _train_log(tmp_path / "a")
    assert [e["loss"] for e in log] == pytest.approx(PINNED_LOSSES[layout], abs=1e-6)
    assert [e["loss_tokens"] for e in log] == PINNED_TOKENS
    assert info["sdft"]["teacher"] == "base" and info["loss_tokens"] == sum(PINNED_TOKENS)
    assert info["sdft"]["teacher_prompt"] == layout and info["examples_by_kind"] == {"sdft": 6}


def test_interrupted_sdft_run_resumes_to_the_same_adapter(tmp_path, tiny_model_dir, tokenizer, excerpt_questions,
                                                          monkeypatch):  # fmt: skip
    """Killed after the step-2 checkpoint and run again: the same samples, losses and adapter as one run (the EMA
    teacher and the sampling generator are part of the checkpoint)."""
    import torch
    from safetensors.torch import load_file

    from laffi.training.loop import train

    qs = excerpt_questions[:6]
    examples = build_examples("sdft", qs, _records(qs), tokenizer, shots=0, seed=0)
    cfg = TrainConfig(**{**SMALL, "max_steps": 4, "save_steps": 2, "sdft_teacher_model_kind": "ema",
                         "sdft_teacher_update_rate": 0.5})  # fmt: skip
    train(str(tiny_model_dir), "float32", examples, cfg, tmp_path / "full", progress=False)
    real_step = torch.optim.AdamW.step
    calls = {"n": 0}

    def crash_on_third(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        train(str(tiny_model_dir), "float32", examples, cfg, tmp_path / "resumed", progress=False)
    state = torch.load(tmp_path / "resumed.partial" / "state.pt", weights_only=True)
    assert len(state["log"]) == 2 and state["distill"]["shadow"]
    monkeypatch.setattr(torch.optim.AdamW, "step", real_step)
    train(str(tiny_model_dir), "float32", examples, cfg, tmp_path / "resumed", progress=False)
    a = load_file(tmp_path / "full" / "adapter_model.safetensors")
    b = load_file(tmp_path / "resumed" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert _train_log(tmp_path / "full") == _train_log(tmp_path / "resumed")


def test_sdft_settings_key_sdft_training_only():
    plain = train_cache_settings(TrainConfig(method="sft"))
    assert not [k for k in plain if k.startswith("sdft_")]
    assert train_cache_settings(TrainConfig(method="sft", sdft_distillation_alpha=0.1)) == plain
    sdft = train_cache_settings(TrainConfig(method="sdft"))
    assert sdft["sdft_distillation_mode"] == "topk_logits" and sdft["sdft_teacher_model_kind"] == "base"
    assert train_cache_settings(TrainConfig(method="sdft", sdft_distillation_alpha=0.1)) != sdft
    assert sdft["sdft_teacher_prompt"] == "refinement"
    assert train_cache_settings(TrainConfig(method="sdft", sdft_teacher_prompt="qa")) != sdft
    assert train_cache_settings(TrainConfig(method="sft", sdft_teacher_prompt="qa")) == plain


def test_laffi_train_method_sdft_on_the_tiny_model(tmp_path, small_squad, tiny_model_dir):
    """`laffi train --method sdft --feedback FB.jsonl` saves an adapter that `laffi answer` uses; a setting TRL
    refuses is one line before any work."""
    from laffi.cli import main
    from laffi.data import load_squad

    qs = load_squad(small_squad)
    fb = tmp_path / "fb.jsonl"
    write_jsonl(fb, [reference.annotate(q, "Normandy") for q in qs[:5]])
    adapter = tmp_path / "adapter"
    common = ["--data", str(small_squad), "--feedback", str(fb), "--model", str(tiny_model_dir), "--dtype", "float32",
              "--set", "train.max_steps=2", "--set", "train.lora_r=2", "--set", "train.batch_size=4",
              "--set", "train.sdft_max_completion_length=4", "--no-progress"]  # fmt: skip
    main(["train", "--method", "sdft", "--out", str(adapter), *common])
    info = json.loads((adapter / "laffi_train.json").read_text())
    assert info["config"]["method"] == "sdft" and info["examples_by_kind"] == {"sdft": 5} and info["steps"] == 2
    assert info["sdft"]["teacher"] == "base" and len(_train_log(adapter)) == 2
    preds = tmp_path / "preds.json"
    main(["answer", "--data", str(small_squad), "--out", str(preds), "--model", str(tiny_model_dir),
          "--adapter", str(adapter), "--dtype", "float32", "--max-new-tokens", "3"])  # fmt: skip
    assert len(json.loads(preds.read_text())) == 12
    with pytest.raises(SystemExit) as stop:
        main(["train", "--method", "sdft", "--out", str(tmp_path / "bad"), *common,
              "--set", "train.sdft_distillation_mode=sampled_token"])  # fmt: skip
    assert stop.value.code == 2 and not (tmp_path / "bad").exists()


def test_sdft_refuses_settings_trl_refuses(tmp_path, tiny_model_dir):
    from laffi.pipeline import stages

    model = ModelConfig(str(tiny_model_dir), "float32")
    for bad, match in [({"sdft_distillation_mode": "sampled_token"}, "sdft_distillation_alpha"),
                       ({"sdft_temperature": 0.0}, "sdft_temperature"),
                       ({"max_length": 32, "sdft_max_completion_length": 32}, "train.max_length")]:  # fmt: skip
        with pytest.raises(LaffiError, match=match):
            stages.train([QA], [reference.annotate(QA, "911")], tmp_path / "a", model, TrainConfig(**{**SMALL, **bad}),
                         shots=0, progress=False)  # fmt: skip


def test_laffi_run_trains_an_sdft_cell_on_the_run_feedback(tmp_path, tiny_model_dir, grid_data):
    """`laffi run` with methods [base, sdft]: the sdft cell trains on the feedback on the base model's training
    answers (the annotator's share of the run's feedback, as coh and refine cells) and is answered and reported."""
    from laffi.cli import main
    from laffi.records import FeedbackRecord, read_jsonl

    config = tmp_path / "run.yaml"
    config.write_text("methods: [base, sdft]\n")
    run = tmp_path / "run"
    main(["run", str(config), "--set", f"out_dir={run}", "--set", f"model.name={tiny_model_dir}",
          "--set", "model.dtype=float32", "--set", f"data.path={grid_data(1)}", "--set", "data.train_questions=0",
          "--set", "answer.max_new_tokens=3", "--set", "train.max_steps=1", "--set", "train.lora_r=2",
          "--set", "train.batch_size=2", "--set", "train.micro_batch_size=2",
          "--set", "train.sdft_max_completion_length=4", "--no-progress"])  # fmt: skip
    (cell,) = (run / "cells" / "sdft").iterdir()
    info = json.loads((cell / "adapter" / "laffi_train.json").read_text())
    assert info["config"]["method"] == "sdft" and info["sdft"]["teacher"] == "base"
    feedback = read_jsonl(run / "feedback" / f"sdft-{cell.name}.jsonl", FeedbackRecord)
    assert info["examples_by_kind"] == {"sdft": len(feedback)} and feedback
    first = json.loads((run / "base" / "train_answers.json").read_text())  # the teacher's first answers
    assert all(r.predicted_answer == first[r.id] for r in feedback)
    assert json.loads((cell / "eval_answers.json").read_text())
    assert f"sdft/{cell.name}" in json.loads((run / "results.json").read_text())["cells"]


def test_an_experiment_sets_sdft_gain_beside_the_headroom_of_its_feedback(tmp_path, tiny_model_dir, grid_data,
                                                                          monkeypatch):  # fmt: skip
    """`laffi experiment` with methods [base, sdft] and the headroom probe: the report sets sdft's gain over base
    beside the headroom of the AI feedback it trained on (table and plot). With the 'qa' teacher prompt, sdft trains
    again and the probe asks in that layout; nothing else is made again."""
    from laffi.config import ExperimentConfig, load_run_config
    from laffi.experiment import run_and_report
    from laffi.feedback import headroom as probe

    layouts = []
    real = probe.condition_prompt

    def record(*args):
        layouts.append(args[4:])
        return real(*args)

    monkeypatch.setattr(probe, "condition_prompt", record)
    settings = [
        f"out_dir={tmp_path / 'exp'}", f"model.name={tiny_model_dir}", "model.dtype=float32",
        f"data.path={grid_data(1)}", "methods=[base, sdft]", "seeds=[0]", "train_sizes=[2]", "headroom=true",
        "example_questions=0", "data.calibration_questions=0", "answer.max_new_tokens=3", "train.max_steps=1",
        "train.lora_r=2", "train.batch_size=2", "train.micro_batch_size=2", "train.sdft_max_completion_length=4",
    ]  # fmt: skip
    summary = run_and_report(load_run_config(None, settings, ExperimentConfig), log=lambda m: None, progress=False)
    assert layouts and {layout for layout, _ in layouts} == {"refinement"}
    (row,) = summary.gain_vs_headroom
    assert (row["method"], row["size"], row["source"]) == ("sdft", 2, "ai")
    assert row["headroom"] == summary.headroom["ai"]["headroom"]["f1"]
    assert row["gain"] == summary.paired["n=2"]["sdft vs base"]["mean_diff"]
    h = json.loads((tmp_path / "exp" / "headroom" / "ai" / "H.json").read_text())
    assert row["feedback_vs_first"] == 100 * h["conditions"]["feedback"]["vs_first"]["mean_diff"]
    assert (tmp_path / "exp" / "plots" / "gain_vs_headroom.png").stat().st_size > 0
    assert "| sdft | 2 | 1 | ai |" in (tmp_path / "exp" / "results.md").read_text()
    to_abstain = summary.paired["n=2"]["base vs abstain"]
    assert (f"| abstain on every question | - | - | - | - | - | {-to_abstain['mean_diff']:+.1f} "
            in (tmp_path / "exp" / "results.md").read_text())
    assert h["layout"] == {"prompt": "refinement", "shots": 0}
    assert "training questions again with the refinement prompt" in (tmp_path / "exp" / "results.md").read_text()
    layouts.clear()
    logs = []
    qa = load_run_config(None, [*settings, "train.sdft_teacher_prompt=qa"], ExperimentConfig)
    run_and_report(qa, log=logs.append, progress=False)
    assert layouts and set(layouts) == {("qa", 2)}
    made = [m for m in logs if not m.startswith("[") and not m.endswith("is up to date")]
    assert [m.split(":")[0] for m in made] == ["train sdft/n2-seed0-human0", "headroom"], logs
    h = json.loads((tmp_path / "exp" / "headroom" / "ai" / "H.json").read_text())
    assert h["layout"] == {"prompt": "qa", "shots": 2}
    text = (tmp_path / "exp" / "results.md").read_text()
    assert "training questions again with the 2-shot QA prompt as sdft's `qa` teacher reads it" in text
    assert "feedback - first (the 2-shot QA prompt as sdft's `qa` teacher reads it with the feedback" in text
