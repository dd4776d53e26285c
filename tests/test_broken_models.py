"""Damaged models, caches and adapters: a converted model in the cache that is truncated, emptied or overwritten is
converted again (one line on stderr); a cache that cannot be written, a broken adapter or GGUF file is one line
naming the path and what is wrong, exit 2."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from laffi.errors import LaffiError

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}


def run(args: list, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "laffi", *map(str, args)], capture_output=True, text=True,
                          timeout=300, env={**ENV, **env})  # fmt: skip


def one_error_line(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("laffi: error:"), r.stderr
    return lines[0]


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Path:
    """A complete conversion of the bundled GGUF (with its record of files), made in a cache of its own."""
    from laffi.models import bundled_gguf_path, converted_gguf_dir

    cache = tmp_path_factory.mktemp("cache")
    before = os.environ.get("LAFFI_CACHE")
    os.environ["LAFFI_CACHE"] = str(cache)
    try:
        return converted_gguf_dir(bundled_gguf_path())
    finally:
        if before is None:
            del os.environ["LAFFI_CACHE"]
        else:
            os.environ["LAFFI_CACHE"] = before


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGES = {
    "truncated weights": lambda d: _truncate(d / "model.safetensors"),
    "empty weights": lambda d: (d / "model.safetensors").write_bytes(b""),
    "missing tokenizer": lambda d: (d / "tokenizer.json").unlink(),
    "garbage config": lambda d: (d / "config.json").write_text("\x00garbage{"),
    "config overwritten, same size": lambda d: (d / "config.json").write_text(
        " " * (d / "config.json").stat().st_size),
    "a file where the folder was": lambda d: (shutil.rmtree(d), d.write_text("x")),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
@pytest.mark.parametrize("recorded", [True, False], ids=["recorded", "made-before-records"])
def test_a_damaged_conversion_is_converted_again(damage, recorded, converted, tmp_path, monkeypatch, capsys):
    """Each damage is found before anything loads, the folder is moved aside and converted again (the conversion
    itself stubbed by a copy of a good one here; the subprocess test below runs the real one)."""
    from laffi import models

    monkeypatch.setenv("LAFFI_CACHE", str(tmp_path / "cache"))
    gguf = models.bundled_gguf_path()
    target = tmp_path / "cache" / "models" / converted.name
    shutil.copytree(converted, target)
    if not recorded:
        (target / models.CONVERSION_RECORD).unlink()
    if damage == "config overwritten, same size" and not recorded:
        pytest.skip("without a record only the structure is checked: JSON of the same size is not garbage")
    DAMAGES[damage](target)
    conversions = []
    monkeypatch.setattr(models, "_convert_gguf", lambda g, o: (conversions.append(o), shutil.copytree(converted, o)))
    assert models.converted_gguf_dir(gguf) == target
    assert conversions == [target]
    assert models.conversion_problem(target) is None
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(target) in err[0] and "damaged" in err[0] and "converting" in err[0]
    assert [p.name for p in target.parent.iterdir()] == [target.name]  # nothing set aside is left


def test_a_whole_conversion_is_used_as_it_is(converted, monkeypatch, capsys):
    from laffi import models

    monkeypatch.setenv("LAFFI_CACHE", str(converted.parents[1]))
    monkeypatch.setattr(models, "_convert_gguf", lambda g, o: pytest.fail("converted again"))
    assert models.converted_gguf_dir(models.bundled_gguf_path()) == converted
    assert json.loads((converted / models.CONVERSION_RECORD).read_text())["files"]["model.safetensors"]["bytes"] > 0
    assert capsys.readouterr().err == ""


def test_a_conversion_that_does_not_load_is_made_again(converted, tmp_path, monkeypatch, capsys):
    """A conversion without a record whose tokenizer is garbage passes the cheap checks; the failed load moves it
    aside and converts again, once."""
    from laffi import models

    monkeypatch.setenv("LAFFI_CACHE", str(tmp_path / "cache"))
    target = tmp_path / "cache" / "models" / converted.name
    shutil.copytree(converted, target)
    (target / models.CONVERSION_RECORD).unlink()
    (target / "tokenizer.json").write_text("not a tokenizer")
    monkeypatch.setattr(models, "_convert_gguf", lambda g, o: shutil.copytree(converted, o))
    tokenizer = models.load_tokenizer("bundled")
    assert tokenizer("Hello")["input_ids"]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not load" in err[0] and str(target) in err[0]


def test_damaged_cache_is_converted_again_by_the_command(converted, tmp_path, small_squad):
    """The real thing: `laffi answer` on a cache whose weights were cut in half converts again, says so in one line,
    and answers."""
    cache = tmp_path / "cache"
    target = cache / "models" / converted.name
    shutil.copytree(converted, target)
    _truncate(target / "model.safetensors")
    r = run(["answer", "--data", small_squad, "--out", tmp_path / "p.json", "--limit", "1", "--max-new-tokens", "2",
             "--dtype", "float32", "--no-progress"], LAFFI_CACHE=str(cache))  # fmt: skip
    assert r.returncode == 0, r.stderr
    damaged = [line for line in r.stderr.splitlines() if "is damaged" in line]
    assert len(damaged) == 1 and str(target) in damaged[0] and "model.safetensors" in damaged[0]
    assert "Traceback" not in r.stderr
    assert json.loads((tmp_path / "p.json").read_text())
    from laffi.models import conversion_problem

    assert conversion_problem(target) is None
    assert sorted(p.name for p in (cache / "models").iterdir()) == [target.name]


@pytest.mark.parametrize("kind", ["a file", "a file above it"])
def test_a_cache_that_cannot_be_written_is_one_line(kind, tmp_path, small_squad):
    cache = tmp_path / "cache"
    if kind == "a file":
        cache.write_text("not a folder")
    else:
        cache.mkdir()
        (cache / "models").write_text("not a folder")
    r = run(["answer", "--data", small_squad, "--out", tmp_path / "p.json", "--limit", "1", "--no-progress"],
            LAFFI_CACHE=str(cache))  # fmt: skip
    line = one_error_line(r)
    assert str(cache) in line and "cannot write the converted model cache" in line
    assert not (tmp_path / "p.json").exists()


def test_a_full_disk_during_conversion_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    """The disk fills while the conversion is written: one error naming the cache, no half folder left."""
    import errno

    import transformers

    from laffi import models

    class Model:
        config = type("Config", (), {})()

        def save_pretrained(self, path):
            (Path(path) / "model.safetensors").write_bytes(b"x" * 100)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setenv("LAFFI_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", lambda *a, **k: Model())
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: None)
    with pytest.raises(LaffiError) as e:
        models.converted_gguf_dir(models.bundled_gguf_path())
    assert str(e.value).startswith(f"{tmp_path / 'cache' / 'models'}: cannot write the converted model cache")
    assert "no space left on device" in str(e.value)
    assert list((tmp_path / "cache" / "models").iterdir()) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_cache_is_one_line(tmp_path, small_squad):
    cache = tmp_path / "cache"
    cache.mkdir()
    cache.chmod(0o500)
    try:
        r = run(["answer", "--data", small_squad, "--out", tmp_path / "p.json", "--limit", "1", "--no-progress"],
                LAFFI_CACHE=str(cache))  # fmt: skip
    finally:
        cache.chmod(0o700)
    line = one_error_line(r)
    assert str(cache) in line and "permission denied" in line


# ---------------------------------------------------------------------------------------------- GGUF files


@pytest.mark.parametrize("content", ["random bytes", "empty", "truncated"])
def test_a_broken_gguf_is_one_line(content, tmp_path, small_squad):
    from laffi.models import bundled_gguf_path

    gguf = tmp_path / "model.gguf"
    if content == "random bytes":
        gguf.write_bytes(os.urandom(1 << 16))
    elif content == "empty":
        gguf.write_bytes(b"")
    else:
        with open(bundled_gguf_path(), "rb") as f:
            gguf.write_bytes(f.read(1 << 20))
    r = run(["answer", "--data", small_squad, "--model", gguf, "--out", tmp_path / "p.json", "--no-progress"],
            LAFFI_CACHE=str(tmp_path / "cache"))  # fmt: skip
    line = one_error_line(r)
    assert str(gguf) in line and ("not a GGUF file" in line or "truncated or damaged" in line)
    assert not (tmp_path / "p.json").exists()
    models = tmp_path / "cache" / "models"
    assert not models.exists() or not list(models.iterdir())  # no half conversion left


# ---------------------------------------------------------------------------------------------- adapters


def _tiny(hidden: int, path: Path) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128, hidden_size=hidden, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(path)
    return path


def _adapter(base: Path, out: Path, targets: list[str]) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from laffi.models import peft_quietly

    with peft_quietly():
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                               LoraConfig(r=2, target_modules=targets, task_type="CAUSAL_LM"))  # fmt: skip
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, tiny_model_dir) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    base, other = tiny_model_dir, _tiny(48, root / "other-base")
    return {"base": base, "good": _adapter(base, root / "good", ["q_proj", "v_proj"]),
            "other-base": _adapter(other, root / "of-other-base", ["q_proj", "v_proj"]),
            "k-only": _adapter(base, root / "k-only", ["k_proj"])}  # fmt: skip


def _edit_config(d: Path, **changes) -> None:
    config = json.loads((d / "adapter_config.json").read_text())
    (d / "adapter_config.json").write_text(json.dumps({**config, **changes}))


ADAPTER_DAMAGES = {  # name: (damage, words of the error, file the error names)
    "config not JSON": (lambda d, a: (d / "adapter_config.json").write_text("{r: 2"), "not valid JSON",
                        "adapter_config.json"),
    "config a list": (lambda d, a: (d / "adapter_config.json").write_text("[]"), "not a JSON object",
                      "adapter_config.json"),
    "r a string": (lambda d, a: _edit_config(d, r="8"), "r: expected int, got str", "adapter_config.json"),
    "r zero": (lambda d, a: _edit_config(d, r=0), "r: expected a positive integer", "adapter_config.json"),
    "target_modules a number": (lambda d, a: _edit_config(d, target_modules=3), "target_modules: expected",
                                "adapter_config.json"),
    "lora_alpha true": (lambda d, a: _edit_config(d, lora_alpha=True), "lora_alpha: expected", "adapter_config.json"),
    "unknown peft_type": (lambda d, a: _edit_config(d, peft_type="NOPE"), "cannot load the adapter", ""),
    "weights missing": (lambda d, a: (d / "adapter_model.safetensors").unlink(), "no adapter weights", ""),
    "weights truncated": (lambda d, a: _truncate(d / "adapter_model.safetensors"), "truncated",
                          "adapter_model.safetensors"),
    "weights empty": (lambda d, a: (d / "adapter_model.safetensors").write_bytes(b""), "empty",
                      "adapter_model.safetensors"),
    "weights random": (lambda d, a: (d / "adapter_model.safetensors").write_bytes(os.urandom(4096)),
                       "not a safetensors file", "adapter_model.safetensors"),
    "another base model": (lambda d, a: (shutil.rmtree(d), shutil.copytree(a["other-base"], d)),
                           "does not fit model", ""),
    "weights of other layers": (lambda d, a: shutil.copy(a["k-only"] / "adapter_model.safetensors", d),
                                "do not fit", ""),
    "not a folder": (lambda d, a: (shutil.rmtree(d), d.write_text("x")), "not a PEFT adapter directory", ""),
}


@pytest.mark.parametrize("damage", list(ADAPTER_DAMAGES))
def test_a_broken_adapter_is_one_error(damage, adapters, tmp_path):
    from transformers import AutoModelForCausalLM

    from laffi.models import load_adapter

    adapter = tmp_path / "adapter"
    shutil.copytree(adapters["good"], adapter)
    hurt, words, file = ADAPTER_DAMAGES[damage]
    hurt(adapter, adapters)
    with pytest.raises(LaffiError) as e:
        load_adapter(AutoModelForCausalLM.from_pretrained(adapters["base"]), str(adapter))
    message = str(e.value)
    assert message.startswith(str(adapter / file) if file else str(adapter)) and words in message, message
    assert "\n" not in message


def test_a_good_adapter_loads(adapters):
    from transformers import AutoModelForCausalLM

    from laffi.models import load_adapter

    model = load_adapter(AutoModelForCausalLM.from_pretrained(adapters["base"]), str(adapters["good"]))
    assert any("lora_A" in name for name, _ in model.named_parameters())


@pytest.mark.parametrize("damage", ["another base model"])
def test_answer_with_a_broken_adapter_exits_2(damage, adapters, tmp_path):
    """Through the command: one line, exit 2, nothing written (every damage above takes this path)."""
    from laffi.data import write_squad
    from laffi.records import Question

    data = tmp_path / "data.json"
    write_squad([Question(id="q", title="T", context="Rollo led the Normans.", question="Who led them?",
                          answers=["Rollo"], answer_starts=[0])], data)  # fmt: skip
    adapter = tmp_path / "adapter"
    shutil.copytree(adapters["good"], adapter)
    ADAPTER_DAMAGES[damage][0](adapter, adapters)
    r = run(["answer", "--data", data, "--model", adapters["base"], "--adapter", adapter, "--dtype", "float32",
             "--out", tmp_path / "p.json", "--no-progress"])  # fmt: skip
    line = one_error_line(r)
    assert str(adapter) in line and ADAPTER_DAMAGES[damage][1] in line
    assert not (tmp_path / "p.json").exists()
