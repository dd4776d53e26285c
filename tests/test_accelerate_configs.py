"""The accelerate configs shipped under configs/accelerate/ parse with accelerate's own config classes (the ones
`accelerate launch --config_file` uses) and ask for bf16 on GPUs."""

from pathlib import Path

import pytest

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "accelerate"
EXPECTED = {"single_gpu.yaml": ("NO", 1), "multi_gpu_ddp.yaml": ("MULTI_GPU", 8), "fsdp.yaml": ("FSDP", 8),
            "deepspeed_zero2.yaml": ("DEEPSPEED", 8)}  # fmt: skip


def test_every_config_is_listed():
    assert sorted(p.name for p in CONFIGS.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_parses_with_accelerate(name):
    from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file

    cfg = load_config_from_file(str(CONFIGS / name))
    assert isinstance(cfg, ClusterConfig)
    kind, processes = EXPECTED[name]
    assert str(cfg.distributed_type).split(".")[-1] == kind
    assert cfg.num_processes == processes
    assert str(cfg.mixed_precision).split(".")[-1].lower() == "bf16" and not cfg.use_cpu
    if kind == "FSDP":
        assert cfg.fsdp_config["fsdp_version"] == 2
    if kind == "DEEPSPEED":
        assert cfg.deepspeed_config["zero_stage"] == 2

