"""Training methods, one module each, and the registry that finds them.

Every module of this package that defines `METHOD` (a `laffi.methods.common.Method`) is a method: `laffi train
--method NAME`, `methods:` of a run or an experiment and the docs all take their list from here. Adding a method is
one new module (see `sft.py`, the shortest) and its test; nothing else names methods.
"""

from __future__ import annotations

import importlib
import pkgutil
import random
from functools import cache
from typing import Any

from laffi.errors import LaffiError
from laffi.methods.common import Method
from laffi.records import FeedbackRecord, Question
from laffi.training.examples import Example


@cache
def registry() -> dict[str, Method]:
    """name -> Method, in display order (`Method.order`, then name)."""
    found = []
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        method = getattr(module, "METHOD", None)
        if isinstance(method, Method):
            found.append(method)
    return {m.name: m for m in sorted(found, key=lambda m: (m.order, m.name))}


def names(*, trained: bool | None = None) -> list[str]:
    """Every method's name; `trained=True`: only those that train an adapter, `False`: only those that do not."""
    return [n for n, m in registry().items() if trained is None or m.trains == trained]


def get(name: str, where: str = "method") -> Method:
    """The method called `name`; an unknown name is a one-line error naming `where` (the option or config key)."""
    try:
        return registry()[name]
    except KeyError:
        raise LaffiError(f"{where}: unknown method '{name}' (known: {', '.join(names())})") from None


def build_examples(method: str, questions: list[Question], feedback: list[FeedbackRecord] | None, tokenizer: Any,
                   shots: int, seed: int, answers: dict[str, str] | None = None,
                   train: Any = None) -> list[Example]:  # fmt: skip
    """The training examples of one method, in a seeded order.

    `feedback`: the run's feedback records (or, for critique, feedback on other answers); `answers`: what the method's
    `prepare` made (refine: the kept revised answers); `train`: the run's TrainConfig (sdft's teacher prompt), None for
    its defaults."""
    m = get(method)
    if not m.trains:
        raise LaffiError(f"method: '{method}' trains nothing ({m.summary})")
    examples = m.build(questions, feedback, tokenizer, shots, seed, answers, train)
    random.Random(seed).shuffle(examples)
    return examples
