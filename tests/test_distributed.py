"""Data-parallel training (training/distributed.py): 2 CPU processes (gloo) under `accelerate launch` compute the same
updates as one process, on the tiny random model.

Tolerance: the two runs differ only in float32 summation order (each process sums its micro-batches' gradients, then
gloo adds the two sums), so losses must agree to 1e-5 relative and adapter weights to 1e-5 absolute. Measured on this
2-core box: the largest differences were of the order 1e-7 or below (see docs/scaling.md).
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from laffi.training.distributed import launched

TORCHRUN = Path(sys.executable).with_name("torchrun")
CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "accelerate"
# 12 questions, 10 per step, 2 per micro-batch, 2 epochs: steps of 5 and 1 micro-batches. On a 5 one process runs 3
# and the other 2 (uneven); on a 1 the second process has none (it joins the all-reduce with a zero weight).
SETTINGS = ["--set", "train.epochs=2", "--set", "train.batch_size=10", "--set", "train.micro_batch_size=2",
            "--set", "train.lora_r=4", "--set", "train.learning_rate=0.01", "--set", "train.lora_dropout=0",
            "--set", "train.save_steps=2"]  # fmt: skip


def _train_cmd(data: Path, model: Path, out: Path, dtype: str = "float32") -> list[str]:
    return ["-m", "laffi", "train", "--method", "sft", "--data", str(data), "--out", str(out), "--model", str(model),
            "--dtype", dtype, "--shots", "0", *SETTINGS]  # fmt: skip


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK") and not k.startswith("ACCELERATE_")}  # fmt: skip
    return {**env, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def _run(cmd: list[str], extra_env: dict[str, str] | None = None) -> None:
    # Own process group, killed whole on a timeout: a hung collective must not leave workers behind.
    proc = subprocess.Popen(cmd, env={**_env(), **(extra_env or {})}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)  # fmt: skip
    try:
        _, err = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    assert proc.returncode == 0, err[-3000:]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _adapter(out: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(out / "adapter_model.safetensors"))


def _losses(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed beside this python")
def test_two_cpu_processes_match_one(tmp_path, small_squad, tiny_model_dir):
    single, double = tmp_path / "single", tmp_path / "double"
    _run([sys.executable, *_train_cmd(small_squad, tiny_model_dir, single)])
    # torchrun: `accelerate launch --cpu` starts several CPU processes only through MPI; the Accelerator inside picks
    # up torchrun's environment (MULTI_CPU, gloo) exactly as it does `accelerate launch --multi_gpu`'s on GPUs.
    _run([str(TORCHRUN), "--nproc_per_node", "2", "--master_port", str(_free_port()),
          *_train_cmd(small_squad, tiny_model_dir, double)])
    _matches_single(single, double, "MULTI_CPU")


HARNESS = str(Path(__file__).with_name("launch_harness.py"))


def _fsdp_env(**changes: str) -> dict[str, str]:
    """What `accelerate launch --config_file configs/accelerate/fsdp.yaml` puts in the environment (fsdp_x: FSDP_X),
    in float32 for an exact comparison, and the harness's switch that lets accelerate run FSDP on CPU processes."""
    import yaml

    fsdp = yaml.safe_load((CONFIGS / "fsdp.yaml").read_text())["fsdp_config"]
    env = {k.upper(): str(v).lower() if isinstance(v, bool) else str(v) for k, v in fsdp.items()}
    return {**env, "ACCELERATE_USE_FSDP": "true", "ACCELERATE_MIXED_PRECISION": "no", "FSDP_ON_CPU": "1", **changes}


def _matches_single(single: Path, run: Path, engine: str) -> None:
    """`run` (2 processes on `engine`) trained what the single-process run `single` did: same steps, losses, gradient
    norms and adapter, within float summation order."""
    assert json.loads((run / "laffi_train.json").read_text())["distributed"] == {"type": engine, "processes": 2}
    one, two = _losses(single), _losses(run)
    assert [e["step"] for e in two] == [1, 2, 3, 4]
    assert [e["loss_tokens"] for e in two] == [e["loss_tokens"] for e in one]
    for a, b in zip(one, two, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)
    w1, w2 = _adapter(single), _adapter(run)
    assert sorted(w1) == sorted(w2)
    assert max((w1[k] - w2[k]).abs().max().item() for k in w1) < 1e-5
    # The run changed the weights (LoRA B starts at zero), so agreeing is not trivially true.
    assert max(w2[k].abs().max().item() for k in w2 if "lora_B" in k) > 1e-3
    assert not run.with_name(run.name + ".partial").exists() and not run.with_name(run.name + ".tmp").exists()


