"""Side-by-side: PyTorch's dropout vs training.dropout.FastDropout (numpy PCG64 masks) on LoRA-input-shaped tensors.
Not a timed test. Prints milliseconds per call for each, in one process, and the ratio.

    .venv/bin/python bench/dropout.py
"""

from __future__ import annotations

import time

import torch

from laffi.training.dropout import FastDropout


def per_call_ms(fn, x, reps: int = 30) -> float:
    fn(x)
    start = time.perf_counter()
    for _ in range(reps):
        fn(x)
    return (time.perf_counter() - start) / reps * 1e3


def main() -> None:
    torch_drop, fast_drop = torch.nn.Dropout(0.05).train(), FastDropout(0.05).train()
    print(f"{torch.get_num_threads()} threads")
    # A micro-batch of 4 x 400 tokens into the bundled model's projections (hidden 576, MLP 1536).
    for dtype in (torch.bfloat16, torch.float32):
        for width in (576, 1536):
            x = torch.randn(4, 400, width, dtype=dtype)
            a, b = per_call_ms(torch_drop, x), per_call_ms(fast_drop, x)
            print(f"{str(dtype):15s} 4x400x{width}: torch {a:6.2f} ms  fast {b:6.2f} ms  {a / b:4.2f}x")


if __name__ == "__main__":
    main()
