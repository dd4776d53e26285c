"""Regenerate the example sequences in docs/methods.md from the code: `.venv/bin/python docs/methods_doc.py`.

Each block between `<!-- sequence:NAME -->` and `<!-- /sequence -->` is replaced by the exact training sequence that
laffi.training.loop builds for one hand-made example, decoded token run by token run, with the tokens that carry loss
between ⟦ and ⟧. tests/test_methods_doc.py fails when the file and the code disagree.
"""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).with_name("methods.md")
BLOCK = re.compile(r"(<!-- sequence:(?P<name>[\w+-]+) -->\n).*?(<!-- /sequence -->)", re.DOTALL)


def example_inputs():
    """The hand-made example: one answerable question, the model's wrong answer, and what each method adds."""
    from laffi.feedback import reference
    from laffi.records import Question

    q = Question(id="ex1", title="Normans", context="Rollo led the Normans. They settled in Normandy in 911.",
                 question="Who led the Normans?", answers=["Rollo"], answer_starts=[0])  # fmt: skip
    return {
        "question": q,
        "own_wrong": reference.annotate(q, "911"),  # the model's own answer, judged incorrect
        "own_right": reference.annotate(q, "Rollo"),  # the model's own answer, judged correct
        "other": reference.annotate(q, "Normandy"),  # another model's answer (critique)
        "revised": {"ex1": "Rollo"},  # a revision that the feedback accepts (refine)
        "sampled": "911",  # a completion the student samples during training (sdft)
    }


def sequences(tokenizer) -> dict[str, str]:
    """NAME -> the training sequence of that case, shots = 0, seed = 0."""
    from laffi import prompts
    from laffi.methods import build_examples

    x = example_inputs()
    q = x["question"]
    cases = {
        "sft": ("sft", None, None),
        "laffi": ("laffi", [x["own_wrong"]], None),
        "coh-wrong": ("coh", [x["own_wrong"]], None),
        "coh-right": ("coh", [x["own_right"]], None),
        "refine": ("refine", [x["own_wrong"]], x["revised"]),
        "critique": ("critique", [x["other"]], None),
    }
    out = {}
    for name, (method, feedback, answers) in cases.items():
        (example,) = build_examples(method, [q], feedback, tokenizer, 0, 0, answers)
        out[name] = show(example, tokenizer)
    out["refine-prompt"] = prompts.render(prompts.refine_messages(q, "911", x["own_wrong"].feedback), tokenizer)
    out["coh-answer-prompt"] = prompts.render(prompts.qa_messages(q, 0), tokenizer) + prompts.coh_answer_prefix()
    from laffi.feedback import headroom

    for condition in headroom.GENERATED:
        out[f"headroom-{condition}"] = headroom.condition_prompt(condition, q, x["own_wrong"], tokenizer)
    out.update(sdft_sequences(tokenizer, x))
    return out


def sdft_sequences(tokenizer, x) -> dict[str, str]:
    """sdft: the student's and the teacher's token rows for one sampled completion, the tokens whose next-token
    distributions are compared between ⟦ and ⟧ (laffi.methods.sdft, default settings)."""
    from laffi.config import TrainConfig
    from laffi.methods import build_examples
    from laffi.training.distill import prompt_ids

    (example,) = build_examples("sdft", [x["question"]], [x["own_wrong"]], tokenizer, 0, 0)
    (qa,) = build_examples("sdft", [x["question"]], [x["own_wrong"]], tokenizer, 0, 0,
                           train=TrainConfig(sdft_teacher_prompt="qa"))  # fmt: skip
    student, teacher, teacher_qa = prompt_ids([example.prompt, example.teacher_prompt, qa.teacher_prompt], tokenizer,
                                              TrainConfig())  # fmt: skip
    completion = tokenizer(x["sampled"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return {name: show_row(row + completion, [0] * len(row) + [1] * len(completion), tokenizer)
            for name, row in (("sdft-student", student), ("sdft-teacher", teacher), ("sdft-teacher-qa", teacher_qa))}


def show(example, tokenizer) -> str:
    """The tokenized sequence as text: runs of loss-bearing tokens between ⟦ and ⟧."""
    from laffi.training.examples import tokenize_example

    row = tokenize_example(example, tokenizer, max_length=100_000)
    return show_row(row["input_ids"], row["completion_mask"], tokenizer)


def show_row(ids, mask, tokenizer) -> str:
    """Token ids as text: runs of the tokens marked 1 in `mask` between ⟦ and ⟧."""
    text, run, flag = [], [], 0
    for tok, m in zip(ids + [None], mask + [-1], strict=True):
        if m != flag and run:
            piece = tokenizer.decode(run)
            text.append(f"⟦{piece}⟧" if flag == 1 else piece)
            run = []
        flag = m
        if tok is not None:
            run.append(tok)
    return "".join(text)


def render_doc(text: str, tokenizer) -> str:
    seqs = sequences(tokenizer)

    def fill(m: re.Match) -> str:
        return f"{m.group(1)}```text\n{seqs[m.group('name')]}\n```\n{m.group(3)}"

    return BLOCK.sub(fill, text)


def main() -> None:
    from laffi.models import load_tokenizer

    DOC.write_text(render_doc(DOC.read_text(encoding="utf-8"), load_tokenizer("bundled")), encoding="utf-8")


if __name__ == "__main__":
    main()
