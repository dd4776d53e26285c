"""`pip install 'laffi[gpu]'` resolves: pip's resolver, in a dry run (metadata only, nothing installed), finds a vLLM
in laffi's range (laffi.engines.vllm.SUPPORTED) together with a torch and a transformers inside laffi's own pins, at
the newest vLLM the resolver picks and at the lowest of the range. It needs the package index: skipped when pip
cannot reach it. About a minute per resolution."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from laffi.engines import vllm as engine

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def index_reachable() -> None:
    try:
        r = subprocess.run([sys.executable, "-m", "pip", "index", "versions", "vllm"], capture_output=True, text=True,
                           timeout=60)  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.skip("the package index did not answer in 60 s")
    if r.returncode != 0 or "Available versions" not in r.stdout:
        pytest.skip("the package index is not reachable from here")


def _pins() -> dict[str, str]:
    tomllib = pytest.importorskip("tomllib")
    from packaging.requirements import Requirement

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return {Requirement(d).name: str(Requirement(d).specifier) for d in deps}


@pytest.mark.parametrize("vllm", [None, "0.20.0"], ids=["newest", "lowest"])
def test_gpu_extra_resolves_with_laffis_pins(index_reachable, tmp_path, vllm):
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    # The project's metadata only (pyproject, README, an empty package): building it never writes into the checkout.
    project = tmp_path / "laffi"
    (project / "laffi").mkdir(parents=True)
    shutil.copy(ROOT / "pyproject.toml", project)
    shutil.copy(ROOT / "README.md", project)
    (project / "laffi" / "__init__.py").write_text("")
    report = tmp_path / "report.json"
    extra = [f"vllm=={vllm}"] if vllm else []
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
                        "--report", str(report), f"{project}[gpu]", *extra], capture_output=True, text=True,
                       timeout=900)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    found = {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in json.loads(report.read_text())["install"]}
    assert Version(found["vllm"]) in SpecifierSet(",".join(engine.SUPPORTED))
    if vllm:
        assert found["vllm"] == vllm
    pins = _pins()
    for name in ("torch", "transformers"):
        assert Version(found[name]) in SpecifierSet(pins[name]), (name, found[name], pins[name])