def _resumes(start: Any, finished: Path, out: Path) -> None:
    """`start(out, extra_env)` runs training to `out`. Stopped right after its step-2 checkpoint (the engine's sharded
    accelerate save_state), a re-run resumes from it and ends where the uninterrupted run `finished` did."""
    with pytest.raises(AssertionError, match="exitcode  : 3"):
        start(out, {"EXIT_AFTER_CHECKPOINT": "1"})
    state = out.with_name(out.name + ".partial")
    saved = json.loads((state / "log.json").read_text())
    assert not out.exists() and [e["step"] for e in saved["log"]] == [1, 2]
    # Mark the saved steps: a re-run that started over instead of resuming would not carry the marks.
    (state / "log.json").write_text(json.dumps({"log": [{**e, "resumed": True} for e in saved["log"]]}))
    start(out, {})
    assert [e.get("resumed", False) for e in _losses(out)] == [True, True, False, False]
    assert [e["loss"] for e in _losses(out)] == pytest.approx([e["loss"] for e in _losses(finished)], rel=1e-6)
    w1, w2 = _adapter(finished), _adapter(out)
    assert max((w1[k] - w2[k]).abs().max().item() for k in w1) < 1e-6
    assert not state.exists()


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed beside this python")
def test_fsdp_on_two_cpu_processes_matches_one(tmp_path, small_squad, tiny_model_dir):
    """configs/accelerate/fsdp.yaml's engine (accelerate's FSDP 2: sharded weights, gradients and optimizer state) on 2
    gloo processes trains the same adapter as one process, and resumes from its sharded checkpoint. accelerate sets
    up FSDP only on GPUs; tests/launch_harness.py turns it on for CPU processes, nothing else."""

    def on_fsdp(out: Path, env: dict[str, str]) -> None:
        _run([str(TORCHRUN), "--nproc_per_node", "2", "--master_port", str(_free_port()), HARNESS,
              *_train_cmd(small_squad, tiny_model_dir, out)[2:]], _fsdp_env(**env))  # fmt: skip

    single, sharded = tmp_path / "single", tmp_path / "sharded"
    _run([sys.executable, *_train_cmd(small_squad, tiny_model_dir, single)])
    loads = tmp_path / "loads"
    loads.mkdir()
    on_fsdp(sharded, {"RECORD_LOADS": str(loads)})
    _matches_single(single, sharded, "FSDP")
    # fsdp.yaml's fsdp_cpu_ram_efficient_loading: rank 0 alone read the weights; rank 1 got its shards from it.
    assert sorted(p.name for p in loads.iterdir()) == ["rank0"]
    _resumes(on_fsdp, sharded, tmp_path / "resumed")


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="deepspeed is not installed")
def test_deepspeed_zero2_on_two_cpu_processes_matches_one(tmp_path, small_squad, tiny_model_dir):
    """configs/accelerate/deepspeed_zero2.yaml, as shipped but for 2 processes and float32, started with `accelerate
    launch` on CPU processes (DeepSpeed's CPU accelerator, gloo): its engine does backward, gradient reduction,
    clipping and the AdamW step; the losses and the adapter are one process's, and it resumes from its checkpoint."""
    import yaml

    config = yaml.safe_load((CONFIGS / "deepspeed_zero2.yaml").read_text())
    config.update(num_processes=2, mixed_precision="no")
    (tmp_path / "ds.yaml").write_text(yaml.safe_dump(config))

    def on_deepspeed(out: Path, env: dict[str, str]) -> None:
        _run([str(TORCHRUN.with_name("accelerate")), "launch", "--config_file", str(tmp_path / "ds.yaml"),
              "--main_process_port", str(_free_port()), HARNESS, *_train_cmd(small_squad, tiny_model_dir, out)[2:]],
             {"DS_ACCELERATOR": "cpu", **env})  # fmt: skip

    single, zero2 = tmp_path / "single", tmp_path / "zero2"
    _run([sys.executable, *_train_cmd(small_squad, tiny_model_dir, single)])
    on_deepspeed(zero2, {})
    _matches_single(single, zero2, "DEEPSPEED")
    _resumes(on_deepspeed, zero2, tmp_path / "resumed")


