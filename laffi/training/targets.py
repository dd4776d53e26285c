"""`train.target_modules` checked against the model before PEFT sees it: a name the model lacks is one line naming
the setting and the model's own module names, not PEFT's multi-line ValueError and traceback."""

from __future__ import annotations

from typing import Any

from laffi.errors import LaffiError
from laffi.files import printable


def check_target_modules(model: Any, setting: str, where: str = "train.target_modules") -> None:
    """Each comma-separated name must name a module of `model` as PEFT matches it (the whole dotted name, or its
    last parts: `q_proj`, `self_attn.q_proj`). 'all-linear' is PEFT's own choice."""
    if setting == "all-linear":
        return
    import torch

    wanted = [t.strip() for t in setting.split(",") if t.strip()]
    if not wanted:
        raise LaffiError(f"{where}: no module names; give 'all-linear' or names such as q_proj,v_proj")
    names = [name for name, _ in model.named_modules() if name]
    missing = [t for t in wanted if not any(n == t or n.endswith("." + t) for n in names)]
    if not missing:
        return
    linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)} -
                    {"lm_head"})  # fmt: skip
    shown = ", ".join(f"'{printable(t if len(t) <= 80 else t[:80] + '...')}'" for t in missing[:3])
    more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
    raise LaffiError(f"{where}: no module {shown}{more} in the model; its linear modules: "
                     f"{', '.join(linear[:12]) or 'none'} (or 'all-linear')")  # fmt: skip
