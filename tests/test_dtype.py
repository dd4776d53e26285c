"""dtype 'auto': bfloat16 only where bf16 matmuls are native; an explicit bfloat16 elsewhere runs, with a warning."""

import warnings

import pytest

from laffi import models
from laffi.config import ExperimentConfig
from laffi.errors import LaffiError
from laffi.pipeline.experiment import with_dtypes_resolved


@pytest.mark.parametrize("fast, expected", [(True, "bfloat16"), (False, "float32")])
def test_auto_is_bfloat16_only_where_it_is_fast(monkeypatch, fast, expected):
    monkeypatch.setattr(models, "fast_bf16", lambda device="cpu": fast)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert models.resolve_dtype("auto") == expected
        cfg = with_dtypes_resolved(ExperimentConfig())
    assert (cfg.model.dtype, cfg.annotate.dtype) == (expected, expected)
    assert ExperimentConfig().model.dtype == "auto"  # the default stays 'auto' until a run resolves it


def test_explicit_bfloat16_without_native_bf16_warns(monkeypatch):
    monkeypatch.setattr(models, "fast_bf16", lambda device="cpu": False)
    with pytest.warns(RuntimeWarning, match="no native bf16 matmul"):
        assert models.resolve_dtype("bfloat16") == "bfloat16"
    monkeypatch.setattr(models, "fast_bf16", lambda device="cpu": True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert models.resolve_dtype("bfloat16") == "bfloat16"
        assert models.resolve_dtype("float16") == "float16"
    with pytest.raises(LaffiError, match="^dtype: expected one of auto, float32, bfloat16, float16, got 'int8'$"):
        models.resolve_dtype("int8")


def test_fast_bf16_follows_onednn_on_cpu():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA machine decides by torch.cuda.is_bf16_supported()")
    assert models.fast_bf16() is bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
