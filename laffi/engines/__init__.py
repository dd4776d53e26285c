"""Generation engines, side by side: `generation` (transformers, with the prefix-cached decoder of `prefix_cache` and
`prefix_attention`; the default) and `vllm` (GPU machines). Chosen with `answer.engine`."""
