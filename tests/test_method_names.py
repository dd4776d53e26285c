"""Methods own their behaviour: no module outside laffi/methods/ names a method (a string literal equal to a method's
name), so a new method is one module and its test. Names in config defaults (the `_f(...)` declarations) are data,
declared once; the pairs listed below are the same words in other vocabularies, each with its count."""

from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path

from laffi import methods

ROOT = Path(__file__).resolve().parents[1] / "laffi"

# (file, literal): how many times, and why it is not a method name there.
ALLOWED = {
    ("attention.py", "base"): 1,  # `--adapters base`: the model without an adapter
    ("cli.py", "base"): 1,  # the same, as `laffi attention`'s default
    ("cli_process.py", "laffi"): 1,  # the program's name
    ("data.py", "laffi"): 1,  # the package whose resources hold the bundled data
    ("models.py", "laffi"): 1,  # the cache folder ~/.cache/laffi
    ("pipeline/provenance.py", "laffi"): 1,  # the package whose version environment.json records
    ("pipeline/stages.py", "laffi"): 1,  # `python -m laffi` under a launcher
    ("pipeline/shared.py", "base"): 1,  # train.answers_from 'base-Kshot': the model without an adapter
    ("rundir.py", "base"): 1,  # base/: the model-as-loaded's training answers
    ("training/distill.py", "base"): 1,  # train.sdft_teacher_model_kind 'base': the model without the adapter
    ("training/loop.py", "coh"): 1,  # prompt template names in laffi_train.json
    ("training/loop.py", "refine"): 1,
}


def method_literals(root: Path, names: set[str], skip: str = "methods/") -> Counter:
    """(file, literal) -> count of string constants equal to one of `names` (methods), outside the package `skip`
    (laffi/methods/) and outside config field declarations (`_f(...)`)."""
    found: Counter = Counter()
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel.startswith(skip):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        defaults = {id(sub) for node in ast.walk(tree) if isinstance(node, ast.Call)
                    and getattr(node.func, "id", None) == "_f" for sub in ast.walk(node)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and node.value in names and id(node) not in defaults:
                found[(rel, node.value)] += 1
    return found


def test_no_module_outside_methods_names_a_method():
    found = method_literals(ROOT, set(methods.names()))
    extra = {k: n for k, n in found.items() if n > ALLOWED.get(k, 0)}
    assert not extra, f"method names outside laffi/methods/ (declare the behaviour on the Method instead): {extra}"


def test_a_planted_method_name_is_found(tmp_path):
    package = tmp_path / "laffi"
    (package / "report").mkdir(parents=True)
    (package / "report" / "x.py").write_text('def f(cell):\n    return cell.method == "sft"\n')
    (package / "config.py").write_text('methods = _f(["base", "sft"], "help")\n')  # a default: allowed
    assert method_literals(package, set(methods.names())) == Counter({("report/x.py", "sft"): 1})


# Annotators (laffi/feedback/annotators.py) the same way, outside laffi/feedback/.
ANNOTATORS_ALLOWED = {
    ("config.py", "llm"): 1,  # AnnotateConfig's own check: learn_from_examples needs the model annotator
}


def test_no_module_outside_feedback_names_an_annotator():
    from laffi.feedback import annotators

    found = method_literals(ROOT, set(annotators.names()), skip="feedback/")
    extra = {k: n for k, n in found.items() if n > ANNOTATORS_ALLOWED.get(k, 0)}
    assert not extra, f"annotator names outside laffi/feedback/ (declare it on the Annotator instead): {extra}"


def test_the_config_offers_the_registered_annotators():
    from dataclasses import fields

    from laffi.config import AnnotateConfig
    from laffi.feedback import annotators

    choices = next(f for f in fields(AnnotateConfig) if f.name == "annotator").metadata["choices"]
    assert list(choices) == annotators.names()
