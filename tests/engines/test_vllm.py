"""The vLLM engine's CPU-testable parts: the setting, the one-line error without vLLM, LoRA rank rounding, and that
the default engine leaves cached stages' keys as they were. The engine itself is checked on a GPU by
tests/integration/test_vllm_engine.py (skipped here: no GPU, vLLM not installed)."""

import importlib.util
import json
import subprocess
import sys

import pytest

from laffi.config import AnswerConfig, load_run_config
from laffi.engines import vllm as engine
from laffi.errors import LaffiError

NO_VLLM = importlib.util.find_spec("vllm") is None


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
                                                 "vllm, on a machine with a GPU)")  # fmt: skip
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
