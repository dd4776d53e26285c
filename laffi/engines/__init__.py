"""Generation engines other than transformers' (the default, laffi/generation.py). Chosen with `answer.engine`."""
