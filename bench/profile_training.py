"""Where a training step's time goes: torch.profiler over steps 2-3 of laffi's loop on the bundled model, the
training bench's workload (200 pool LaFFi examples, seq <= 512, batch = micro-batch 4). Prints the top operators by
self CPU time. Not a timed test.

    .venv/bin/python bench/profile_training.py                               # laffi's defaults
    .venv/bin/python bench/profile_training.py fast_dropout=false checkpoint_keep=   # train settings, key=value
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).parent))

import training as bench  # noqa: E402  (bench/training.py: same examples and settings)
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from laffi.training import loop as training  # noqa: E402


def main() -> None:
    args = SimpleNamespace(examples=200, steps=3, batch=4, micro=4, max_length=512, laffi_set=sys.argv[1:])
    bar, state = training._progress_bar, {}

    def profiled_bar(total: int, start: int, enabled: bool):
        b = bar(total, start, False)
        update = b.update

        def on_step(n: int = 1) -> None:  # the profiler covers the steps after the first (warm-up)
            update(n)
            state["steps"] = state.get("steps", 0) + 1
            if state["steps"] == 1:
                state["prof"] = profile(activities=[ProfilerActivity.CPU])
                state["prof"].__enter__()
            elif state["steps"] == 3:
                state["prof"].__exit__(None, None, None)

        b.update = on_step
        return b

    training._progress_bar = profiled_bar
    bench.run_laffi(args, Path("/tmp/laffi-profile-training"))
    print(state["prof"].key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