def test_single_process_is_not_launched(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    assert not launched()
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert not launched()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")  # a launcher sets the rendezvous too (else: one-line error)
    monkeypatch.setenv("MASTER_PORT", "29500")
    assert launched()
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")  # accelerate launch, one process (single_gpu.yaml)
    assert launched()


def _train_config(**changes):
    from laffi.config import TrainConfig

    return TrainConfig(method="sft", epochs=2, batch_size=10, micro_batch_size=2, lora_r=4, learning_rate=0.01,
                       lora_dropout=0, save_steps=2, **changes)  # fmt: skip


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed beside this python")
def test_launcher_setting_trains_in_launched_processes(tmp_path, small_squad, tiny_model_dir, monkeypatch):
    """`train.launcher` (what `laffi run` / `laffi experiment` use) starts `-m laffi train` under torchrun: same
    updates as training in this process, the workers' record is returned, and the scratch inputs are gone."""
    from laffi.config import ModelConfig
    from laffi.data import load_squad
    from laffi.pipeline import stages

    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    questions = load_squad(small_squad)
    model = ModelConfig(str(tiny_model_dir), "float32")
    here, launched_out = tmp_path / "here", tmp_path / "launched"
    info_here = stages.train(questions, None, here, model, _train_config(), shots=0, progress=False)
    launcher = f"{TORCHRUN} --nproc_per_node 2 --master_port {_free_port()}"
    info = stages.train(questions, None, launched_out, model, _train_config(launcher=launcher), shots=0,
                        progress=False)  # fmt: skip
    assert info["steps"] == info_here["steps"] == 4
    assert info["final_loss"] == pytest.approx(info_here["final_loss"], rel=1e-5)
    assert info["config"]["launcher"] == ""  # the workers were told not to launch again
    w1, w2 = _adapter(here), _adapter(launched_out)
    assert max((w1[k] - w2[k]).abs().max().item() for k in w1) < 1e-5
    assert not launched_out.with_name("launched.launch").exists()


def test_launcher_failures_are_one_line_errors(tmp_path, small_squad, tiny_model_dir):
    from laffi.config import ModelConfig
    from laffi.data import load_squad
    from laffi.errors import LaffiError
    from laffi.pipeline import stages

    questions = load_squad(small_squad)
    model = ModelConfig(str(tiny_model_dir), "float32")
    with pytest.raises(LaffiError, match=r"^train.launcher: cannot start 'no-such-launcher-x': "):
        stages.train(questions, None, tmp_path / "a", model, _train_config(launcher="no-such-launcher-x"), 0, False)
    with pytest.raises(LaffiError, match=r"^train.launcher: 'false -m laffi train' exited with status 1 "):
        stages.train(questions, None, tmp_path / "b", model, _train_config(launcher="false"), 0, False)
    assert sorted(p.name for p in tmp_path.iterdir()) == [small_squad.name]  # no adapter, no scratch inputs


def test_launcher_is_not_part_of_cache_keys():
    from dataclasses import asdict

    from laffi.config import train_cache_settings

    plain = _train_config()
    assert train_cache_settings(_train_config(launcher="torchrun --nproc_per_node 8")) == train_cache_settings(plain)
    for same in ({"checkpoint_every": 2}, {"checkpoint_keep": ""}, {"trim_memory": False},
                 {"report_to": "tensorboard"}):
        assert train_cache_settings(_train_config(**same)) == train_cache_settings(plain)
    # Every other setting is in the key, as it is, but those of another method (sdft_*: the key of sdft cells only).
    assert train_cache_settings(plain) == {k: v for k, v in asdict(plain).items()
                                           if k not in ("launcher", "checkpoint_every", "checkpoint_keep",
                                                        "trim_memory", "report_to")
                                           and not k.startswith("sdft_")}  # fmt: skip


def test_deepspeed_settings_laffi_fills_and_refuses():
    """DeepSpeed needs its micro-batch size and accumulation steps before `prepare` (accelerate infers them only from
    a prepared dataloader); laffi fills them from its own settings and refuses values that would train differently."""
    from types import SimpleNamespace

    from laffi.errors import LaffiError
    from laffi.training.distributed import _fill_deepspeed_config, passes_per_step

    cfg = _train_config()  # batch 10, micro-batches of 2: 5 per step
    assert [passes_per_step(cfg, n) for n in (1, 2, 3, 5, 8)] == [5, 3, 2, 1, 1]

    def accelerator(**ds):
        plugin = SimpleNamespace(deepspeed_config={"train_batch_size": "auto", **ds})
        return SimpleNamespace(state=SimpleNamespace(deepspeed_plugin=plugin), gradient_accumulation_steps=1)

    acc = accelerator(gradient_clipping=1.0, gradient_accumulation_steps="auto")
    _fill_deepspeed_config(acc, cfg, 3)
    assert acc.state.deepspeed_plugin.deepspeed_config == {
        "train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 3, "gradient_clipping": 1.0}  # fmt: skip
    assert acc.gradient_accumulation_steps == 3
    with pytest.raises(LaffiError, match=r"^accelerate config: deepspeed gradient_clipping is 0.5, but laffi train "):
        _fill_deepspeed_config(accelerator(gradient_clipping=0.5), cfg, 3)
    with pytest.raises(LaffiError, match=r"deepspeed gradient_accumulation_steps is 1, but laffi train needs 3 "):
        _fill_deepspeed_config(accelerator(gradient_accumulation_steps=1), cfg, 3)


# bf16 (the shipped accelerate configs' mixed precision): weights and activations round to 8 bits of mantissa, and
# two processes round their partial sums differently from one; AdamW turns small gradient differences into steps of
# the full learning rate. Measured on the tiny model (4 steps, 2-core CPU, torch 2.13, accelerate 1.15), DDP and
# FSDP 2 alike: loss 6.3e-4 relative, LoRA B 3.9e-2 relative (norm of the difference over the norm of the update).
# The tolerances leave a margin of about 4-8x.
BF16_LOSS_REL = 5e-3
BF16_WEIGHT_REL = 0.15  # |B2 - B1| / |B1| over every LoRA B matrix (B starts at zero: |B1| is the update)


def _matches_single_loosely(single: Path, run: Path, engine: str) -> dict[str, float]:
    assert json.loads((run / "laffi_train.json").read_text())["distributed"] == {"type": engine, "processes": 2}
    one, two = _losses(single), _losses(run)
    assert [e["loss_tokens"] for e in two] == [e["loss_tokens"] for e in one]
    loss_rel = max(abs(a["loss"] - b["loss"]) / abs(a["loss"]) for a, b in zip(one, two, strict=True))
    w1, w2 = _adapter(single), _adapter(run)
    assert sorted(w1) == sorted(w2) and all(w2[k].dtype == w1[k].dtype for k in w1)
    import torch

    a, b = (torch.cat([w[k].float().flatten() for k in sorted(w) if "lora_B" in k]) for w in (w1, w2))
    weight_rel = ((a - b).norm() / a.norm()).item()  # LoRA B starts at zero: its norm is the whole update
    assert loss_rel < BF16_LOSS_REL and weight_rel < BF16_WEIGHT_REL, (loss_rel, weight_rel)
    assert max(w2[k].abs().max().item() for k in w2 if "lora_B" in k) > 1e-3
    return {"loss_rel": loss_rel, "weight_rel": weight_rel}


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed beside this python")
def test_bf16_ddp_and_fsdp_on_two_cpu_processes_match_one(tmp_path, small_squad, tiny_model_dir):
    """The shipped configs' bf16 on 2 gloo processes, DDP and FSDP 2, against one bf16 process (loose tolerance)."""
    single = tmp_path / "single"
    _run([sys.executable, *_train_cmd(small_squad, tiny_model_dir, single, "bfloat16")])
    ddp, fsdp = tmp_path / "ddp", tmp_path / "fsdp"
    _run([str(TORCHRUN), "--nproc_per_node", "2", "--master_port", str(_free_port()),
          *_train_cmd(small_squad, tiny_model_dir, ddp, "bfloat16")], {"ACCELERATE_MIXED_PRECISION": "bf16"})
    measured = {"ddp": _matches_single_loosely(single, ddp, "MULTI_CPU")}
    _run([str(TORCHRUN), "--nproc_per_node", "2", "--master_port", str(_free_port()), HARNESS,
          *_train_cmd(small_squad, tiny_model_dir, fsdp, "bfloat16")[2:]],
         _fsdp_env(ACCELERATE_MIXED_PRECISION="bf16"))  # fmt: skip
    measured["fsdp"] = _matches_single_loosely(single, fsdp, "FSDP")
